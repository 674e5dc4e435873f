"""The family contract: how a task of one kind trains and is scored.

A family is a function ``run(ctx) -> RunOutput`` registered in ``FAMILIES`` with the loss kinds it
accepts (``accepts=("logits",)``); adapters let a family accept more than its native kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from lossbench.data.sources import SOURCES
from lossbench.engine.train import TrainConfig
from lossbench.models import MODELS
from lossbench.registry import Registry
from lossbench.spec import typed_table

Reporter = Callable[[int, int, Mapping[str, float]], None]
"""(epoch done, epochs in all, live metrics) -> None; how a run shows progress."""


@dataclass
class RunContext:
    """Everything one run needs: resolved task spec, the loss choice, seed, device, a reporter."""

    spec: Mapping[str, Any]
    loss: str
    loss_params: Mapping[str, Any]
    seed: int
    device: torch.device
    report: Reporter = lambda epoch, epochs, live: None
    teacher: Mapping[str, str] | None = None
    """A distillation run's teacher: its run ``key`` and the ``file`` of its arrays."""


@dataclass
class RunOutput:
    """What a finished run produced: final metrics, per-epoch curves, and run facts (noise...)."""

    metrics: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """Arrays to keep beside the record (``records/<key>.npz``, ``lossbench.engine.arrays``)."""


FAMILIES: Registry[RunOutput] = Registry("task family")

C = TypeVar("C")


def config_table(cls: type[C], spec: Mapping[str, Any], name: str) -> C:
    """A config dataclass from the spec table ``spec[name]``; unknown keys and wrong types are a
    one-line UserError listing the accepted ones."""
    return typed_table(cls, spec.get(name, {}), name)


def check_common(spec: Mapping[str, Any]) -> TrainConfig:
    """The checks every family's spec needs before any data loads: the data source's options
    (and, where the source has a cheap ``check``, that its files exist: a missing data set is one
    line naming ``lossbench data get`` before any run starts), the model's options and the
    [train] table (returned, parsed)."""
    data = dict(spec["data"])
    source = SOURCES.get(str(data.pop("source", "")))
    options = source.resolve(data)
    present = source.tags.get("check")
    if present is not None:
        present(**options)
    model = dict(spec["model"])
    MODELS.get(str(model.pop("name", ""))).resolve(model)
    return TrainConfig.from_spec(spec["train"])
