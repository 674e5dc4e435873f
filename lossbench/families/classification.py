"""Classification: train on (possibly noisy) labels, score top-1/top-5/ECE/NLL on CLEAN test labels.

Model selection never looks at the test set: we report the last epoch and the epoch with the best
validation top-1 (validation labels carry the same noise as training labels).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lossbench.data.augment import crop_flip
from lossbench.data.noise import apply_noise, check_noise
from lossbench.data.sources import SOURCES, RawSplits, load_source, stratified_split
from lossbench.engine.train import TrainConfig, Trainer, seed_everything
from lossbench.errors import require
from lossbench.families.base import FAMILIES, RunContext, RunOutput
from lossbench.losses import LOSSES
from lossbench.models import MODELS


def top_k(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Percentage of examples whose label is among the ``k`` largest logits."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1)
    return 100.0 * hits.float().mean().item()


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """ECE in percent with equal-width confidence bins (Guo et al., ICML 2017, Eq. 3)."""
    conf, pred = probs.max(dim=1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    ece = torch.zeros((), device=probs.device)
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return 100.0 * ece.item()


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, bins: int) -> dict[str, float]:
    probs = logits.softmax(dim=1)
    return {
        "top1": top_k(logits, y, 1),
        "top5": top_k(logits, y, 5),
        "ece": expected_calibration_error(probs, y, bins),
        "nll": F.cross_entropy(logits, y).item(),
    }


@dataclass
class Splits:
    """Device tensors for one run: noisy train/val labels, clean test labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    image: bool
    noise: dict[str, Any]


def _normalise(raw: RawSplits, x: np.ndarray) -> torch.Tensor:
    if raw.kind != "image":
        return torch.as_tensor(x, dtype=torch.float32)
    train = torch.as_tensor(raw.x_train, dtype=torch.float32) / 255.0
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True)
    return (torch.as_tensor(x, dtype=torch.float32) / 255.0 - mean) / std


def prepare_splits(spec: Mapping[str, Any], seed: int, device: torch.device) -> Splits:
    """Source -> label noise on the whole training set -> fixed stratified val split -> device."""
    raw = load_source(spec["data"])
    split = spec.get("split", {})
    noise = dict(spec.get("noise", {"kind": "none"}))
    kind = str(noise.pop("kind", "none"))
    if kind == "asym" and "map" not in noise and "asym_map" in raw.meta:
        noise["map"] = raw.meta["asym_map"]  # the dataset's standard flip map
    y_noisy, report = apply_noise(raw.y_train, raw.num_classes, kind, noise, seed, raw.meta)
    # The split is drawn on the clean labels with a fixed seed, so it is the same for every run
    # seed and noise draw (runs differ only in noise, init and order; packed runs share inputs).
    # Validation labels are the noisy ones: model selection never sees clean labels.
    train_idx, val_idx = stratified_split(
        raw.y_train, float(split.get("val_fraction", 0.1)), int(split.get("split_seed", 0))
    )
    limit = int(split.get("train_limit", 0))
    if limit:
        train_idx = train_idx[np.random.default_rng(split.get("split_seed", 0)).permutation(
            len(train_idx))[:limit]]
        train_idx.sort()

    def put(x: np.ndarray) -> torch.Tensor:
        return _normalise(raw, x).to(device)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(y, dtype=torch.int64).to(device)

    return Splits(
        put(raw.x_train[train_idx]), labels(y_noisy[train_idx]),
        put(raw.x_train[val_idx]), labels(y_noisy[val_idx]),
        put(raw.x_test), labels(raw.y_test),
        raw.num_classes, raw.kind == "image", asdict(report),
    )


def check_spec(spec: Mapping[str, Any]) -> None:
    """Validate a resolved spec before any data is loaded, so mistakes surface before the grid."""
    data = dict(spec["data"])
    SOURCES.get(str(data.pop("source", ""))).resolve(data)
    noise = dict(spec.get("noise", {"kind": "none"}))
    check_noise(str(noise.pop("kind", "none")), noise)
    model = dict(spec["model"])
    MODELS.get(str(model.pop("name", ""))).resolve(model)
    TrainConfig.from_spec(spec["train"])
    fraction = float(spec.get("split", {}).get("val_fraction", 0.1))
    require(0.0 < fraction < 1.0, f"split.val_fraction must be in (0, 1), got {fraction}")


CURVES = ("train_loss", "val_top1", "test_top1", "test_top5", "test_ece", "test_nll")


def epoch_metrics(train_loss: float, val: Mapping[str, float], test: Mapping[str, float]
                  ) -> dict[str, float]:
    """One epoch's row of the curves: training loss, noisy-val top-1, clean-test metrics."""
    return {"train_loss": train_loss, "val_top1": val["top1"]} | {
        f"test_{name}": value for name, value in test.items()
    }


def final_metrics(curves: Mapping[str, list[float]]) -> dict[str, float]:
    """Per-epoch curves -> final metrics: last epoch, and the epoch with the best val top-1."""
    best = int(np.argmax(curves["val_top1"]))
    metrics = {f"test_{m}": curves[f"test_{m}"][-1] for m in ("top1", "top5", "ece", "nll")}
    metrics |= {f"test_{m}@best_val": curves[f"test_{m}"][best] for m in ("top1", "top5", "ece")}
    return metrics | {
        "val_top1": curves["val_top1"][-1],
        "best_val_top1": curves["val_top1"][best],
        "best_epoch": float(best + 1),
        "train_loss": curves["train_loss"][-1],
    }


@FAMILIES.register(
    "classification",
    accepts=("logits",),
    summary=("test_top1", "test_top1@best_val", "test_ece"),
    check=check_spec,
)
def run_classification(ctx: RunContext) -> RunOutput:
    """Train a classifier with a logits loss; clean-test top-1/top-5/ECE, last and best-by-val."""
    spec = ctx.spec
    data = prepare_splits(spec, ctx.seed, ctx.device)
    cfg = TrainConfig.from_spec(spec["train"])
    bins = int(spec.get("eval", {}).get("ece_bins", 15))

    seed_everything(ctx.seed)
    model_spec = {k: v for k, v in spec["model"].items() if k != "name"}
    model = MODELS.get(spec["model"]["name"]).build(
        model_spec, in_shape=tuple(data.x_train.shape[1:]), out_dim=data.num_classes
    ).to(ctx.device)
    loss = LOSSES.get(ctx.loss).build(
        ctx.loss_params, num_classes=data.num_classes, num_train=len(data.x_train)
    ).to(ctx.device)
    steps = max(1, len(data.x_train) // cfg.batch_size)
    trainer = Trainer(model, loss, cfg, ctx.device, steps,
                      augment=crop_flip if (cfg.augment and data.image) else None)
    generator = torch.Generator().manual_seed(ctx.seed)
    # Per-example ids index the (post-split) training set for stateful losses such as ALDR-KL.
    curves: dict[str, list[float]] = {k: [] for k in CURVES}
    for epoch in range(cfg.epochs):
        train_loss = trainer.epoch(data.x_train, data.y_train, generator, epoch)
        val = classification_metrics(trainer.predict(data.x_val), data.y_val, bins)
        test = classification_metrics(trainer.predict(data.x_test), data.y_test, bins)
        for name, value in epoch_metrics(train_loss, val, test).items():
            curves[name].append(value)
        ctx.report(epoch + 1, cfg.epochs,
                   {"loss": train_loss, "val_top1": val["top1"], "test_top1": test["top1"]})

    return RunOutput(final_metrics(curves), curves,
                     {"noise": data.noise, "num_train": len(data.x_train)})
