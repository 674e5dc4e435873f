"""Classification: train on (possibly noisy or imbalanced) labels, score on CLEAN test labels.

Per epoch: top-1/top-5, balanced accuracy, macro-F1, AUROC (one-vs-rest macro; binary for two
classes), binary F1 (positive class 1, two-class tasks only), ECE and adaptive ECE, NLL and
Brier on the clean test set (``lossbench.metrics``). Model selection never looks at the test set:
we report the last epoch, the epoch with the best validation top-1 (``@best_val``) and the epoch
with the best validation balanced accuracy (``@best_val_bacc``, the selection that suits
imbalanced tasks). Validation labels carry the training labels' noise and class distribution.

Imbalanced tasks (``lossbench.data.imbalance``): ``[binary] positive = c`` relabels a source
one-vs-rest; ``[imbalance] profile = ...`` subsamples the training and validation parts, never
the test set. ``[calibration] method = ...`` fits post-hoc calibrators on the last epoch's
validation logits and reports their test calibration (``lossbench.calibration``).

Losses of kind ``logits`` and ``binary`` both train the K-logit head (``binary`` losses read the
margin ``z_1 - z_0`` for K = 2, one-vs-rest columns for K > 2; ``lossbench.losses.imbalance``),
so the model and the evaluation are the same for every loss. Losses get ``loss_context``:
``num_classes``, ``num_train``, the training ``class_counts`` (for LDAM, logit adjustment) and the
run ``seed`` (for losses with a generator of their own, EnsLoss).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lossbench.calibration import calibrate, check_method
from lossbench.data.augment import crop_flip
from lossbench.data.imbalance import apply_imbalance, check_imbalance, one_vs_rest
from lossbench.data.noise import NOISE, apply_noise, check_noise
from lossbench.data.sources import RawSplits, load_source, stratified_split
from lossbench.data.views import channel_stats
from lossbench.engine.train import TrainConfig, Trainer, seed_everything
from lossbench.errors import require
from lossbench.families.base import FAMILIES, RunContext, RunOutput, check_common
from lossbench.losses import LOSSES, Loss
from lossbench.metrics import (
    adaptive_calibration_error,
    auroc_ovr,
    balanced_accuracy,
    binary_f1,
    brier,
    expected_calibration_error,
    macro_f1,
    nll,
    top_k,
)
from lossbench.models import MODELS


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, bins: int) -> dict[str, float]:
    """Every per-epoch metric of one split; ``f1`` (positive class 1) only for binary tasks."""
    probs = logits.float().softmax(dim=1)
    pred = logits.argmax(dim=1)
    k = logits.shape[1]
    out = {
        "top1": top_k(logits, y, 1),
        "top5": top_k(logits, y, 5),
        "bacc": balanced_accuracy(pred, y, k),
        "macro_f1": macro_f1(pred, y, k),
        "auroc": auroc_ovr(logits, y),
        "ece": expected_calibration_error(probs, y, bins),
        "ada_ece": adaptive_calibration_error(probs, y, bins),
        "nll": nll(logits, y),
        "brier": brier(probs, y),
    }
    if k == 2:
        out["f1"] = binary_f1(pred, y)
    return out


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
    imbalance: dict[str, Any] = field(default_factory=dict)
    """The ``ImbalanceReport`` of an ``[imbalance]`` task, else empty."""

    @property
    def class_counts(self) -> tuple[int, ...]:
        """Per-class counts of the training labels the loss sees (noisy, after subsampling)."""
        return tuple(torch.bincount(self.y_train.cpu(), minlength=self.num_classes).tolist())


def _device_rows(raw: RawSplits, device: torch.device) -> Callable[[np.ndarray], torch.Tensor]:
    """Rows -> float32 tensors on ``device``. Images travel as uint8 (4x less to copy) and are
    standardised there, per channel, with the exact statistics of the source's training images."""
    if raw.kind != "image":
        return lambda x: torch.tensor(x, dtype=torch.float32).to(device)
    mean, std = channel_stats(raw.x_train)
    shape = (1, -1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(shape)
    s = torch.tensor(std, dtype=torch.float32, device=device).clamp_min(1e-6).view(shape)
    return lambda x: torch.tensor(x).to(device).float().div_(255.0).sub_(m).div_(s)


def prepare_splits(spec: Mapping[str, Any], seed: int, device: torch.device) -> Splits:
    """Source (-> one-vs-rest) -> label noise on the whole training set -> fixed stratified val
    split (-> imbalance subsampling of both parts) -> device."""
    raw = load_source(spec["data"])
    if "binary" in spec:
        raw = one_vs_rest(raw, int(spec["binary"]["positive"]))
    split = spec.get("split", {})
    noise = dict(spec.get("noise", {"kind": "none"}))
    kind = str(noise.pop("kind", "none"))
    auto_map = NOISE.get(kind).tags.get("auto_map")
    if auto_map and "map" not in noise and auto_map in raw.meta:
        noise["map"] = raw.meta[auto_map]  # the dataset's standard flip map, named in the report
    y_noisy, report = apply_noise(raw.y_train, raw.num_classes, kind, noise, seed, raw.meta)
    # The split is drawn on the clean labels with a fixed seed, so it is the same for every run
    # seed and noise draw (runs differ only in noise, init and order; packed runs share inputs).
    # With split.kfold = k, run seed s validates on fold s mod k instead (the LDR protocol).
    # Validation labels are the noisy ones: model selection never sees clean labels.
    split_seed = int(split.get("split_seed", 0))
    kfold = int(split.get("kfold", 0))
    if kfold:
        train_idx, val_idx = kfold_split(len(raw.y_train), kfold, seed % kfold)
    else:
        train_idx, val_idx = stratified_split(
            raw.y_train, float(split.get("val_fraction", 0.1)), split_seed)
    imbalance: dict[str, Any] = {}
    if "imbalance" in spec:  # its own fixed generator: the same subset for every run seed
        train_idx, val_idx, imb = apply_imbalance(
            raw.y_train, train_idx, val_idx, raw.num_classes, spec["imbalance"])
        imbalance = asdict(imb)
    train_idx = subset(train_idx, int(split.get("train_limit", 0)), split_seed)
    val_idx = subset(val_idx, int(split.get("val_limit", 0)), split_seed)
    test_idx = subset(np.arange(len(raw.y_test)), int(split.get("test_limit", 0)), split_seed)

    put = _device_rows(raw, device)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.tensor(y, dtype=torch.int64).to(device)

    return Splits(
        put(raw.x_train[train_idx]), labels(y_noisy[train_idx]),
        put(raw.x_train[val_idx]), labels(y_noisy[val_idx]),
        put(raw.x_test[test_idx]), labels(raw.y_test[test_idx]),
        raw.num_classes, raw.kind == "image", asdict(report), imbalance,
    )


def kfold_split(n: int, k: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of fold ``fold`` of ``k`` contiguous folds, in the source's
    order: scikit-learn's ``KFold(n_splits=k)`` without shuffling, which the LDR code runs."""
    sizes = np.full(k, n // k) + (np.arange(k) < n % k)
    start = int(sizes[:fold].sum())
    val = np.arange(start, start + int(sizes[fold]))
    return np.setdiff1d(np.arange(n), val), val


def subset(idx: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``idx`` (0: all), drawn by ``seed`` and kept in order: smoke budgets
    that run on a few hundred examples of a large set."""
    if not limit or limit >= len(idx):
        return idx
    return np.sort(idx[np.random.default_rng(seed).permutation(len(idx))[:limit]])


def check_spec(spec: Mapping[str, Any]) -> None:
    """Validate a resolved spec before any data is loaded, so mistakes surface before the grid."""
    check_common(spec)
    noise = dict(spec.get("noise", {"kind": "none"}))
    check_noise(str(noise.pop("kind", "none")), noise)
    fraction = float(spec.get("split", {}).get("val_fraction", 0.1))
    require(0.0 < fraction < 1.0, f"split.val_fraction must be in (0, 1), got {fraction}")
    kfold = spec.get("split", {}).get("kfold", 0)
    require(isinstance(kfold, int) and (kfold == 0 or kfold >= 2),
            f"split.kfold must be 0 (a stratified split) or an int >= 2, got {kfold!r}")
    for key in ("train_limit", "val_limit", "test_limit"):
        limit = spec.get("split", {}).get(key, 0)
        require(isinstance(limit, int) and limit >= 0,
                f"split.{key} must be an int >= 0 (0: no limit), got {limit!r}")
    if "binary" in spec:
        positive = spec["binary"].get("positive")
        require(isinstance(positive, int) and positive >= 0,
                f"binary.positive must be a class index >= 0, got {positive!r}")
    if "imbalance" in spec:
        check_imbalance(spec["imbalance"])
    check_method(str(spec.get("calibration", {}).get("method", "none")))
    bins = spec.get("eval", {}).get("ece_bins", 15)
    require(isinstance(bins, int) and bins >= 1, f"eval.ece_bins must be an int >= 1, got {bins}")


def loss_context(data: Splits, seed: int) -> dict[str, Any]:
    """Everything a classification loss may take as engine context."""
    return {"num_classes": data.num_classes, "num_train": len(data.x_train),
            "class_counts": data.class_counts, "seed": seed}


def build_model(spec: Mapping[str, Any], data: Splits) -> nn.Module:
    """The task's model with a K-logit head (the same for ``logits`` and ``binary`` losses)."""
    model_spec = {k: v for k, v in spec["model"].items() if k != "name"}
    return MODELS.get(spec["model"]["name"]).build(
        model_spec, in_shape=tuple(data.x_train.shape[1:]), out_dim=data.num_classes)


def build_loss(name: str, params: Mapping[str, Any], data: Splits, seed: int) -> Loss:
    return LOSSES.get(name).build(params, **loss_context(data, seed))


CURVES = (
    "train_loss", "val_top1", "val_bacc",
    "test_top1", "test_top5", "test_bacc", "test_macro_f1", "test_f1", "test_auroc",
    "test_ece", "test_ada_ece", "test_nll", "test_brier",
)
"""Every per-epoch curve; ``test_f1`` stays empty on tasks with more than two classes."""

LAST = ("top1", "top5", "bacc", "macro_f1", "f1", "auroc", "ece", "ada_ece", "nll", "brier")
"""Test metrics reported at the last epoch."""

SELECTED = ("top1", "top5", "bacc", "macro_f1", "f1", "auroc", "ece")
"""Test metrics also reported at each model-selection epoch."""

SELECTIONS = {"best_val": "val_top1", "best_val_bacc": "val_bacc"}
"""Metric-name suffix -> the validation curve whose (first) maximum picks the epoch."""


def epoch_metrics(train_loss: float, val: Mapping[str, float], test: Mapping[str, float]
                  ) -> dict[str, float]:
    """One epoch's row of the curves: training loss, noisy-val top-1 and balanced accuracy,
    clean-test metrics."""
    return {"train_loss": train_loss, "val_top1": val["top1"], "val_bacc": val["bacc"]} | {
        f"test_{name}": value for name, value in test.items()
    }


def final_metrics(curves: Mapping[str, list[float]]) -> dict[str, float]:
    """Per-epoch curves -> final metrics: the last epoch and each selection's epoch.

    Curves that are absent or empty (``test_f1`` on multi-class tasks, ``val_bacc`` in curves
    recorded before it existed) are skipped.
    """

    def has(name: str) -> bool:
        return len(curves.get(name, ())) > 0

    metrics = {f"test_{m}": curves[f"test_{m}"][-1] for m in LAST if has(f"test_{m}")}
    facts: dict[str, float] = {}
    for suffix, curve in SELECTIONS.items():
        if not has(curve):
            continue
        best = int(np.argmax(curves[curve]))
        metrics |= {f"test_{m}@{suffix}": curves[f"test_{m}"][best]
                    for m in SELECTED if has(f"test_{m}")}
        epoch_name = "best_epoch" if suffix == "best_val" else f"{suffix}_epoch"
        facts |= {curve: curves[curve][-1], f"best_{curve}": curves[curve][best],
                  epoch_name: float(best + 1)}
    return metrics | facts | {"train_loss": curves["train_loss"][-1]}


@FAMILIES.register(
    "classification",
    accepts=("logits", "binary"),
    summary=("test_top1", "test_top1@best_val", "test_bacc", "test_ece"),
    check=check_spec,
    supplies=("num_classes", "num_train", "class_counts", "seed"),
)
def run_classification(ctx: RunContext) -> RunOutput:
    """Train a classifier with a logits or binary-margin loss; clean-test metrics, last epoch and
    best-by-validation, plus post-hoc calibration when the task asks for it."""
    spec = ctx.spec
    data = prepare_splits(spec, ctx.seed, ctx.device)
    cfg = TrainConfig.from_spec(spec["train"])
    bins = int(spec.get("eval", {}).get("ece_bins", 15))

    seed_everything(ctx.seed)
    model = build_model(spec, data).to(ctx.device)
    loss = build_loss(ctx.loss, ctx.loss_params, data, ctx.seed).to(ctx.device)
    steps = max(1, len(data.x_train) // cfg.batch_size)
    trainer = Trainer(model, loss, cfg, ctx.device, steps,
                      augment=crop_flip if (cfg.augment and data.image) else None)
    generator = torch.Generator().manual_seed(ctx.seed)
    # Per-example ids index the (post-split) training set for stateful losses such as ALDR-KL.
    curves: dict[str, list[float]] = {k: [] for k in CURVES}
    for epoch in range(cfg.epochs):
        train_loss = trainer.epoch(data.x_train, data.y_train, generator, epoch)
        val_out, test_out = trainer.predict(data.x_val), trainer.predict(data.x_test)
        val = classification_metrics(val_out, data.y_val, bins)
        test = classification_metrics(test_out, data.y_test, bins)
        for name, value in epoch_metrics(train_loss, val, test).items():
            curves[name].append(value)
        ctx.report(epoch + 1, cfg.epochs,
                   {"loss": train_loss, "val_top1": val["top1"], "test_top1": test["top1"]})

    return finish_run(spec, data, curves, val_out, test_out, bins)


def finish_run(spec: Mapping[str, Any], data: Splits, curves: dict[str, list[float]],
               val_out: torch.Tensor, test_out: torch.Tensor, bins: int) -> RunOutput:
    """Curves and the last epoch's outputs -> the run's metrics (with post-hoc calibration when
    the task asks for it) and facts; shared by single and packed runs."""
    method = str(spec.get("calibration", {}).get("method", "none"))
    metrics = final_metrics(curves) | calibrate(val_out, data.y_val, test_out, data.y_test,
                                                method, bins)
    info: dict[str, Any] = {"noise": data.noise, "num_train": len(data.x_train),
                            "class_counts": list(data.class_counts)}
    if data.imbalance:
        info["imbalance"] = data.imbalance
    return RunOutput(metrics, curves, info)
