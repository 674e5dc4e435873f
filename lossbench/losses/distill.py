"""Distillation losses: student logits ``z`` [N, K] against a trained teacher's logits ``t``.

The teacher's logits on the training set are engine context (``teacher_logits`` [num_train, K],
computed once after the teacher trains; ``lossbench.families.teacher``), and a loss reads the
rows of its batch by the per-example ``index`` the trainer passes, so these are ordinary losses:
one value per example, the engine reduces. The teacher's logits are those of the un-augmented
training inputs, so a task that augments its student inputs is refused for these losses.

Notation: ``p^T = softmax(z / T)``, ``q^T = softmax(t / T)``, ``y`` the (training) label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.losses.base import LOSSES, Loss

TEACHER_CONTEXT = "teacher_logits"
"""The context name of the teacher's training-set logits; a loss taking it needs a teacher."""


def needs_teacher(loss: str) -> bool:
    """Whether a loss (a registered or plug-in name) reads a teacher's logits."""
    return TEACHER_CONTEXT in LOSSES.get(loss).context


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _float(z: Tensor) -> Tensor:
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


class TeacherLoss(Loss):
    """Base of the losses that read the teacher's logits of the batch's examples by ``index``."""

    consumes = "logits"
    teacher_logits: Tensor

    def __init__(self, teacher_logits: Tensor) -> None:
        super().__init__()
        _check(teacher_logits.dim() == 2, "teacher_logits must be [num_train, K], got shape "
                                          f"{tuple(teacher_logits.shape)}")
        self.register_buffer(TEACHER_CONTEXT, teacher_logits.detach().clone(), persistent=False)

    def teacher(self, output: Tensor, index: Tensor | None) -> Tensor:
        """The teacher's logits of the examples ``index`` (training ids), as ``output``'s dtype."""
        if index is None:
            raise ValueError(f"{type(self).__name__} needs the training example ids (index=) to "
                             "find the teacher's logits")
        rows = self.teacher_logits[index.to(self.teacher_logits.device).long()]
        if rows.shape != output.shape:
            raise ValueError(f"teacher logits {tuple(rows.shape)} do not match the student's "
                             f"{tuple(output.shape)}")
        return rows.to(device=output.device, dtype=output.dtype)


def kl_div(log_q: Tensor, log_p: Tensor) -> Tensor:
    """``KL(q || p) = sum_k q_k (log q_k - log p_k)`` per row, from log-probabilities."""
    return (log_q.exp() * (log_q - log_p)).sum(dim=1)


def kd_term(z: Tensor, t: Tensor, temperature: float) -> Tensor:
    """``KL(q^T || p^T)``: Hinton et al.'s soft-target term (without the ``T^2`` factor)."""
    return kl_div(F.log_softmax(t / temperature, dim=1), F.log_softmax(z / temperature, dim=1))


@LOSSES.register("kd", consumes="logits", explicit=True,
                 paper="Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, "
                 "NIPS DL Workshop 2015 (Sec. 2)",
                 space={"alpha": (0.5, 0.9), "temperature": (2.0, 4.0, 8.0)})
class KnowledgeDistillation(TeacherLoss):
    """Knowledge distillation: ``(1 - alpha) CE(z, y) + alpha T^2 KL(q^T || p^T)``.

    Hinton, Vinyals & Dean 2015, Sec. 2: soft targets at temperature ``T`` mixed with the hard
    labels; the soft term is multiplied by ``T^2`` so its gradients keep their scale as ``T``
    changes (the gradient of the KL term scales as ``1/T^2``). ``alpha = 0`` is plain CE. The
    defaults (``alpha = 0.9``, ``T = 4``) are mdistiller's CIFAR-100 KD setting
    (CE weight 0.1, KD weight 0.9, T 4), written as one mixing weight.
    """

    def __init__(self, teacher_logits: Tensor, alpha: float = 0.9,
                 temperature: float = 4.0) -> None:
        super().__init__(teacher_logits)
        _check(0.0 <= alpha <= 1.0, f"alpha must be in [0, 1], got {alpha}")
        _check(temperature > 0, f"temperature must be > 0, got {temperature}")
        self.alpha, self.temperature = alpha, temperature

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _float(output)
        t = self.teacher(z, index)
        ce = F.cross_entropy(z, target.long(), reduction="none")
        soft = kd_term(z, t, self.temperature) * self.temperature**2
        return (1.0 - self.alpha) * ce + self.alpha * soft


def _split_target(z: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(``z_y`` [N], the non-target logits [N, K-1] in class order): the target column is
    removed, not masked, so nothing infinite enters the non-target softmax or its gradient."""
    keep = torch.ones_like(z, dtype=torch.bool).scatter_(1, target.long().unsqueeze(1), False)
    return z.gather(1, target.long().unsqueeze(1)).squeeze(1), z[keep].view(len(z), -1)


def binary_log_probs(z: Tensor, target: Tensor, temperature: float) -> Tensor:
    """``log [p_t, 1 - p_t]`` [N, 2] at temperature ``T``: DKD's binary target/non-target split,
    from log-sum-exps (``1 - p_t`` is the non-target mass, exact even when ``p_t`` is ~1)."""
    zt, rest = _split_target(z / temperature, target)
    rest_lse = torch.logsumexp(rest, dim=1)
    pair = torch.stack([zt, rest_lse], dim=1)
    return pair - torch.logsumexp(pair, dim=1, keepdim=True)


def tckd(z: Tensor, t: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Target-class KD: ``KL(b^T || b^S)`` of the binary (target, rest) distributions (DKD
    Eq. 1)."""
    return kl_div(binary_log_probs(t, target, temperature),
                  binary_log_probs(z, target, temperature))


def nckd(z: Tensor, t: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Non-target-class KD: ``KL(q_hat^T || p_hat^T)`` of the distributions among the non-target
    classes only (DKD Eq. 1's ``p_hat``)."""
    _, zs = _split_target(z / temperature, target)
    _, ts = _split_target(t / temperature, target)
    return kl_div(F.log_softmax(ts, dim=1), F.log_softmax(zs, dim=1))


@LOSSES.register("dkd", consumes="logits", explicit=True,
                 paper="Zhao, Cui, Song, Qiu & Liang, Decoupled Knowledge Distillation, CVPR "
                 "2022 (Eq. 1-2; official code megvii-research/mdistiller, dkd.py)",
                 space={"beta": (1.0, 2.0, 8.0)})
class DecoupledKD(TeacherLoss):
    """Decoupled KD: ``CE(z, y) + w(epoch) T^2 (alpha TCKD + beta NCKD)``.

    Zhao et al., CVPR 2022: KD's KL splits exactly into ``KD = TCKD + (1 - q_t^T) NCKD``
    (Eq. 1), where TCKD is the KL of the binary target/non-target distributions and NCKD the KL
    among the non-target classes; DKD (Eq. 2) frees the coupled weight ``1 - q_t`` into
    ``beta``. As in the official code (mdistiller ``dkd_loss``, ``DKD.forward_train``), both
    terms are multiplied by ``T^2``, CE on the hard labels is added with weight 1, and the DKD
    term is ramped in linearly over ``warmup`` epochs: ``w = min(epoch / warmup, 1)`` with the
    1-based epoch being trained (official CIFAR-100: 20 of 240 epochs; here 0, no ramp, since
    short budgets have a few epochs). Defaults alpha 1, beta 8, T 4: the official CIFAR-100
    setting. Differences: the official code removes the target class by subtracting 1000 from
    its logit and takes ``log`` of masked probabilities; we remove the column and use
    log-sum-exps (the same values where theirs is finite).
    """

    epochs_done: int

    def __init__(self, teacher_logits: Tensor, alpha: float = 1.0, beta: float = 8.0,
                 temperature: float = 4.0, warmup: int = 0) -> None:
        super().__init__(teacher_logits)
        _check(alpha >= 0, f"alpha must be >= 0, got {alpha}")
        _check(beta >= 0, f"beta must be >= 0, got {beta}")
        _check(temperature > 0, f"temperature must be > 0, got {temperature}")
        _check(warmup >= 0, f"warmup must be an integer >= 0 (epochs), got {warmup}")
        self.alpha, self.beta, self.temperature, self.warmup = alpha, beta, temperature, warmup
        self.epochs_done = 0

    def ramp(self) -> float:
        """``min(epoch / warmup, 1)`` for the 1-based epoch now training (1 without warm-up)."""
        return 1.0 if self.warmup == 0 else min((self.epochs_done + 1) / self.warmup, 1.0)

    def on_epoch_end(self, epoch: int) -> None:
        self.epochs_done = epoch + 1

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _float(output)
        t = self.teacher(z, index)
        temp = self.temperature
        ce = F.cross_entropy(z, target.long(), reduction="none")
        decoupled = (self.alpha * tckd(z, t, target, temp)
                     + self.beta * nckd(z, t, target, temp)) * temp**2
        return ce + self.ramp() * decoupled


def teacher_optimal_order(t: Tensor, target: Tensor) -> Tensor:
    """PLD's ``pi*`` [N, K]: the true label first, then the other classes by descending teacher
    logit (ties in class order)."""
    key = t.detach().clone().scatter_(1, target.long().unsqueeze(1), float("inf"))
    return torch.sort(key, dim=1, descending=True, stable=True).indices


def plackett_luce_nll(scores: Tensor, weights: Tensor) -> Tensor:
    """``sum_k w_k (log sum_{l >= k} exp(s_l) - s_k)`` per row, for scores already in ranked
    order: the weighted negative log-likelihood of that ranking under the Plackett-Luce model
    with worths ``exp(s)`` (``w = 1``: ListMLE)."""
    tails = torch.logcumsumexp(scores.flip(1), dim=1).flip(1)
    return (weights * (tails - scores)).sum(dim=1)


@LOSSES.register("pld", consumes="logits", explicit=True,
                 paper="Bassam, Zhu & Bian, PLD: A Choice-Theoretic List-Wise Knowledge "
                 "Distillation, NeurIPS 2025 (arXiv:2506.12542), the PLD loss",
                 space={"temperature": (0.5, 1.0, 2.0, 4.0)})
class PlackettLuceDistillation(TeacherLoss):
    """Plackett-Luce distillation: a confidence-weighted list-wise loss on one ranking.

    Teacher logits are Plackett-Luce worths. The target ranking is the teacher-optimal
    ``pi*``: the true label first, then the other classes in descending teacher logit; rank
    ``k`` is weighted by the teacher's softmax probability of the class placed there,
    ``w_k = softmax(t / T)_{pi*_k}``, and the loss is the weighted PL negative log-likelihood of
    ``pi*`` under the student's logits: ``sum_k w_k (log sum_{l >= k} exp(z_{pi*_l}) -
    z_{pi*_k})``. There is no separate CE term: the first rank's term is ``q_y CE(z, y)``, so
    PLD contains a weighted CE (and is CE when the teacher puts all its mass on ``y``). Each
    term is a log-sum-exp minus a linear function with a non-negative weight, so the loss is
    convex in ``z`` and unchanged by adding a constant to every logit.

    Verified against the paper's text: Sec. 4.1 (``pi*``), Sec. 4.2 (``alpha_k = q^T_{pi*_k}``,
    the PLD loss), Appendix A (the loss with unscaled student logits and its convexity) and
    Appendix C (the authors' listing: the ranking reversed, label last, with a forward
    ``logcumsumexp``; weights ``softmax(t_perm / T)``; the temperature only on the teacher).
    Default ``T = 1`` is that listing's default; the paper's CIFAR-100 runs use ``T = 4``.
    Ties in the teacher's logits are ordered by class index here (the listing leaves them to
    ``torch.sort``).
    """

    def __init__(self, teacher_logits: Tensor, temperature: float = 1.0) -> None:
        super().__init__(teacher_logits)
        _check(temperature > 0, f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _float(output)
        t = self.teacher(z, index)
        order = teacher_optimal_order(t, target)
        weights = F.softmax(t / self.temperature, dim=1).gather(1, order)
        return plackett_luce_nll(z.gather(1, order), weights)
