"""Coverage (pass@N) losses on logits: training for "one of N samples is right".

Sampling N times from the model's softmax, the label is drawn at least once with probability
``pass@N = 1 - (1 - p_y)^N``. Written for logits, so the same loss serves classification
(one label per example) and language modelling (one next token per position, through the
``lm`` family's adapter).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lossbench.losses.base import LOSSES, Loss
from lossbench.losses.logits import _as_float


def log_py_and_log1m_py(z: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p_y, log(1 - p_y))`` without cancellation at either end: ``log1p(-p_y)`` while
    ``p_y <= 1/2``, else ``logsumexp_{k != y} z_k - logsumexp_k z_k`` (finite even where
    ``p_y`` rounds to 1)."""
    lse = z.logsumexp(dim=1)
    log_py = z.gather(1, target.long().unsqueeze(1)).squeeze(1) - lse
    others = z.scatter(1, target.long().unsqueeze(1), -math.inf).logsumexp(dim=1)
    half = -math.log(2.0)
    small = torch.log1p(-log_py.clamp(max=half).exp())
    return log_py, torch.where(log_py > half, others - lse, small)


def coverage_loss(z: Tensor, target: Tensor, n: int) -> Tensor:
    """``-log(1 - (1 - p_y)^n)`` per example, stable for every ``p_y`` in (0, 1].

    With ``a = n log(1 - p_y) <= 0``: ``-log(-expm1(a))`` near 0 and ``-log1p(-exp(a))`` below
    ``-log 2``; where ``n p_y`` is below the dtype's epsilon the expansion
    ``-log(n p_y) + (n - 1) p_y / 2`` takes over (the next term is O((n p_y)^2)), so a
    ``p_y`` too small for ``exp`` still gives a finite loss. Every branch is evaluated on
    clamped inputs, so the unused ones never put a NaN into the gradient.
    """
    log_py, log1m = log_py_and_log1m_py(z, target)
    a = n * log1m
    half = -math.log(2.0)
    tiny = torch.finfo(z.dtype).tiny
    general = torch.where(a > half,
                          -torch.log(-torch.expm1(a.clamp(max=-tiny))),
                          -torch.log1p(-a.clamp(max=half).exp()))
    underflow = log_py + math.log(n) < math.log(torch.finfo(z.dtype).eps)
    expansion = -(log_py + math.log(n)) + (n - 1) * 0.5 * log_py.exp()
    return torch.where(underflow, expansion, general)


@LOSSES.register(
    "dco",
    consumes="logits",
    paper="Chen, Raventós, Cheng, Ganguli, Druckmann, Rethinking Fine-Tuning when Scaling "
    "Test-Time Compute: Limiting Confidence Improves Mathematical Reasoning, NeurIPS 2025 "
    "(arXiv:2502.07154; Direct Coverage Optimization)",
)
class DirectCoverage(Loss):
    """Direct Coverage Optimization: -log pass@N = -log(1 - (1 - p_y)^N).

    The paper's coverage loss for one example, ``L_cov^N = -log(1 - (1 - p(y|x))^N)``,
    minimised directly (its Direct Coverage Optimization; the equation number could not be
    checked from here, only the paper's abstract and its authors' blog post were reachable).
    Its gradient is CE's scaled by the confidence factor
    ``F(N, p) = N p (1 - p)^(N-1) / (1 - (1 - p)^N)``: 1 for N = 1 (DCO is CE) and falling to
    0 as ``p_y -> 1`` for N > 1, so an example stops being pushed once N samples would cover it
    (the paper's "limiting confidence"). Here ``p`` is the softmax probability of the label;
    on ``lm`` tasks, of the next token (per-token DCO). ``n`` is the N of the pass@N being
    trained for (the paper matches it to the test-time budget; 4 is lossbench's default).
    """

    consumes = "logits"

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        return coverage_loss(_as_float(output), target, self.n)
