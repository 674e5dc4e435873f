"""Classification losses on logits ``z`` [N, K] with integer targets ``y`` [N].

Every loss returns one value per example (no reduction). Notation: ``p = softmax(z)``,
``p_y`` the probability of the target class, ``CE = -log p_y``, ``d_k = c*1[k!=y] + z_k - z_y``
the margin-augmented logit differences. All quantities are built from ``log_softmax`` /
``logsumexp`` so they stay finite for arbitrarily large logits; half and bfloat16 inputs are
promoted to float32 first.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.losses.base import LOSSES, Loss

# --------------------------------------------------------------------------------------------
# Shared helpers (pure functions of logits and targets).
# --------------------------------------------------------------------------------------------


def _as_float(z: Tensor) -> Tensor:
    """Promote half/bfloat16 logits to float32; float32/float64 pass through unchanged."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def _pick(x: Tensor, target: Tensor) -> Tensor:
    """``x[i, target[i]]`` for every row: [N, K], [N] -> [N]."""
    return x.gather(1, target.long().unsqueeze(1)).squeeze(1)


def _log_probs(z: Tensor) -> Tensor:
    """``log softmax(z)`` over classes."""
    return F.log_softmax(z, dim=1)


def _true_logit(z: Tensor, target: Tensor) -> Tensor:
    """The target-class logit ``z_y``."""
    return _pick(z, target)


def _ce(z: Tensor, target: Tensor) -> Tensor:
    """``-log p_y`` (torch's fused kernel: the hot path of the most-run loss)."""
    return F.cross_entropy(z, target.long(), reduction="none")


def _one_minus_py(z: Tensor, target: Tensor) -> Tensor:
    """``1 - p_y`` computed as ``-expm1(log p_y)`` (accurate when ``p_y`` is close to 1)."""
    return -torch.expm1(-_ce(z, target))


def _margin_diffs(z: Tensor, target: Tensor, margin: float) -> Tensor:
    """``d_k = margin*1[k!=y] + z_k - z_y``; ``d_y = 0`` exactly."""
    not_y = torch.ones_like(z).scatter_(1, target.long().unsqueeze(1), 0.0)
    return margin * not_y + z - _true_logit(z, target).unsqueeze(1)


def _ldr_kl(t: Tensor, c: Tensor | float, target: Tensor, margin: float, lam: Tensor | float
            ) -> Tensor:
    """``lam * log((1/K) sum_k exp(d_k / lam))``, ``d_k = margin*1[k!=y] + z_k - z_y``, for the
    logits ``z = t * c`` (``_transform``'s pair).

    Shifting every logit by ``margin`` leaves a softmax unchanged, so ``d_k / lam`` and
    ``u = (z - margin*e_y) / lam`` give the same log-sum-exp relative to the target:
    ``L = lam * (CE(u, y) - log K)``. ``u`` is one multiply with ``margin / lam`` subtracted
    in place at the targets, and CE is torch's fused kernel: no [N, K] margin matrix.
    """
    lam_col = lam.unsqueeze(1) if isinstance(lam, Tensor) else lam
    u = t * (c / lam_col)
    shift = torch.full_like(u[:, :1], -margin) / lam_col
    u = u.scatter_add_(1, target.long().unsqueeze(1), shift)
    return lam * (F.cross_entropy(u, target.long(), reduction="none") - math.log(t.shape[1]))


def _nce(z: Tensor, target: Tensor) -> Tensor:
    """Normalized CE: ``log p_y / sum_k log p_k`` (the denominator is <= K log(1/K) < 0)."""
    logp = _log_probs(z)
    return _pick(logp, target) / logp.sum(dim=1)


RCE_LOG_ZERO = math.log(1e-4)
"""``A``, the value RCE gives ``log 0``: both official codes clamp the one-hot label at 1e-4
before the natural log (SCE: YisenWang/symmetric_cross_entropy_for_noisy_labels, ``loss.py``,
``symmetric_cross_entropy``: ``tf.clip_by_value(y_true, 1e-4, 1.0)``; APL:
HanxunH/Active-Passive-Losses, ``loss.py``, ``ReverseCrossEntropy`` and ``SCELoss``:
``torch.clamp(label_one_hot, min=1e-4)``), so ``A = ln 1e-4 = -9.21``. (-4, the default here
before, is the base-10 log of that clamp.)"""


def _rce(z: Tensor, target: Tensor, a: float) -> Tensor:
    """Reverse CE ``-sum_k p_k log q_k`` with one-hot ``q`` and ``log 0 := a``: ``-a (1 - p_y)``."""
    return -a * _one_minus_py(z, target)


def _mae(z: Tensor, target: Tensor) -> Tensor:
    """``||p - e_y||_1 = 2 - 2 p_y``."""
    return 2.0 * _one_minus_py(z, target)


MaeForm = Literal["reduced", "l1"]
MAE_FORMS = {"reduced": _one_minus_py, "l1": _mae}
"""APL's "Reduced MAE" ``1 - p_y`` and the L1 norm ``||p - e_y||_1 = 2 - 2 p_y``."""


def _check(ok: bool, message: str) -> None:
    """Range checks raise ValueError; the registry turns it into a one-line UserError."""
    if not ok:
        raise ValueError(message)


# --------------------------------------------------------------------------------------------
# Losses.
# --------------------------------------------------------------------------------------------


@LOSSES.register("ce", consumes="logits", paper="standard softmax cross-entropy")
class CrossEntropy(Loss):
    """Cross-entropy: -log p_y.

    ``CE(z, y) = -log softmax(z)_y = logsumexp(z) - z_y``.
    """

    consumes = "logits"

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        return _ce(_as_float(output), target)


LdrTransform = Literal["none", "softplus-mean"]
AldrTransform = Literal["none", "softplus-mean", "mean-abs"]


LOG_SOFTPLUS_CUT = -40.0
"""Below it ``log softplus(z) = z - e^z / 2 + ...`` is ``z`` to float64 precision (e^-40 / 2 is
2e-18)."""


def _log_softplus(z: Tensor) -> Tensor:
    """``log(softplus(z))`` for any ``z``: ``z`` itself below ``LOG_SOFTPLUS_CUT`` (where
    ``softplus`` underflows to 0 and its log to -inf), with finite gradients on both sides."""
    inside = torch.log(F.softplus(z.clamp_min(LOG_SOFTPLUS_CUT)))
    return torch.where(z < LOG_SOFTPLUS_CUT, z, inside)


def _transform(z: Tensor, kind: str) -> tuple[Tensor, Tensor | float]:
    """Logit normalisation used by the official LDR code, as ``(t, c)``: the transformed logits
    are ``t * c`` with ``c`` one factor per row, so callers fold their own ``1 / lambda`` into
    ``c`` and the [N, K] logits are scaled once (a multiply: cheaper backward than a divide).

    ``softplus-mean``: ``z <- softplus(z) / mean_k softplus(z_k)``;
    ``mean-abs``: ``z <- z / mean_k |z_k|`` (clamped away from 0); ``none``: identity.
    """
    tiny = torch.finfo(z.dtype).tiny
    if kind == "softplus-mean":
        # softplus(z_k) / mean_j softplus(z_j) as exp(ls_k - m) / mean_j exp(ls_j - m), ls =
        # log softplus(z), m = max_k ls_k: the same value, but rows whose logits are all very
        # negative no longer underflow to 0 / 0 (a CNN on Fashion-MNIST got there in epoch 1).
        ls = _log_softplus(z)
        t = torch.exp(ls - ls.amax(dim=1, keepdim=True).detach())
        return t, t.mean(dim=1, keepdim=True).reciprocal()
    if kind == "mean-abs":
        return z, z.abs().mean(dim=1, keepdim=True).clamp_min(tiny).reciprocal()
    return z, 1.0


_LDR_PAPER = (
    "Zhu, Ying, Yang, Label Distributionally Robust Losses for Multi-class Classification: "
    "Consistency, Robustness and Adaptivity, ICML 2023"
)


@LOSSES.register("ldr", consumes="logits", paper=_LDR_PAPER + " (LDR-KL loss)",
                 space={"lambda": (0.1, 1.0, 10.0)})
class LDRKL(Loss):
    """LDR-KL: KL-regularised worst-case label distribution, a smoothed top-1 margin loss.

    ``L = lambda * log((1/K) sum_k exp((c*1[k!=y] + z_k - z_y) / lambda))``
    = ``max_{p in simplex} sum_k p_k d_k - lambda * KL(p || uniform)``, evaluated with
    logsumexp. ``lambda -> 0`` gives the Crammer-Singer-style ``max_k d_k``; ``lambda -> inf``
    gives ``mean_k d_k``; ``c = 0, lambda = 1`` gives ``CE - log K``.

    Zhu, Ying & Yang, ICML 2023 (LDR-KL loss). Defaults follow the official code's experiments:
    ``lambda = 10`` (its ``parameter_set``), ``margin = 0.1`` (its ``--margin``), and the
    ``softplus-mean`` transform its ``LDRLoss_V1`` always applies. Without the transform the
    logits are unbounded and large lambda turns the loss into the linear ``mean_k d_k``; with
    ``lambda = 1, transform = none`` it behaves like CE (on digits-noisy, 40% symmetric, quick
    budget: 70% clean top-1 at the last epoch for both, vs 91% with these defaults).
    """

    consumes = "logits"

    def __init__(
        self,
        lambda_: float = 10.0,
        margin: float = 0.1,
        transform: LdrTransform = "softplus-mean",
    ) -> None:
        super().__init__()
        _check(lambda_ > 0, f"lambda must be > 0, got {lambda_}")
        _check(margin >= 0, f"margin must be >= 0, got {margin}")
        self.lam = lambda_
        self.margin = margin
        self.transform = transform

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        t, c = _transform(_as_float(output), self.transform)
        return _ldr_kl(t, c, target, self.margin, self.lam)


@LOSSES.register("aldr", consumes="logits", paper=_LDR_PAPER + " (ALDR-KL loss)",
                 space={"lambda0": (0.1, 1.0, 10.0)})
class ALDRKL(Loss):
    """ALDR-KL: LDR-KL with a per-example temperature lambda_i adapted to label uncertainty.

    Per training example i a detached ``lambda_i`` (initialised to ``lambda0``) is kept. On a
    training call (``index`` given):

    * ``q = softmax(z / lambda_i_old)``; ``KL = sum_k q_k log(K q_k)`` (KL to uniform);
    * ``lambda_i = lambda0 * (1 - KL / (alpha log K))`` -- stored back; it lies in
      ``[lambda0 (1 - 1/alpha), lambda0]`` because ``0 <= KL <= log K``;
    * ``L = LDR-KL(z, y; lambda_i) - alpha log K / (2 lambda0) * (lambda_i - lambda0)^2``.

    The second term does not depend on the logits (lambda_i is detached); it makes the value
    the paper's objective. With ``index=None`` (evaluation) every example uses ``lambda0`` and
    no state changes. Zhu, Ying & Yang, ICML 2023 (ALDR-KL loss).

    Differences from the official ``ALDRLoss_V1``: it adds 1e-5 to ``q`` and renormalises
    before the log; we take ``KL`` from ``log_softmax`` (exact, stable). It always applies
    the ``mean-abs`` transform (``softplus`` first on CIFAR-100, i.e. ``softplus-mean``); here
    the transform is a parameter, default ``softplus-mean`` for every dataset (matching ``ldr``;
    on digits-noisy it beat ``mean-abs``, 90% vs 85% last-epoch clean top-1 over 3 seeds).
    It re-reads ``lambda_i`` from the buffer after writing it, so duplicate ids in a batch all
    use the last write; we use each row's own value. Its script runs ``lambda0 = 10``
    (``parameter_set``), ``alpha = 2``, ``margin = 0.1``: our defaults. As in the official
    code, ``q`` is taken from the (transformed) logits without the margin term.
    """

    consumes = "logits"
    lambdas: Tensor

    def __init__(
        self,
        num_train: int,
        lambda0: float = 10.0,
        alpha: float = 2.0,
        margin: float = 0.1,
        transform: AldrTransform = "softplus-mean",
    ) -> None:
        super().__init__()
        _check(lambda0 > 0, f"lambda0 must be > 0, got {lambda0}")
        _check(alpha > 1, f"alpha must be > 1, got {alpha}")
        _check(margin >= 0, f"margin must be >= 0, got {margin}")
        _check(num_train >= 1, f"num_train must be >= 1, got {num_train}")
        self.lambda0 = lambda0
        self.alpha = alpha
        self.margin = margin
        self.transform = transform
        self.register_buffer("lambdas", torch.full((num_train,), float(lambda0)))

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        t, c = _transform(_as_float(output), self.transform)
        if index is None:
            return _ldr_kl(t, c, target, self.margin, self.lambda0)
        ids = index.to(self.lambdas.device).long()
        log_k = math.log(t.shape[1])
        with torch.no_grad():
            lam_old = self.lambdas[ids].to(device=t.device, dtype=t.dtype)
            c_old = c.detach() if isinstance(c, Tensor) else c
            log_q = _log_probs(t.detach() * (c_old / lam_old.unsqueeze(1)))
            # KL(q || uniform) = sum_k q_k log q_k + log K, in [0, log K]; clamp away rounding
            # so lambda stays in range.
            kl = (torch.linalg.vecdot(log_q.exp(), log_q) + log_k).clamp(0.0, log_k)
            lam = self.lambda0 * (1.0 - kl / (self.alpha * log_k))
            self.lambdas[ids] = lam.to(self.lambdas.dtype).to(self.lambdas.device)
        penalty = self.alpha * log_k / (2.0 * self.lambda0) * (lam - self.lambda0) ** 2
        return _ldr_kl(t, c, target, self.margin, lam) - penalty


@LOSSES.register(
    "gce",
    consumes="logits",
    space={"q": (0.05, 0.7, 0.95)},
    paper="Zhang & Sabuncu, Generalized Cross Entropy Loss for Training Deep Neural Networks "
    "with Noisy Labels, NeurIPS 2018 (L_q loss)",
)
class GeneralizedCE(Loss):
    """Generalized cross-entropy (L_q): (1 - p_y^q) / q.

    ``L = (1 - p_y^q) / q``, computed as ``-expm1(q log p_y) / q``; ``q -> 0`` gives CE,
    ``q = 1`` gives ``1 - p_y`` (MAE / 2). Zhang & Sabuncu, NeurIPS 2018 (the L_q loss).
    """

    consumes = "logits"

    def __init__(self, q: float = 0.7) -> None:
        super().__init__()
        _check(0 < q <= 1, f"q must be in (0, 1], got {q}")
        self.q = q

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        return -torch.expm1(-self.q * _ce(_as_float(output), target)) / self.q


@LOSSES.register(
    "sce",
    consumes="logits",
    # The LDR code's SCELoss(balance=b, A=4): (1-b) CE + b * 4 (1 - p_y), b in {0.05, 0.5, 0.95}.
    space=[{"alpha": round(1.0 - b, 6), "beta": b, "A": -4.0} for b in (0.05, 0.5, 0.95)],
    paper="Wang, Ma, Chen, Luo, Yi, Bailey, Symmetric Cross Entropy for Robust Learning with "
    "Noisy Labels, ICCV 2019",
)
class SymmetricCE(Loss):
    """Symmetric cross-entropy: alpha*CE + beta*RCE.

    ``RCE = -sum_k p_k log q_k`` with the one-hot label ``q`` and ``log 0 := A`` (A < 0), so
    ``RCE = -A (1 - p_y)``; ``L = alpha * CE + beta * RCE``. Wang et al., ICCV 2019.

    ``A`` defaults to the official code's ``ln 1e-4 = -9.21`` (``RCE_LOG_ZERO``: its ``loss.py``
    clips the one-hot label at 1e-4 before ``tf.log``); ``alpha = 0.1, beta = 1`` are its
    CIFAR-10 values (``train_models.py``; also APL's ``configs/cifar10/*/sce.yaml``).
    """

    consumes = "logits"

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, A: float = RCE_LOG_ZERO) -> None:
        super().__init__()
        _check(alpha >= 0, f"alpha must be >= 0, got {alpha}")
        _check(beta >= 0, f"beta must be >= 0, got {beta}")
        _check(A < 0, f"A must be < 0, got {A}")
        self.alpha, self.beta, self.a = alpha, beta, A

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _as_float(output)
        return self.alpha * _ce(z, target) + self.beta * _rce(z, target, self.a)


_APL_PAPER = (
    "Ma, Huang, Wang, Romano, Erfani, Bailey, Normalized Loss Functions for Deep Learning "
    "with Noisy Labels, ICML 2020"
)


class _ActivePassive(Loss):
    """alpha * NCE + beta * passive term (shared by the APL combinations)."""

    consumes = "logits"

    def __init__(self, alpha: float, beta: float) -> None:
        super().__init__()
        _check(alpha >= 0, f"alpha must be >= 0, got {alpha}")
        _check(beta >= 0, f"beta must be >= 0, got {beta}")
        self.alpha, self.beta = alpha, beta

    def passive(self, z: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _as_float(output)
        return self.alpha * _nce(z, target) + self.beta * self.passive(z, target)


@LOSSES.register("nce+rce", consumes="logits", paper=_APL_PAPER + " (APL: NCE+RCE)",
                 space=[{"alpha": a, "beta": round(10.0 - a, 6)} for a in (0.1, 5.0, 9.9)])
class NCEandRCE(_ActivePassive):
    """Active-passive loss NCE + RCE: alpha*NCE + beta*RCE.

    ``NCE = -log p_y / (-sum_k log p_k)`` (in [0, 1], sums to 1 over y);
    ``RCE = -A (1 - p_y)``, ``A`` = the value of ``log 0``.
    ``L = alpha * NCE + beta * RCE``. Ma et al., ICML 2020.

    As the official code (HanxunH/Active-Passive-Losses, ``loss.py``: ``NCEandRCE`` =
    ``NormalizedCrossEntropy(scale=alpha)`` + ``ReverseCrossEntropy(scale=beta)``), RCE is
    unnormalised and ``A`` defaults to its ``ln 1e-4 = -9.21`` (``RCE_LOG_ZERO``). ``alpha =
    beta = 1`` are its CIFAR-10 values. It also clamps ``p`` at 1e-7 inside RCE; we use the
    exact ``1 - p_y`` (the clamp shifts the value by at most ``9.21 (K - 1) 1e-7``).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, A: float = RCE_LOG_ZERO) -> None:
        super().__init__(alpha, beta)
        _check(A < 0, f"A must be < 0, got {A}")
        self.a = A

    def passive(self, z: Tensor, target: Tensor) -> Tensor:
        return _rce(z, target, self.a)


@LOSSES.register("nce+mae", consumes="logits", paper=_APL_PAPER + " (APL: NCE+MAE)")
class NCEandMAE(_ActivePassive):
    """Active-passive loss NCE + MAE: alpha*NCE + beta*MAE.

    ``NCE = -log p_y / (-sum_k log p_k)``; ``L = alpha * NCE + beta * MAE``. Ma et al., ICML 2020.

    ``mae_form``: ``reduced`` (default) is ``MAE = 1 - p_y``, what the official code computes
    (HanxunH/Active-Passive-Losses, ``loss.py``, ``MeanAbsoluteError``, commented "Reduced
    MAE"), so its ``beta`` values carry over; ``l1`` is the paper's ``||p - e_y||_1 = 2 - 2 p_y``
    (twice as large, as the ``mae`` loss). ``alpha = beta = 1`` are its CIFAR-10 values.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, mae_form: MaeForm = "reduced"
                 ) -> None:
        super().__init__(alpha, beta)
        self.mae_form = mae_form
        self.mae = MAE_FORMS[mae_form]

    def passive(self, z: Tensor, target: Tensor) -> Tensor:
        return self.mae(z, target)


@LOSSES.register(
    "mae",
    consumes="logits",
    paper="Ghosh, Kumar, Sastry, Robust Loss Functions under Label Noise for Deep Neural "
    "Networks, AAAI 2017",
)
class MAE(Loss):
    """Mean absolute error on probabilities: 2 - 2 p_y.

    ``L = ||softmax(z) - e_y||_1 = 2 (1 - p_y)``; symmetric: ``sum_k L(z, k) = 2K - 2``.
    Ghosh, Kumar & Sastry, AAAI 2017. (The official LDR repo's ``MAELoss`` computes
    ``sum_k (e_y - p)_k``, which is identically 0 -- a sign/abs bug; this one is the real MAE.)
    The APL code's MAE baseline is the "reduced" ``1 - p_y``, half of this (as
    ``nce+mae:mae_form=reduced``): with SGD, its learning rate eta is eta / 2 here.
    """

    consumes = "logits"

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        return _mae(_as_float(output), target)


@LOSSES.register(
    "focal",
    consumes="logits",
    paper="Lin, Goyal, Girshick, He, Dollar, Focal Loss for Dense Object Detection, ICCV 2017",
)
class Focal(Loss):
    """Focal loss: -(1 - p_y)^gamma log p_y.

    ``L = -(1 - p_y)^gamma log p_y`` (multi-class, no alpha weighting); ``gamma = 0`` gives CE.
    Lin et al., ICCV 2017.
    """

    consumes = "logits"

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        _check(gamma >= 0, f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _as_float(output)
        ce = _ce(z, target)
        if self.gamma == 0:
            return ce
        # Clamp keeps d/dr r^gamma finite at r = 0 for gamma < 1 (p_y == 1 in float32).
        r = (-torch.expm1(-ce)).clamp_min(torch.finfo(ce.dtype).tiny)
        return r**self.gamma * ce


@LOSSES.register(
    "ls",
    consumes="logits",
    paper="Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, Rethinking the Inception Architecture for "
    "Computer Vision, CVPR 2016 (label-smoothing regularization)",
)
class LabelSmoothing(Loss):
    """Label-smoothed cross-entropy: (1 - eps) CE + eps mean_k(-log p_k).

    Cross-entropy against ``(1 - eps) e_y + eps / K`` (uniform prior):
    ``L = (1 - eps) (-log p_y) + eps * (1/K) sum_k (-log p_k)``. Szegedy et al., CVPR 2016.
    """

    consumes = "logits"

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        _check(0 <= epsilon < 1, f"epsilon must be in [0, 1), got {epsilon}")
        self.eps = epsilon

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        logp = _log_probs(_as_float(output))
        return -(1 - self.eps) * _pick(logp, target) - self.eps * logp.mean(dim=1)


@LOSSES.register(
    "tce",
    consumes="logits",
    paper="Feng, Shu, Lin, Lv, Li, An, Can Cross Entropy Loss Be Robust to Label Noise?, "
    "IJCAI 2020 (Taylor cross-entropy)",
)
class TaylorCE(Loss):
    """Taylor cross-entropy: sum_{i=1..t} (1 - p_y)^i / i.

    The order-t Taylor expansion of ``-log p_y`` around ``p_y = 1``; ``t -> inf`` gives CE,
    ``t = 1`` gives ``1 - p_y``. Feng et al., IJCAI 2020.
    """

    consumes = "logits"

    def __init__(self, order: int = 2) -> None:
        super().__init__()
        _check(order >= 1, f"order must be >= 1, got {order}")
        self.order = order

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        r = _one_minus_py(_as_float(output), target)
        return sum((r**i / i for i in range(2, self.order + 1)), start=r)


@LOSSES.register(
    "zloss",
    consumes="logits",
    paper="de Brebisson & Vincent, The Z-loss: a shift and scale invariant classification loss "
    "belonging to the Spherical Family, arXiv:1604.08859 2016",
)
class ZLoss(Loss):
    """Z-loss: softplus of the z-normalised target logit, (1/a) softplus(a (b - z'_y)).

    ``z' = (z - mean_k z) / std_k z`` (population std, per example); ``L = (1/a) log(1 +
    exp(a (b - z'_y)))``. Shift- and positive-scale-invariant. de Brebisson & Vincent, 2016.

    Defaults ``a = 1, b = 1`` are ours, not the paper's: the paper treats a (sharpness) and
    b (offset) as hyperparameters tuned per task and we could not verify its values. ``z'_y``
    is at most ``sqrt(K - 1)``, reached when all non-target logits are equal, so ``b = 1``
    (target one std above the mean) is reachable for every K >= 2. For K = 2, ``z'_y = +-1``
    always, so the loss is piecewise constant (zero gradient) -- do not use it for binary
    tasks. When all logits are equal, ``z' = 0`` (the variance is clamped away from zero).
    """

    consumes = "logits"

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        super().__init__()
        _check(a > 0, f"a must be > 0, got {a}")
        self.a, self.b = a, b

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _as_float(output)
        centred = z - z.mean(dim=1, keepdim=True)
        var = centred.square().mean(dim=1)
        zy = _true_logit(centred, target) / var.clamp_min(torch.finfo(z.dtype).tiny).sqrt()
        return F.softplus(self.a * (self.b - zy)) / self.a


_COMP_SUM_TAU = {"exp": 0.0, "log": 1.0, "mae": 2.0}


@LOSSES.register(
    "comp-sum",
    consumes="logits",
    paper="Mao, Mohri, Zhong, Cross-Entropy Loss Functions: Theoretical Analysis and "
    "Applications, ICML 2023 (comp-sum losses)",
)
class CompSum(Loss):
    """Comp-sum loss Phi^tau(sum_{k!=y} exp(z_k - z_y)): exp, log (CE), GCE and MAE variants.

    With ``u = sum_{k!=y} exp(z_k - z_y) = 1/p_y - 1``: ``Phi^1(u) = log(1 + u)`` and
    ``Phi^tau(u) = ((1 + u)^(1 - tau) - 1) / (1 - tau)`` otherwise. Computed as
    ``expm1((1 - tau) CE) / (1 - tau)`` since ``log(1 + u) = CE``. ``kind``: ``exp`` (tau=0,
    ``1/p_y - 1``, unbounded: overflows to inf once CE > ~88 in float32), ``log`` (tau=1, CE),
    ``gce`` (tau in (1, 2), equals GCE with q = tau - 1), ``mae`` (tau=2, ``1 - p_y``).
    Mao, Mohri & Zhong, ICML 2023.
    """

    consumes = "logits"

    def __init__(self, kind: Literal["exp", "log", "gce", "mae"] = "log", tau: float = 1.5) -> None:
        super().__init__()
        _check(1 < tau < 2, f"tau must be in (1, 2), got {tau}")
        self.kind = kind
        self.tau = tau if kind == "gce" else _COMP_SUM_TAU[kind]

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        ce = _ce(_as_float(output), target)
        if self.tau == 1.0:
            return ce
        return torch.expm1((1.0 - self.tau) * ce) / (1.0 - self.tau)


@LOSSES.register(
    "cs-hinge",
    consumes="logits",
    space={"margin": (0.1, 1.0, 10.0)},
    paper="Crammer & Singer, On the Algorithmic Implementation of Multiclass Kernel-based "
    "Vector Machines, JMLR 2001",
)
class CrammerSingerHinge(Loss):
    """Crammer-Singer multi-class hinge: max(0, max_{k!=y}(margin + z_k - z_y)).

    Equal to ``max_k d_k`` with ``d_k = margin*1[k!=y] + z_k - z_y`` (``d_y = 0``).
    Crammer & Singer, JMLR 2001.
    """

    consumes = "logits"

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        _check(margin >= 0, f"margin must be >= 0, got {margin}")
        self.margin = margin

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        return _margin_diffs(_as_float(output), target, self.margin).amax(dim=1)


@LOSSES.register(
    "ww-hinge",
    consumes="logits",
    space={"margin": (0.1, 1.0, 10.0)},
    paper="Weston & Watkins, Support Vector Machines for Multi-Class Pattern Recognition, "
    "ESANN 1999",
)
class WestonWatkinsHinge(Loss):
    """Weston-Watkins multi-class hinge: sum_{k!=y} max(0, margin + z_k - z_y).

    Equal to ``sum_k relu(d_k)`` since ``d_y = 0``. Weston & Watkins, ESANN 1999. (The
    official LDR repo's ``WWLoss`` averages over the K columns too, i.e. divides by K.)
    """

    consumes = "logits"

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        _check(margin >= 0, f"margin must be >= 0, got {margin}")
        self.margin = margin

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        return F.relu(_margin_diffs(_as_float(output), target, self.margin)).sum(dim=1)
