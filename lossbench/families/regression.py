"""Regression: train on standardised targets, score RMSE, MAE, NLL and interval coverage in the
ORIGINAL target units.

Protocol (Hernández-Lobato & Adams, ICML 2015; Gal & Ghahramani, ICML 2016): random 90/10
train/test splits, and **the run seed is the split index** (seed k uses split k, and also seeds
the weights and the batch order). Inputs and targets are standardised with the mean and
(population) standard deviation of the fitting part of the training split only; a constant
feature keeps scale 1. A validation part of the training split (``split.val_fraction``, drawn
with a generator seeded by ``(split.val_seed, split)``) is held out for model selection and
never trained on; the test part is never looked at before scoring.

Every epoch scores validation and test; a run reports the last epoch (``test_rmse``...) and the
epoch with the lowest validation RMSE (``test_rmse@best_val``...). Metrics, all in original
units: ``rmse``, ``mae``; ``nll`` (Gaussian, per example) where the loss predicts a variance;
``coverage`` (% of test targets inside the interval), ``width`` (mean interval width) and
``coverage_error`` (|coverage - nominal|, in points) where it predicts an interval: its own
quantile interval (``pinball``), else the central ``eval.interval`` (default 90%) Gaussian
interval of a predicted variance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lossbench.data.sources import SOURCES, RawSplits
from lossbench.engine.train import Diverged, TrainConfig, Trainer, seed_everything
from lossbench.errors import require
from lossbench.families.base import FAMILIES, RunContext, RunOutput, check_common, config_table
from lossbench.losses import LOSSES, Loss
from lossbench.losses.regression import Prediction
from lossbench.models import MODELS
from lossbench.registry import PROBE_CONTEXT

if TYPE_CHECKING:
    from lossbench.engine.grid import RunConfig


@dataclass(frozen=True)
class SplitConfig:
    """``[split]``: the validation part carved out of each training split."""

    val_fraction: float = 0.1
    val_seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    """``[eval]``: nominal coverage of the Gaussian interval drawn from a predicted variance."""

    interval: float = 0.9


def read_config(spec: Mapping[str, Any]) -> tuple[SplitConfig, EvalConfig]:
    split = config_table(SplitConfig, spec, "split")
    ev = config_table(EvalConfig, spec, "eval")
    require(0.0 < split.val_fraction < 1.0,
            f"split.val_fraction must be in (0, 1), got {split.val_fraction}")
    require(0.0 < ev.interval < 1.0, f"eval.interval must be in (0, 1), got {ev.interval}")
    return split, ev


def check_spec(spec: Mapping[str, Any]) -> None:
    """Validate a resolved spec before any data is loaded."""
    check_common(spec)
    read_config(spec)


# --------------------------------------------------------------------------------------------
# Data: one split, a validation part, standardisation from the fitting part.
# --------------------------------------------------------------------------------------------


def load_split(data: Mapping[str, Any], split: int) -> RawSplits:
    """Build the task's ``[data]`` source for split ``split`` (the run seed)."""
    options = {k: v for k, v in data.items() if k != "source"}
    return SOURCES.get(str(data.get("source", ""))).build(options, split=split)


def validation_split(n: int, fraction: float, seed: int, split: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val) of a training split: ``fraction`` held out at random (at least one)."""
    order = np.random.default_rng([seed, split]).permutation(n)
    held = max(1, round(fraction * n))
    require(n - held >= 2, f"training split of {n} examples is too small for validation")
    return np.sort(order[held:]), np.sort(order[:held])


def moments(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and population standard deviation; a zero deviation becomes 1."""
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


@dataclass
class RegressionData:
    """Device tensors: standardised inputs, standardised training targets, original-unit
    validation and test targets (float64) and the target scale to map predictions back."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    y_mean: float
    y_std: float
    info: dict[str, Any]


def prepare_data(spec: Mapping[str, Any], split: int, device: torch.device) -> RegressionData:
    raw = load_split(spec["data"], split)
    cfg, _ = read_config(spec)
    fit, val = validation_split(len(raw.y_train), cfg.val_fraction, cfg.val_seed, split)
    x_all = np.asarray(raw.x_train, dtype=np.float64).reshape(len(raw.y_train), -1)
    x_test = np.asarray(raw.x_test, dtype=np.float64).reshape(len(raw.y_test), -1)
    y_all = np.asarray(raw.y_train, dtype=np.float64)
    x_mean, x_std = moments(x_all[fit])
    y_mean, y_std = moments(y_all[fit])

    def inputs(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((x - x_mean) / x_std, dtype=torch.float32).to(device)

    def original(y: np.ndarray) -> torch.Tensor:
        return torch.tensor(y, dtype=torch.float64).to(device)

    y_fit = torch.as_tensor((y_all[fit] - y_mean) / y_std, dtype=torch.float32).to(device)
    info = {"split": split, "num_fit": len(fit), "num_val": len(val),
            "num_test": len(raw.y_test), "y_mean": float(y_mean), "y_std": float(y_std)}
    info |= {k: v for k, v in raw.meta.items() if isinstance(v, (int, float, str))}
    return RegressionData(
        inputs(x_all[fit]), y_fit, inputs(x_all[val]), original(y_all[val]),
        inputs(x_test), original(np.asarray(raw.y_test, dtype=np.float64)),
        float(y_mean), float(y_std), info,
    )


# --------------------------------------------------------------------------------------------
# Metrics (pure functions, original units).
# --------------------------------------------------------------------------------------------


def gaussian_nll(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example ``-log N(y; mean, var)``."""
    return 0.5 * (torch.log(2.0 * math.pi * var) + (y - mean).square() / var)


def regression_metrics(pred: Prediction, y: torch.Tensor, shift: float, scale: float,
                       level: float, interval_level: float | None) -> dict[str, float]:
    """Scores of a standardised prediction against original-unit targets ``y``.

    ``level`` is the nominal coverage of the Gaussian interval drawn from ``var``; an explicit
    ``lower``/``upper`` interval has nominal coverage ``interval_level`` and takes precedence.
    """
    mean = pred["mean"].double() * scale + shift
    err = mean - y
    out = {"rmse": err.square().mean().sqrt().item(), "mae": err.abs().mean().item()}
    interval: tuple[torch.Tensor, torch.Tensor, float] | None = None
    if "var" in pred:
        var = pred["var"].double() * scale**2
        out["nll"] = gaussian_nll(mean, var, y).mean().item()
        half = NormalDist().inv_cdf(0.5 + level / 2) * var.sqrt()
        interval = (mean - half, mean + half, level)
    if "lower" in pred and interval_level is not None:
        lower = pred["lower"].double() * scale + shift
        interval = (lower, pred["upper"].double() * scale + shift, interval_level)
    if interval is not None:
        lower, upper, nominal = interval
        coverage = 100.0 * ((y >= lower) & (y <= upper)).double().mean().item()
        out |= {"coverage": coverage, "width": (upper - lower).mean().item(),
                "coverage_error": abs(coverage - 100.0 * nominal)}
    return out


def final_metrics(curves: Mapping[str, list[float]]) -> dict[str, float]:
    """Per-epoch curves -> last-epoch and best-validation-RMSE test metrics."""
    best = int(np.argmin(curves["val_rmse"]))
    tests = [k.removeprefix("test_") for k in curves if k.startswith("test_")]
    metrics = {f"test_{m}": curves[f"test_{m}"][-1] for m in tests}
    metrics |= {f"test_{m}@best_val": curves[f"test_{m}"][best] for m in tests}
    return metrics | {
        "val_rmse": curves["val_rmse"][-1],
        "best_val_rmse": curves["val_rmse"][best],
        "best_epoch": float(best + 1),
        "train_loss": curves["train_loss"][-1],
    }


# --------------------------------------------------------------------------------------------
# The family.
# --------------------------------------------------------------------------------------------


def build_loss_and_model(spec: Mapping[str, Any], name: str, params: Mapping[str, Any],
                         data: RegressionData) -> tuple[Loss, nn.Module]:
    """The loss (its ``head_dim`` sizes the model), then the model: a single run's order of RNG
    use after seeding."""
    loss = LOSSES.get(name).build(params, num_train=len(data.x_train), train_inputs=data.x_train)
    model_spec = {k: v for k, v in spec["model"].items() if k != "name"}
    model = MODELS.get(spec["model"]["name"]).build(
        model_spec, in_shape=tuple(data.x_train.shape[1:]), out_dim=int(loss.head_dim))
    return loss, model


def pack_key(cfg: RunConfig) -> tuple[int, int]:
    """Runs that can share one packed computation: the same split (the seed is the split, so the
    same inputs) and the same head size (the loss's ``head_dim``, built with stand-in context)."""
    return cfg.seed, int(LOSSES.get(cfg.loss).build(cfg.loss_params, **PROBE_CONTEXT).head_dim)


def add_epoch(curves: dict[str, list[float]], train_loss: float, val: Mapping[str, float],
              test: Mapping[str, float], epoch: int) -> Diverged | None:
    """Append one epoch's scores; non-finite validation predictions end the run as diverged."""
    if not math.isfinite(val["rmse"]):
        return Diverged(f"non-finite predictions at epoch {epoch + 1}")
    row = {"train_loss": train_loss, "val_rmse": val["rmse"]}
    if "nll" in val:
        row["val_nll"] = val["nll"]
    row |= {f"test_{k}": v for k, v in test.items()}
    for name, value in row.items():
        curves.setdefault(name, []).append(value)
    return None


def run_info(data: RegressionData, curves: Mapping[str, list[float]], level: float | None,
             ev: EvalConfig) -> dict[str, Any]:
    info = dict(data.info)
    if "test_coverage" in curves:
        info["interval_level"] = level if level is not None else ev.interval
    return info


@FAMILIES.register(
    "regression",
    accepts=("regression",),
    summary=("test_rmse@best_val", "test_nll@best_val", "test_coverage@best_val"),
    check=check_spec,
    supplies=("num_train", "train_inputs"),
    pack_key=pack_key,
)
def run_regression(ctx: RunContext) -> RunOutput:
    """Train a regressor with a regression loss; RMSE/MAE/NLL/coverage in original units."""
    spec = ctx.spec
    data = prepare_data(spec, ctx.seed, ctx.device)
    cfg = TrainConfig.from_spec(spec["train"])
    _, ev = read_config(spec)

    seed_everything(ctx.seed)
    loss, model = build_loss_and_model(spec, ctx.loss, ctx.loss_params, data)
    loss, model = loss.to(ctx.device), model.to(ctx.device)
    steps = max(1, len(data.x_train) // cfg.batch_size)
    trainer = Trainer(model, loss, cfg, ctx.device, steps)
    generator = torch.Generator().manual_seed(ctx.seed)
    level = getattr(loss, "interval_level", None)

    def score(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        pred = loss.predict(trainer.predict(x))
        return regression_metrics(pred, y, data.y_mean, data.y_std, ev.interval, level)

    curves: dict[str, list[float]] = {}
    for epoch in range(cfg.epochs):
        train_loss = trainer.epoch(data.x_train, data.y_train, generator, epoch)
        diverged = add_epoch(curves, train_loss, score(data.x_val, data.y_val),
                             score(data.x_test, data.y_test), epoch)
        if diverged is not None:
            raise diverged
        ctx.report(epoch + 1, cfg.epochs, {"loss": train_loss, "val_rmse": curves["val_rmse"][-1],
                                           "test_rmse": curves["test_rmse"][-1]})
    return RunOutput(final_metrics(curves), curves, run_info(data, curves, level, ev))
