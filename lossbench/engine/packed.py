"""Packed training: several runs of one task and budget trained as one batched computation.

The members' weights are stacked (``torch.func.stack_module_state``) and the shared architecture
is evaluated once with ``vmap`` over the member axis, so M small runs cost about one launch each
step instead of M. Each member keeps its own data order, labels, loss (with its own state) and
optimizer state: SGD and AdamW update every element independently, so one optimizer over the
stacked tensors performs exactly the per-member updates, and gradients do not mix because the
objective is a sum of per-member losses. BatchNorm works: its running statistics are stacked
buffers that ``vmap`` updates per member, and batch statistics are per member's own batch.
Each member's augmentation draws from its own generator, as in its single run.

Not packable: dropout (a single run draws its masks from the global RNG, which members cannot
share and reproduce). On CUDA, bf16 autocast applies as in ``Trainer``; ``channels_last`` and
``torch.compile`` do not (the members' batches form a 5-D tensor that ``vmap`` turns into
grouped convolutions).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lossbench.engine.train import (
    OPTIMIZERS,
    Diverged,
    Sampler,
    TrainConfig,
    batches,
    lr_factor,
    param_groups,
    seed_everything,
    set_lr,
)

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""(a member's batch, its generator) -> the augmented batch, as ``Trainer`` takes it."""


class NotPackable(Exception):
    """These runs cannot share one packed computation; the executor runs them one by one."""


PACKED_RUNNERS: dict[str, Callable[[Sequence[Any]], list[Any]]] = {}
"""family name -> runner(contexts) -> one RunOutput or Diverged per context (filled by families)."""


def packable(model: nn.Module) -> bool:
    """True unless the model uses dropout, whose masks a packed run cannot draw as its single
    run would (from the global RNG, one run at a time)."""
    return not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                   for m in model.modules())


class PackedTrainer:
    """Trains M same-architecture models, each with its own loss, labels and data order."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        losses: Sequence[nn.Module],
        cfg: TrainConfig,
        device: torch.device,
        steps_per_epoch: int,
        sampler: Sampler = batches,
        augment: Augment | None = None,
    ) -> None:
        if not all(packable(m) for m in models):
            raise ValueError("models with dropout cannot be packed")
        params, buffers = stack_module_state(list(models))
        self.params = {k: nn.Parameter(v.detach().to(device)) for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")
        self.losses = list(losses)
        self.cfg = cfg
        self.sampler = sampler
        self.augment = augment
        self.use_amp = cfg.amp and device.type == "cuda"
        self.total = steps_per_epoch * cfg.epochs
        self.step = 0
        groups = [{"params": list(self.params.values()), "lr_scale": 1.0}]
        for loss in losses:
            groups += param_groups([], loss)[1:]
        self.optimizer = OPTIMIZERS[cfg.optimizer](groups, cfg)

    def _call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [M, B, ...] -> outputs [M, B, ...] in float32: member m's model on its own
        batch (train or eval behaviour follows ``self.base``'s mode)."""
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else nullcontext()
        with amp:
            return vmap(self._call)(self.params, self.buffers, x).float()

    def _inputs(self, x: torch.Tensor, idx: torch.Tensor, generators: Sequence[torch.Generator]
                ) -> torch.Tensor:
        if self.augment is None:
            return x[idx]
        return torch.stack([self.augment(x[i], g) for i, g in zip(idx, generators, strict=True)])

    def epoch(
        self,
        x: torch.Tensor,
        ys: Sequence[torch.Tensor],
        generators: Sequence[torch.Generator],
        epoch: int,
    ) -> list[float]:
        """One pass for every member over the shared inputs ``x`` with member labels ``ys``.

        Returns each member's mean training loss (NaN or inf for a diverged member, whose
        parameters are its own slice and cannot affect the others).
        """
        self.base.train()
        members = range(len(ys))
        streams = [self.sampler(y.cpu(), self.cfg.batch_size, g) for y, g in zip(ys, generators,
                                                                                  strict=True)]
        totals = torch.zeros(len(ys), device=x.device)
        count = 0
        for step_batches in zip(*streams, strict=True):
            idx = torch.stack(step_batches).to(x.device)
            set_lr(self.optimizer, self.cfg.lr * lr_factor(self.step, self.total, self.cfg))
            out = self.forward(self._inputs(x, idx, generators))
            values = torch.stack([
                self.losses[m](out[m], ys[m][idx[m]], index=idx[m]).mean() for m in members
            ])
            self.optimizer.zero_grad(set_to_none=True)
            # A diverged member's NaN stays in its own slice; mask it so the sum stays usable.
            torch.where(values.isfinite(), values, values.detach()).sum().backward()
            self.optimizer.step()
            totals += values.detach()
            count += 1
            self.step += 1
        for loss in self.losses:
            if hasattr(loss, "on_epoch_end"):
                loss.on_epoch_end(epoch)
        return [float(t) / max(count, 1) for t in totals]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1024,
                view: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Every member's outputs on the same inputs ``x``: [M, N, ...] in float32; ``view``
        maps stored rows to inputs batch by batch, as in ``Trainer.predict``."""
        self.base.eval()
        members = next(iter(self.params.values())).shape[0]
        outs = []
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            chunk = chunk if view is None else view(chunk)
            outs.append(self.forward(chunk.expand(members, *chunk.shape)))
        return torch.cat(outs, dim=1)


def build_members(
    ctxs: Sequence[Any],
    build: Callable[[Any], tuple[nn.Module, nn.Module]],
    device: torch.device,
) -> tuple[list[nn.Module], list[nn.Module]]:
    """Each member's (model, loss) from ``build(ctx)`` right after seeding with the member's seed,
    as its single run does, so initial weights and loss state are the single run's."""
    models, losses = [], []
    for ctx in ctxs:
        seed_everything(ctx.seed)
        model, loss = build(ctx)
        if not packable(model):
            raise NotPackable("dropout in the model")
        models.append(model.to(device))
        losses.append(loss.to(device))
    return models, losses


def train_packed(
    trainer: PackedTrainer,
    epochs: int,
    x: torch.Tensor,
    ys: Sequence[torch.Tensor],
    seeds: Sequence[int],
    evaluate: Callable[[], Any],
    record: Callable[[int, int, float, Any], Diverged | None],
) -> list[Diverged | None]:
    """The packed epoch loop every family shares: train, ``evaluate()`` all members once, then
    ``record(member, epoch, train_loss, evaluation)`` for each member still alive. A member
    whose loss turns non-finite, or whose ``record`` returns a ``Diverged`` (a family's own
    check, e.g. non-finite predictions), stops there with that outcome, as its single run
    would; the others go on. Each member's data order and augmentation come from a generator
    seeded with its run seed, as in ``Trainer``'s single run."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    outcomes: list[Diverged | None] = [None] * len(ys)
    for epoch in range(epochs):
        train_losses = trainer.epoch(x, ys, generators, epoch)
        evaluation = evaluate()
        for m, train_loss in enumerate(train_losses):
            if outcomes[m] is not None:
                continue
            if not math.isfinite(train_loss):
                outcomes[m] = Diverged(f"non-finite training loss at epoch {epoch + 1}")
                continue
            outcomes[m] = record(m, epoch, train_loss, evaluation)
    return outcomes
