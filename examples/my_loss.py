"""A loss from outside lossbench: the tempered (bounded) cross-entropy, benchmarked with

    lossbench run --loss ce --loss examples/my_loss.py:TemperedCE:t1=0.8 --task digits-noisy

The tempered logarithm ``log_t(x) = (x^(1-t) - 1) / (1-t)`` is bounded below by ``-1/(1-t)``
for ``t < 1``, so a loss built on it cannot grow without bound on a mislabelled example. With
one-hot labels and the ordinary softmax ``p`` (the second temperature t2 = 1), the bi-tempered
loss of Amid, Warmuth, Anil & Koren (Robust Bi-Tempered Logistic Loss Based on Bregman
Divergences, NeurIPS 2019, Sec. 3) is

    L = -log_t1(p_y) - (1 - sum_k p_k^(2-t1)) / (2-t1)
      = (1 - p_y^(1-t1)) / (1-t1) - (1 - sum_k p_k^(2-t1)) / (2-t1),

a Bregman divergence between the label and p (so L >= 0, and L = 0 only when p_y = 1), bounded
above by 1/(1-t1) for t1 < 1, and equal to cross-entropy at t1 = 1. The authors' code
(google/bi-tempered-loss) computes the same sum. Keeping t2 = 1 leaves out the heavy-tailed
tempered softmax and its iterative normalisation: this file is the bounded half only.

What makes it a lossbench loss: a ``torch.nn.Module`` whose ``forward(output, target, *,
index=None)`` returns one loss per example, a ``consumes`` class attribute saying what it takes
(``"logits"``: [N, K] scores and integer targets), and constructor parameters with defaults and
type hints (they become ``:t1=0.8`` on the command line; a ValueError is the user's error line).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TemperedCE(nn.Module):
    """Tempered cross-entropy (bi-tempered loss with t2 = 1): bounded by 1/(1-t1) for t1 < 1."""

    consumes = "logits"
    paper = ("Amid, Warmuth, Anil, Koren, Robust Bi-Tempered Logistic Loss Based on Bregman "
             "Divergences, NeurIPS 2019 (t2 = 1)")

    def __init__(self, t1: float = 0.8) -> None:
        super().__init__()
        if not 0.0 <= t1 <= 1.0:
            raise ValueError(f"t1 must be in [0, 1], got {t1}")
        self.t1 = t1

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        log_p = F.log_softmax(output.float() if output.dtype in (torch.float16, torch.bfloat16)
                              else output, dim=1)
        log_py = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
        if self.t1 == 1.0:
            return -log_py
        a, b = 1.0 - self.t1, 2.0 - self.t1
        # p^a - 1 as expm1(a log p): exact when p_y is close to 1, where the loss is near 0.
        first = -torch.expm1(a * log_py) / a
        second = -torch.expm1(torch.logsumexp(b * log_p, dim=1)) / b
        return first - second
