"""The loss contract: an nn.Module returning one loss per example; reduction is the engine's."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from lossbench.losses.reducers import LossEntry
from lossbench.registry import Registry

Consumes = Literal["logits", "binary", "embeddings", "regression", "fewshot", "lm-hidden"]
"""What a loss reads. ``lm-hidden`` losses (``lossbench.losses.lm``) take hidden states [N, D]
and the LM head's weight [V, D] (keyword ``weight``) instead of logits, so they can avoid the
[N, V] logit matrix."""


class Loss(nn.Module):
    """Base class. ``forward(output, target, *, index=None) -> [N]`` per-example losses.

    ``index`` holds dataset example ids, for losses with per-example state (ALDR-KL's lambda_i).
    """

    consumes: ClassVar[Consumes]

    def forward(  # type: ignore[override]
        self, output: torch.Tensor, target: torch.Tensor, *, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def on_epoch_end(self, epoch: int) -> None:
        """Hook for losses with epoch-level state; default does nothing."""


LOSSES: Registry[Loss] = Registry("loss", LossEntry)
"""Every loss, registered with ``@LOSSES.register(name, consumes=..., paper=...)``; each also
takes a reducer (``lossbench.losses.reducers``)."""
