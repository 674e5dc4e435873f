"""TIM-GD: transductive information maximisation by gradient descent on the class weights.

Boudiaf, Ziko, Rony, Dolz, Piantanida, Ben Ayed, Information Maximization for Few-Shot Learning
(Transductive Information Maximization, TIM), NeurIPS 2020. With features ``z`` and class
weights ``w_k``, the soft predictions are ``p_nk = softmax_k(-tau/2 |z_n - w_k|^2)`` (the paper's
probabilistic classifier, temperature ``tau``), and per episode the weights minimise

    lambda * CE(support) - (alpha_H * H(Y_Q) - alpha_C * H(Y_Q | X_Q)),

the support cross-entropy (mean over the support) minus the query mutual information, written
as the marginal entropy ``H(Y_Q) = -sum_k pbar_k log pbar_k`` (``pbar`` = the mean query
prediction) and the conditional entropy ``H(Y_Q|X_Q) = -(1/|Q|) sum_n sum_k p_nk log p_nk``.
TIM-GD starts the weights at the support prototypes and runs Adam on them; a query takes the
class of its largest ``p_nk``.

Variant and defaults, from the official code (mboudiaf/TIM, ``src/tim.py`` and
``scripts/evaluate/tim_gd``): TIM-GD (not TIM-ADM), ``tau = 15``, loss weights ``[lambda,
alpha_H, alpha_C] = [0.1, 1.0, 0.1]``, Adam at ``lr = 1e-4`` for 1000 iterations, features
L2-normalised (``norm = "l2"``), ``log(p + 1e-12)`` in the conditional entropy. The
support cross-entropy is an exact log-softmax (the code's ``log(softmax + 1e-12)`` differs by
at most about 1e-12 / p). Episodes are
batched with their losses summed (as the official code does): Adam works element by element,
so every episode's weights follow exactly the steps they would alone. ``logits = "cosine"``
replaces ``-tau/2 |z - w|^2`` by ``tau cos(z, w)``, easyfsl's TIM (its defaults: 50 steps,
``tau = 10``, weights ``[1, 1, 0.1]``), kept to cross-check against it.

What holds of the objective: nothing monotone. TIM-GD is Adam on a non-convex loss and the paper
proves no descent for it (its alternating-direction solver, TIM-ADM, is the one derived from a
bound); the loss is only expected to fall overall at this small step, which the tests check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.fewshot_inference.base import (
    INFERENCE,
    Norm,
    entropy_terms,
    normalise,
    squared_distances,
    support_labels,
)

_TIM = ("Boudiaf, Ziko, Rony, Dolz, Piantanida, Ben Ayed, Information Maximization for Few-Shot "
        "Learning, NeurIPS 2020 (TIM-GD)")

Logits = Literal["euclidean", "cosine"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def class_scores(x: Tensor, w: Tensor, temperature: float, kind: str) -> Tensor:
    """Logits [E, W, N] (class axis first: a softmax over it is far faster on CPU than over a
    last axis of a few classes) of points [E, N, D] for weights [E, W, D]: ``-tau/2 |x - w|^2``
    (``euclidean``) or ``tau cos(x, w)`` (``cosine``)."""
    if kind == "cosine":
        return temperature * F.normalize(w, dim=-1) @ F.normalize(x, dim=-1).transpose(1, 2)
    return -0.5 * temperature * squared_distances(w, x)


def tim_logits(x: Tensor, w: Tensor, temperature: float, kind: str) -> Tensor:
    """``class_scores`` as [E, N, W]."""
    return class_scores(x, w, temperature, kind).transpose(1, 2)


def tim_loss(support: Tensor, query: Tensor, w: Tensor, *, temperature: float,
             ce_weight: float, marginal_weight: float, conditional_weight: float,
             logits: str = "euclidean") -> Tensor:
    """The TIM loss of each episode [E] (module docstring) at weights ``w`` [E, W, D]."""
    e, ways, shots, dim = support.shape
    flat = support.reshape(e, ways * shots, dim)
    log_p_support = class_scores(flat, w, temperature, logits).log_softmax(1)
    ce = -(support_labels(support).transpose(1, 2) * log_p_support).sum(1).mean(-1)
    p = class_scores(query, w, temperature, logits).softmax(1)
    conditional = -(p * torch.log(p + 1e-12)).sum(1).mean(-1)
    marginal = -entropy_terms(p.mean(dim=2))
    return ce_weight * ce - (marginal_weight * marginal - conditional_weight * conditional)


@INFERENCE.register("tim", transductive=True, paper=_TIM)
class TIMGD:
    """TIM-GD (Boudiaf et al. 2020): Adam on the class weights to maximise the query mutual
    information under the support cross-entropy; the official code's variant and defaults
    (module docstring)."""

    def __init__(self, iterations: int = 1000, lr: float = 1e-4, temperature: float = 15.0,
                 ce_weight: float = 0.1, marginal_weight: float = 1.0,
                 conditional_weight: float = 0.1, logits: Logits = "euclidean",
                 norm: Norm = "l2") -> None:
        _check(iterations >= 0, f"iterations must be >= 0, got {iterations}")
        _check(lr > 0, f"lr must be > 0, got {lr}")
        _check(temperature > 0, f"temperature must be > 0, got {temperature}")
        self.iterations, self.lr, self.logits, self.norm = iterations, lr, logits, norm
        self.weights = {"temperature": temperature, "ce_weight": ce_weight,
                        "marginal_weight": marginal_weight,
                        "conditional_weight": conditional_weight}

    def fit(self, support: Tensor, query: Tensor,
            trace: Callable[[Tensor], None] | None = None) -> Tensor:
        """The weights [E, W, D] after the Adam steps, on the normalised episode; ``trace``
        sees the loss of each episode [E] before every step and after the last."""
        support, query = normalise(support.detach(), query.detach(), self.norm)
        w = support.mean(dim=2).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=self.lr)
        with torch.enable_grad():
            for step in range(self.iterations + (trace is not None)):
                loss = tim_loss(support, query, w, logits=self.logits, **self.weights)
                if trace is not None:
                    trace(loss.detach())
                if step == self.iterations:
                    break
                optimiser.zero_grad()
                loss.sum().backward()
                optimiser.step()
        return w.detach()

    def __call__(self, support: Tensor, query: Tensor) -> Tensor:
        w = self.fit(support, query)
        query = normalise(support, query, self.norm)[1]
        return class_scores(query, w, self.weights["temperature"], self.logits).argmax(1)
