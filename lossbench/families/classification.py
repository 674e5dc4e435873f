"""Classification: train on (possibly noisy or imbalanced) labels, score on CLEAN test labels.

Test metrics: top-1/top-5, balanced accuracy, macro-F1, AUROC (one-vs-rest macro; binary for
two classes), binary F1 (positive class 1, two-class tasks only), ECE and adaptive ECE, NLL and
Brier on the clean test set (``lossbench.metrics``), and exact pass@N for ``eval.pass_at``
(default N = 1, 4, 16, 64): the chance that one of N labels sampled from the softmax is right,
``mean_i 1 - (1 - p_{y_i})^N`` (DCO's quantity; pass@1 is the mean ``p_y``, not top-1).
Model selection never looks at the test set: we report the last epoch, the epoch with the best
validation top-1 (``@best_val``) and the epoch with the best validation balanced accuracy
(``@best_val_bacc``, the selection that suits imbalanced tasks). Validation labels carry the
training labels' noise and class distribution.
``eval.every = k`` scores the validation set every k epochs (and the last); the test set is
scored only at epochs a reported metric can come from (``EpochScorer``), unless
``eval.test_curves = true`` asks for it at every scored epoch.

Imbalanced tasks (``lossbench.data.imbalance``): ``[binary] positive = c`` relabels a source
one-vs-rest; ``[imbalance] profile = ...`` subsamples the training and validation parts, never
the test set. ``[calibration] method = ...`` fits post-hoc calibrators on the last epoch's
validation logits (the per-example CA calibrator also on the final model's outputs on transformed
copies of the validation inputs) and reports their test calibration (``lossbench.calibration``).

Losses of kind ``logits`` and ``binary`` both train the K-logit head (``binary`` losses read the
margin ``z_1 - z_0`` for K = 2, one-vs-rest columns for K > 2; ``lossbench.losses.imbalance``),
so the model and the evaluation are the same for every loss. Losses get ``loss_context``:
``num_classes``, ``num_train``, the training ``class_counts`` (for LDAM, logit adjustment) and the
run ``seed`` (for losses with a generator of their own, EnsLoss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lossbench.calibration import Views, calibrate, needs_views, read_calibration
from lossbench.calibration_transforms import transformed_outputs
from lossbench.data.augment import crop_flip
from lossbench.data.imbalance import apply_imbalance, check_imbalance, one_vs_rest
from lossbench.data.noise import NOISE, apply_noise, check_noise
from lossbench.data.sources import RawSplits, load_source, stratified_split
from lossbench.data.views import source_channel_stats
from lossbench.engine.train import TrainConfig, Trainer, seed_everything
from lossbench.errors import require
from lossbench.families.base import FAMILIES, RunContext, RunOutput, check_common, config_table
from lossbench.families.teacher import TRAIN_LOGITS, check_teacher, load_teacher
from lossbench.losses import LOSSES, Loss
from lossbench.losses.distill import TEACHER_CONTEXT, needs_teacher
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
from lossbench.metrics_lm import pass_at_n
from lossbench.models import MODELS

if TYPE_CHECKING:
    from lossbench.engine.grid import RunConfig


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, bins: int,
                           pass_at: tuple[int, ...] = ()) -> dict[str, float]:
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
    if pass_at:
        log_py = torch.log_softmax(logits.double(), dim=1).gather(1, y[:, None]).squeeze(1)
        out |= {f"pass@{n}": 100.0 * float(pass_at_n(log_py, n).mean()) for n in pass_at}
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
    mean, std = source_channel_stats(raw.x_train)
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
    split = read_split(spec)
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
    if split.kfold:
        train_idx, val_idx = kfold_split(len(raw.y_train), split.kfold, seed % split.kfold)
    else:
        train_idx, val_idx = stratified_split(raw.y_train, split.val_fraction, split.split_seed)
    imbalance: dict[str, Any] = {}
    if "imbalance" in spec:  # its own fixed generator: the same subset for every run seed
        train_idx, val_idx, imb = apply_imbalance(
            raw.y_train, train_idx, val_idx, raw.num_classes, spec["imbalance"])
        imbalance = asdict(imb)
    train_idx = subset(train_idx, split.train_limit, split.split_seed)
    val_idx = subset(val_idx, split.val_limit, split.split_seed)
    test_idx = subset(np.arange(len(raw.y_test)), split.test_limit, split.split_seed)

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


def pack_key(cfg: RunConfig) -> int | None:
    """Runs that share inputs pack together: with ``split.kfold`` the seed picks the fold (the
    training rows), so only runs of one seed pack; otherwise the split is the same for all."""
    return cfg.seed if read_split(cfg.spec).kfold else None


def check_spec(spec: Mapping[str, Any]) -> None:
    """Validate a resolved spec before any data is loaded, so mistakes surface before the grid."""
    check_common(spec)
    noise = dict(spec.get("noise", {"kind": "none"}))
    check_noise(str(noise.pop("kind", "none")), noise)
    read_split(spec)
    if "binary" in spec:
        positive = spec["binary"].get("positive")
        require(isinstance(positive, int) and positive >= 0,
                f"binary.positive must be a class index >= 0, got {positive!r}")
    if "imbalance" in spec:
        check_imbalance(spec["imbalance"])
    read_calibration(spec)
    read_eval(spec)
    check_teacher(spec, check_spec)


def check_loss(spec: Mapping[str, Any], loss: str) -> None:
    """A distillation loss needs the task's ``[teacher]`` and un-augmented student inputs (the
    teacher's cached logits are those of the un-augmented training inputs)."""
    if not needs_teacher(loss):
        return
    require("teacher" in spec, f"loss '{loss}' distils a teacher, but task '{spec['task']}' has "
                               "no [teacher] table (e.g. the *-distill tasks)")
    require(not spec.get("train", {}).get("augment", False),
            f"loss '{loss}' reads the teacher's logits of the un-augmented training inputs; "
            "set train.augment = false for the student (teacher.train.augment may stay true)")


@dataclass(frozen=True)
class SplitConfig:
    """``[split]``: how the training source is cut into training and (noisy) validation parts."""

    val_fraction: float = 0.1
    """Stratified validation share, drawn by ``split_seed`` (the same for every run seed)."""
    split_seed: int = 0
    kfold: int = 0
    """k > 0: contiguous folds in the source's order; run seed s validates on fold s mod k."""
    train_limit: int = 0
    """At most this many training examples (0: all), for smoke budgets; also val/test_limit."""
    val_limit: int = 0
    test_limit: int = 0


def read_split(spec: Mapping[str, Any]) -> SplitConfig:
    """The ``[split]`` table, checked like ``[eval]``."""
    split = config_table(SplitConfig, spec, "split")
    require(0.0 < split.val_fraction < 1.0,
            f"split.val_fraction must be in (0, 1), got {split.val_fraction}")
    require(split.kfold == 0 or split.kfold >= 2,
            f"split.kfold must be 0 (a stratified split) or an int >= 2, got {split.kfold}")
    for key in ("train_limit", "val_limit", "test_limit"):
        require(getattr(split, key) >= 0,
                f"split.{key} must be an int >= 0 (0: no limit), got {getattr(split, key)}")
    return split


@dataclass(frozen=True)
class EvalConfig:
    """``[eval]``: calibration bins and which epochs are scored (``EpochScorer``)."""

    ece_bins: int = 15
    every: int = 1
    """Score the validation set every ``every`` epochs (and at the last): selection picks among
    those epochs."""
    test_curves: bool = False
    """Score the test set at every scored epoch (full test learning curves), not only where a
    reported metric may come from."""
    pass_at: tuple[int, ...] = (1, 4, 16, 64)
    """The N of the reported exact pass@N (``test_pass@N``)."""
    keep_train_logits: bool = False
    """Keep the last epoch's logits on the un-augmented training inputs beside the record (a
    teacher's, for distillation losses; ``lossbench.families.teacher``)."""


def read_eval(spec: Mapping[str, Any]) -> EvalConfig:
    """The ``[eval]`` table, checked: unknown keys, wrong types and bad values are one-line
    user errors."""
    ev = config_table(EvalConfig, spec, "eval")
    require(ev.ece_bins >= 1, f"eval.ece_bins must be an int >= 1, got {ev.ece_bins}")
    require(ev.every >= 1, f"eval.every must be an int >= 1, got {ev.every}")
    require(all(n >= 1 for n in ev.pass_at), f"eval.pass_at must be ints >= 1, got {ev.pass_at}")
    return ev


def loss_context(data: Splits, seed: int) -> dict[str, Any]:
    """Everything a classification loss may take as engine context."""
    return {"num_classes": data.num_classes, "num_train": len(data.x_train),
            "class_counts": data.class_counts, "seed": seed}


def build_model(spec: Mapping[str, Any], data: Splits) -> nn.Module:
    """The task's model with a K-logit head (the same for ``logits`` and ``binary`` losses)."""
    model_spec = {k: v for k, v in spec["model"].items() if k != "name"}
    return MODELS.get(spec["model"]["name"]).build(
        model_spec, in_shape=tuple(data.x_train.shape[1:]), out_dim=data.num_classes)


def build_loss(name: str, params: Mapping[str, Any], data: Splits, seed: int,
               teacher_logits: torch.Tensor | None = None) -> Loss:
    extra = {} if teacher_logits is None else {TEACHER_CONTEXT: teacher_logits}
    return LOSSES.get(name).build(params, **loss_context(data, seed), **extra)


def teacher_of(ctx: RunContext, data: Splits) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """The teacher's training-set logits and its facts for a distillation run, else (None, {})."""
    if not needs_teacher(ctx.loss):
        return None, {}
    require(ctx.teacher is not None, f"loss '{ctx.loss}' needs a teacher run; run it through "
                                     "`lossbench run`, which trains the teacher first")
    assert ctx.teacher is not None
    return load_teacher(ctx.teacher, len(data.x_train), data.num_classes, ctx.device)


CURVES = (
    "train_loss", "val_epoch", "val_top1", "val_bacc", "test_epoch",
    "test_top1", "test_top5", "test_bacc", "test_macro_f1", "test_f1", "test_auroc",
    "test_ece", "test_ada_ece", "test_nll", "test_brier",
)
"""Every curve. ``train_loss`` has one value per epoch; the ``val_*`` curves one per epoch listed
in ``val_epoch`` (1-based, the scored epochs) and the ``test_*`` curves one per epoch listed in
``test_epoch``. ``test_f1`` stays empty on tasks with more than two classes. The
``test_pass@N`` curves of ``eval.pass_at`` come after these."""

LAST = ("top1", "top5", "bacc", "macro_f1", "f1", "auroc", "ece", "ada_ece", "nll", "brier")
"""Test metrics reported at the last epoch."""

SELECTED = ("top1", "top5", "bacc", "macro_f1", "f1", "auroc", "ece")
"""Test metrics also reported at each model-selection epoch."""

SELECTIONS = {"best_val": "val_top1", "best_val_bacc": "val_bacc"}
"""Metric-name suffix -> the validation curve whose (first) maximum picks the epoch."""


def scored_epochs(epochs: int, every: int) -> list[int]:
    """The 1-based epochs whose validation set is scored: every ``every``-th, and the last."""
    return sorted(set(range(every, epochs + 1, every)) | {epochs})


class EpochScorer:
    """One run's per-epoch scoring, shared by single and packed runs so both score the same
    epochs with the same numbers.

    Every epoch records its training loss. A scored epoch (``scored_epochs``) computes the
    validation top-1 and balanced accuracy, all model selection needs. The test set is scored
    where a reported metric may come from: the last epoch and each epoch that beats every
    earlier scored epoch on a selection curve (the first maximum is the one reported, so an
    epoch that only ties cannot be selected) -- or at every scored epoch with
    ``eval.test_curves = true``. Outputs arrive as callables, so the forward passes an epoch does
    not need are never made.
    """

    def __init__(self, data: Splits, ev: EvalConfig, epochs: int) -> None:
        self.data, self.ev, self.epochs = data, ev, epochs
        self.scored = set(scored_epochs(epochs, ev.every))
        self.curves: dict[str, list[float]] = {
            k: [] for k in (*CURVES, *(f"test_pass@{n}" for n in ev.pass_at))}
        self.best = dict.fromkeys(SELECTIONS.values(), -math.inf)
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        """The last epoch's (validation, test) outputs, for post-hoc calibration."""

    def add(self, epoch: int, train_loss: float, val: Callable[[], torch.Tensor],
            test: Callable[[], torch.Tensor]) -> dict[str, float]:
        """Record 0-based ``epoch``; returns what to show live (what this epoch measured)."""
        self.curves["train_loss"].append(train_loss)
        live = {"loss": train_loss}
        if epoch + 1 not in self.scored:
            return live
        val_out = val()
        y_val, k = self.data.y_val, self.data.num_classes
        row = {"val_top1": top_k(val_out, y_val, 1),
               "val_bacc": balanced_accuracy(val_out.argmax(dim=1), y_val, k)}
        for name, value in (row | {"val_epoch": epoch + 1}).items():
            self.curves[name].append(value)
        improved = [name for name, value in row.items() if value > self.best[name]]
        self.best |= {name: row[name] for name in improved}
        live["val_top1"] = row["val_top1"]
        last = epoch + 1 == self.epochs
        if not (last or improved or self.ev.test_curves):
            return live
        test_out = test()
        metrics = classification_metrics(test_out, self.data.y_test, self.ev.ece_bins,
                                         self.ev.pass_at)
        for name, value in (metrics | {"epoch": epoch + 1}).items():
            self.curves[f"test_{name}"].append(value)
        if last:
            self.last = (val_out, test_out)
        return live | {"test_top1": metrics["top1"]}


def _epochs_of(curves: Mapping[str, list[float]], prefix: str, name: str) -> list[int]:
    """The 1-based epochs of curve ``name``: ``<prefix>_epoch`` when recorded, else one per
    epoch (records written before scoring could skip epochs)."""
    listed = curves.get(f"{prefix}_epoch")
    return [int(e) for e in listed] if listed else list(range(1, len(curves[name]) + 1))


def final_metrics(curves: Mapping[str, list[float]]) -> dict[str, float]:
    """Curves -> final metrics: the last epoch and each selection's epoch (the first epoch with
    the best validation value among the scored ones).

    Curves that are absent or empty (``test_f1`` on multi-class tasks, ``val_bacc`` in curves
    recorded before it existed) are skipped.
    """

    def has(name: str) -> bool:
        return len(curves.get(name, ())) > 0

    passes = tuple(k.removeprefix("test_") for k in curves if k.startswith("test_pass@"))
    metrics = {f"test_{m}": curves[f"test_{m}"][-1] for m in (*LAST, *passes)
               if has(f"test_{m}")}
    test_epochs = _epochs_of(curves, "test", "test_top1")
    facts: dict[str, float] = {}
    for suffix, curve in SELECTIONS.items():
        if not has(curve):
            continue
        best = int(np.argmax(curves[curve]))
        epoch = _epochs_of(curves, "val", curve)[best]
        at = test_epochs.index(epoch)
        metrics |= {f"test_{m}@{suffix}": curves[f"test_{m}"][at]
                    for m in (*SELECTED, *passes) if has(f"test_{m}")}
        epoch_name = "best_epoch" if suffix == "best_val" else f"{suffix}_epoch"
        facts |= {curve: curves[curve][-1], f"best_{curve}": curves[curve][best],
                  epoch_name: float(epoch)}
    return metrics | facts | {"train_loss": curves["train_loss"][-1]}


@FAMILIES.register(
    "classification",
    accepts=("logits", "binary"),
    summary=("test_top1", "test_top1@best_val", "test_bacc", "test_ece", "teacher_test_top1"),
    check=check_spec,
    supplies=("num_classes", "num_train", "class_counts", "seed", TEACHER_CONTEXT),
    check_loss=check_loss,
    pack_key=pack_key,
)
def run_classification(ctx: RunContext) -> RunOutput:
    """Train a classifier with a logits or binary-margin loss; clean-test metrics, last epoch and
    best-by-validation, plus post-hoc calibration when the task asks for it."""
    spec = ctx.spec
    data = prepare_splits(spec, ctx.seed, ctx.device)
    cfg = TrainConfig.from_spec(spec["train"])
    ev = read_eval(spec)

    teacher_logits, teacher_facts = teacher_of(ctx, data)
    seed_everything(ctx.seed)
    model = build_model(spec, data).to(ctx.device)
    loss = build_loss(ctx.loss, ctx.loss_params, data, ctx.seed, teacher_logits).to(ctx.device)
    steps = max(1, len(data.x_train) // cfg.batch_size)
    trainer = Trainer(model, loss, cfg, ctx.device, steps,
                      augment=crop_flip if (cfg.augment and data.image) else None)
    generator = torch.Generator().manual_seed(ctx.seed)
    # Per-example ids index the (post-split) training set for stateful losses such as ALDR-KL.
    scorer = EpochScorer(data, ev, cfg.epochs)
    for epoch in range(cfg.epochs):
        train_loss = trainer.epoch(data.x_train, data.y_train, generator, epoch)
        live = scorer.add(epoch, train_loss, lambda: trainer.predict(data.x_val),
                          lambda: trainer.predict(data.x_test))
        ctx.report(epoch + 1, cfg.epochs, live)
    out = finish_run(spec, data, scorer, ctx.seed, lambda: calibration_views(
        spec, data, trainer.predict))
    if ev.keep_train_logits:
        out.arrays[TRAIN_LOGITS] = trainer.predict(data.x_train).cpu().numpy()
    return with_teacher(out, teacher_facts)


def with_teacher(out: RunOutput, facts: Mapping[str, Any]) -> RunOutput:
    """A distillation run's output with its teacher's test metrics (``teacher_test_top1``...)
    beside its own, and the teacher's run key in its facts."""
    if facts:
        out.metrics |= {k: v for k, v in facts.items() if k != "teacher_key"}
        out.info["teacher"] = str(facts["teacher_key"])
    return out


def calibration_views(spec: Mapping[str, Any], data: Splits,
                      predict: Callable[[torch.Tensor], torch.Tensor]) -> Views:
    """The final model's outputs on transformed copies of the validation and test inputs, for
    the per-example CA calibrator (``lossbench.calibration_transforms``)."""
    return transformed_outputs(read_calibration(spec), data.x_val, data.x_test, data.image,
                               predict)


def finish_run(spec: Mapping[str, Any], data: Splits, scorer: EpochScorer, seed: int = 0,
               views: Callable[[], Views] | None = None) -> RunOutput:
    """A finished scorer -> the run's metrics (with post-hoc calibration, on the last epoch's
    outputs, when the task asks for it) and facts; shared by single and packed runs. ``views``
    gives the final model's outputs on transformed inputs (asked only by the per-example CA
    calibrator, whose initialisation ``seed`` draws)."""
    assert scorer.last is not None, "the last epoch is always scored"
    val_out, test_out = scorer.last
    cal = read_calibration(spec)
    copies = views() if views is not None and needs_views(cal.method) else None
    metrics = final_metrics(scorer.curves) | calibrate(val_out, data.y_val, test_out, data.y_test,
                                                       cal, scorer.ev.ece_bins, copies, seed)
    info: dict[str, Any] = {"noise": data.noise, "num_train": len(data.x_train),
                            "class_counts": list(data.class_counts)}
    if data.imbalance:
        info["imbalance"] = data.imbalance
    return RunOutput(metrics, scorer.curves, info)
