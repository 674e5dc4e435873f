"""The training loop: a plain, fast pass over in-memory tensors, shared by every family.

Data stay as tensors on the device and batches are index slices, so there is no DataLoader cost;
the data order comes from a seeded ``torch.Generator`` and weights from ``torch.manual_seed``, so
the same seed on CPU gives the same numbers.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lossbench.engine.cpu_optim import CpuAdamW, CpuSGD
from lossbench.errors import UserError, require
from lossbench.spec import typed_table

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(model output, targets, example ids) -> per-example losses [N]."""


class Diverged(Exception):
    """The training loss became NaN or infinite: the run ends with status ``diverged``."""


@dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` table of a task spec."""

    epochs: int
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    amp: bool = True
    compile: bool = False
    channels_last: bool = True
    augment: bool = False

    @classmethod
    def from_spec(cls, table: Mapping[str, Any]) -> TrainConfig:
        """The checked ``[train]`` table: unknown keys, wrong types and bad ranges are one-line
        user errors before any run starts."""
        cfg = typed_table(cls, table, "train")
        require(cfg.epochs >= 1, f"train.epochs must be >= 1, got {cfg.epochs}")
        require(cfg.batch_size >= 2, f"train.batch_size must be >= 2, got {cfg.batch_size}")
        require(cfg.lr > 0, f"train.lr must be > 0, got {cfg.lr}")
        require(cfg.momentum >= 0, f"train.momentum must be >= 0, got {cfg.momentum}")
        require(cfg.weight_decay >= 0, f"train.weight_decay must be >= 0, got {cfg.weight_decay}")
        require(cfg.gamma > 0, f"train.gamma must be > 0, got {cfg.gamma}")
        require(cfg.warmup_epochs >= 0,
                f"train.warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
        require(
            cfg.optimizer in OPTIMIZERS,
            f"unknown train.optimizer '{cfg.optimizer}'; accepted: {', '.join(OPTIMIZERS)}",
        )
        require(
            cfg.schedule in SCHEDULES,
            f"unknown train.schedule '{cfg.schedule}'; accepted: {', '.join(SCHEDULES)}",
        )
        return cfg


class Optimizer(Protocol):
    """What the engine needs of an optimizer (``torch.optim``'s or ``engine.cpu_optim``'s)."""

    param_groups: list[dict[str, Any]]

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...


def _on_cpu(groups: list[dict[str, Any]]) -> bool:
    return all(p.device.type == "cpu" for group in groups for p in group["params"])


def _sgd(params: Any, cfg: TrainConfig) -> Optimizer:
    """``torch.optim.SGD``'s update; on CPU by ``CpuSGD`` (same bits, no torch._dynamo import)."""
    groups = list(params)
    sgd = CpuSGD if _on_cpu(groups) else torch.optim.SGD
    return sgd(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
               weight_decay=cfg.weight_decay)


def _adamw(params: Any, cfg: TrainConfig) -> Optimizer:
    """``torch.optim.AdamW``'s update; on CPU by ``CpuAdamW`` (same bits, no torch._dynamo)."""
    groups = list(params)
    adamw = CpuAdamW if _on_cpu(groups) else torch.optim.AdamW
    return adamw(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


OPTIMIZERS: dict[str, Callable[[Any, TrainConfig], Optimizer]] = {
    "sgd": _sgd,
    "adamw": _adamw,
}


def _cosine(step: int, total: int, cfg: TrainConfig) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _step(step: int, total: int, cfg: TrainConfig) -> float:
    epoch = step * cfg.epochs // total
    return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


def _constant(step: int, total: int, cfg: TrainConfig) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[int, int, TrainConfig], float]] = {
    "cosine": _cosine,
    "step": _step,
    "constant": _constant,
}
"""Learning-rate multipliers as a function of the optimizer step (per-iteration granularity)."""


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    warm = cfg.warmup_epochs * total / cfg.epochs
    ramp = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
    return ramp * SCHEDULES[cfg.schedule](step, total, cfg)


def param_groups(model_params: Iterable[nn.Parameter], loss: nn.Module) -> list[dict[str, Any]]:
    """Model and loss parameters; a loss may train its own (proxies) at ``lr_multiplier`` x lr."""
    groups: list[dict[str, Any]] = [{"params": list(model_params), "lr_scale": 1.0}]
    own = list(loss.parameters())
    if own:
        groups.append({"params": own, "lr_scale": float(getattr(loss, "lr_multiplier", 1.0))})
    return groups


def set_lr(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random: weights and any library randomness follow the run seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


DEVICE_CHOICES = ("auto", "cpu", "cuda")


def _check_device_name(name: str) -> None:
    require(name in DEVICE_CHOICES or (name.startswith("cuda:") and name[5:].isdigit()),
            f"unknown device '{name}'; accepted: {', '.join(DEVICE_CHOICES)}, cuda:N")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a user error, not a traceback."""
    _check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def device_type(name: str, check: bool = True) -> str:
    """The device type (``cpu`` / ``cuda``) a ``--device`` value trains on, for the run key.
    ``check`` also proves CUDA is there; a Ray driver skips that, its workers may have it."""
    if check:
        return resolve_device(name).type
    _check_device_name(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name.split(":")[0]


Sampler = Callable[[torch.Tensor, int, torch.Generator], Iterator[torch.Tensor]]
"""(training labels on CPU, batch size, generator) -> CPU index batches for one epoch."""


def batches(labels: torch.Tensor, batch_size: int, generator: torch.Generator
            ) -> Iterator[torch.Tensor]:
    """Shuffled index batches; a trailing batch of one example is dropped (BatchNorm needs two)."""
    n = len(labels)
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) > 1:
            yield idx


@dataclass
class Trainer:
    """Owns model, loss, optimizer and schedule for one run; ``epoch()`` trains one pass."""

    model: nn.Module
    loss: nn.Module
    cfg: TrainConfig
    device: torch.device
    steps_per_epoch: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    sampler: Sampler = batches
    step: int = 0

    def __post_init__(self) -> None:
        self.optimizer = OPTIMIZERS[self.cfg.optimizer](
            param_groups(self.model.parameters(), self.loss), self.cfg
        )
        self.total = self.steps_per_epoch * self.cfg.epochs
        self.use_amp = self.cfg.amp and self.device.type == "cuda"
        self.channels_last = self.cfg.channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if self.cfg.compile and self.device.type == "cuda":
            self.forward = torch.compile(self.model)  # type: ignore[assignment]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def epoch(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, epoch: int
    ) -> float:
        """One pass; returns the mean training loss. Raises ``Diverged`` on a non-finite loss."""
        self.model.train()
        values: list[torch.Tensor] = []
        labels = y.cpu()
        for idx_cpu in self.sampler(labels, self.cfg.batch_size, generator):
            idx = idx_cpu.to(self.device, non_blocking=True)
            xb = x[idx]
            if self.augment is not None:
                xb = self.augment(xb, generator)
            if self.channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            set_lr(self.optimizer, self.cfg.lr * lr_factor(self.step, self.total, self.cfg))
            with self.autocast():
                out = self.forward(xb)
            value = self.loss(out.float(), y[idx], index=idx).mean()
            self.optimizer.zero_grad(set_to_none=True)
            value.backward()
            self.optimizer.step()
            values.append(value.detach())
            self.step += 1
        mean = float(torch.stack(values).mean()) if values else 0.0
        if not math.isfinite(mean):
            raise Diverged(f"non-finite training loss at epoch {epoch + 1}")
        if hasattr(self.loss, "on_epoch_end"):
            self.loss.on_epoch_end(epoch)
        return mean

    @torch.no_grad()
    def predict(
        self,
        x: torch.Tensor,
        batch_size: int = 1024,
        view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Model outputs on ``x`` in eval mode, in float32; ``view`` maps stored rows to inputs
        batch by batch (e.g. uint8 images to standardised floats)."""
        self.model.eval()
        outs = []
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            with self.autocast():
                outs.append(self.forward(chunk if view is None else view(chunk)).float())
        return torch.cat(outs)
