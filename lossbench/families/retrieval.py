"""Retrieval (deep metric learning): train on some classes, retrieve among held-out classes.

Protocol (Musgrave, Belongie, Lim, A Metric Learning Reality Check, ECCV 2020): the embedding
size, the batch construction (P classes x m examples per batch) and the budget are fixed per
task, the same for every loss. The test classes are disjoint from the training classes and are
scored by exact cosine kNN (``lossbench.metrics_retrieval``). Model selection never looks at the
test classes: a validation split of the *training* data -- held-out training classes
(``split.val_by = "class"``) or held-out examples of them (``"example"``) -- picks the epoch with
the best validation MAP@R; last-epoch and best-by-validation test metrics are both reported.

``retrieval.mode = "self-supervised"`` trains without labels instead (two augmented views of
each image as the positive pair) and adds kNN and linear-probe accuracy (``retrieval_ssl``); the
modes are registered in ``MODES``.

Embedding losses get ``num_classes`` (training classes after the validation split) and
``embedding_dim``. A logits loss trains through a cosine-classifier head owned by this family
(``CosineHeadLoss``: ``scale * cos(emb, w_c)``, Zhai & Wu, BMVC 2019), so every classification
loss also runs here; with ``ce`` this is exactly ``norm-softmax`` at ``T = 1 / head_scale``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lossbench.data.samplers import pk_sampler
from lossbench.data.sources import RawSplits, load_source, stratified_split
from lossbench.data.views import View, identity, image_view, train_view
from lossbench.engine.train import TrainConfig, Trainer, seed_everything
from lossbench.errors import require
from lossbench.families.base import FAMILIES, RunContext, RunOutput, check_common, config_table
from lossbench.families.classification import subset
from lossbench.losses import LOSSES, Loss
from lossbench.metrics_retrieval import retrieval_metrics
from lossbench.models import MODELS
from lossbench.registry import Entry

# --------------------------------------------------------------------------------------------
# Task-spec tables.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalConfig:
    """``[retrieval]``: what is fixed per task for every loss."""

    embedding_dim: int = 128
    samples_per_class: int = 4
    head_scale: float = 16.0
    mode: Literal["supervised", "self-supervised"] = "supervised"
    """``supervised``: P x m batches of labelled training classes; ``self-supervised``: no
    labels in training (``retrieval_ssl``)."""


@dataclass(frozen=True)
class SplitConfig:
    """``[split]``: the class split (sources without one) and the validation split."""

    train_classes: tuple[int, ...] = ()
    val_by: Literal["class", "example"] = "class"
    val_fraction: float = 0.25
    split_seed: int = 0
    train_limit: int = 0
    """At most this many training examples (0: all), drawn by ``split_seed``: smoke budgets on
    a few hundred images of a large set. Also ``val_limit``, ``test_limit`` (the test rows)."""
    val_limit: int = 0
    test_limit: int = 0


@dataclass(frozen=True)
class EvalConfig:
    """``[eval]``: which Recall@K, the memory bound of the evaluation (scores per tile), and the
    frozen-embedding scores of the self-supervised mode (``lossbench.metrics_frozen``)."""

    recall_at: tuple[int, ...] = (1, 2, 4, 8)
    chunk_elements: int = 2**24
    knn_k: int = 200
    """Self-supervised mode: neighbours of the weighted kNN classifier (Wu et al., 2018)."""
    knn_temperature: float = 0.07
    probe_l2: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    """Self-supervised mode: the linear probe's L2 strengths, one picked on validation."""
    probe_iters: int = 100


def read_config(spec: Mapping[str, Any]) -> tuple[RetrievalConfig, SplitConfig, EvalConfig]:
    """The three retrieval tables of a resolved spec, range-checked."""
    ret = config_table(RetrievalConfig, spec, "retrieval")
    split = config_table(SplitConfig, spec, "split")
    ev = config_table(EvalConfig, spec, "eval")
    require(ret.embedding_dim >= 1, f"retrieval.embedding_dim must be >= 1, got "
            f"{ret.embedding_dim}")
    require(ret.samples_per_class >= 2, "retrieval.samples_per_class must be >= 2, got "
            f"{ret.samples_per_class}")
    require(ret.head_scale > 0, f"retrieval.head_scale must be > 0, got {ret.head_scale}")
    require(split.val_by in ("class", "example"),
            f"split.val_by must be class or example, got {split.val_by!r}")
    require(0.0 < split.val_fraction < 1.0,
            f"split.val_fraction must be in (0, 1), got {split.val_fraction}")
    require(len(ev.recall_at) > 0 and all(k >= 1 for k in ev.recall_at),
            f"eval.recall_at must be positive integers, got {list(ev.recall_at)}")
    require(ev.chunk_elements >= 1, f"eval.chunk_elements must be >= 1, got {ev.chunk_elements}")
    for key in ("train_limit", "val_limit", "test_limit"):
        require(getattr(split, key) >= 0,
                f"split.{key} must be an int >= 0 (0: no limit), got {getattr(split, key)}")
    require(ev.knn_k >= 1, f"eval.knn_k must be >= 1, got {ev.knn_k}")
    require(ev.knn_temperature > 0, f"eval.knn_temperature must be > 0, got {ev.knn_temperature}")
    require(len(ev.probe_l2) > 0 and all(v >= 0 for v in ev.probe_l2),
            f"eval.probe_l2 must be a non-empty list of numbers >= 0, got {list(ev.probe_l2)}")
    require(ev.probe_iters >= 1, f"eval.probe_iters must be >= 1, got {ev.probe_iters}")
    return ret, split, ev


@dataclass(frozen=True)
class Mode:
    """One way a retrieval task trains: its run, its own spec checks, and the losses it takes
    (``check_loss(name)`` raises a one-line UserError for a loss it cannot train)."""

    run: Callable[[RunContext], RunOutput]
    check: Callable[[Mapping[str, Any]], None]
    check_loss: Callable[[str], None]


MODES: dict[str, Mode] = {}
"""``retrieval.mode`` -> how it trains; ``supervised`` here, ``self-supervised`` in
``retrieval_ssl``. Packed runners: ``retrieval_packed.PACKED_MODES``."""


def mode_of(spec: Mapping[str, Any]) -> Mode:
    return MODES[read_config(spec)[0].mode]


def check_spec(spec: Mapping[str, Any]) -> None:
    """Validate a resolved spec before any data is loaded."""
    check_common(spec)
    mode_of(spec).check(spec)


def check_spec_loss(spec: Mapping[str, Any], loss: str) -> None:
    """Before the grid: can this spec's mode train this loss?"""
    mode_of(spec).check_loss(loss)


def check_supervised(spec: Mapping[str, Any]) -> None:
    """The P x m batches need a batch size that is a multiple of ``m``, with two classes."""
    cfg = TrainConfig.from_spec(spec["train"])
    ret, _, _ = read_config(spec)
    require("imbalance" not in spec, "[imbalance] is supported in retrieval.mode = "
            "\"self-supervised\" only")
    m = ret.samples_per_class
    require(cfg.batch_size % m == 0 and cfg.batch_size // m >= 2,
            f"train.batch_size ({cfg.batch_size}) must be a multiple of "
            f"retrieval.samples_per_class ({m}) with at least 2 classes per batch")


# --------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------


@dataclass
class RetrievalData:
    """Device tensors: train (labels 0..C-1), validation and test (any integer labels)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    view: View
    image: bool
    info: dict[str, Any]


def class_split(raw: RawSplits, split: SplitConfig, source: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and test classes: the source's own class-disjoint split, or ``train_classes``."""
    if raw.meta.get("class_disjoint"):
        require(not split.train_classes, f"source '{source}' has its own class split; "
                "remove split.train_classes")
        return raw.x_train, raw.y_train, raw.x_test, raw.y_test
    require(bool(split.train_classes), f"source '{source}' has no class-disjoint split; set "
            "split.train_classes (a list of class ids to train on)")
    x = np.concatenate([raw.x_train, raw.x_test])
    y = np.concatenate([raw.y_train, raw.y_test])
    present = set(np.unique(y).tolist())
    absent = sorted(set(split.train_classes) - present)
    require(not absent, f"split.train_classes lists {absent}, not classes of '{source}'; it has "
            f"{sorted(present)}")
    train = np.isin(y, split.train_classes)
    require(bool((~train).any()), "split.train_classes leaves no test classes")
    return x[train], y[train], x[~train], y[~train]


def validation_split(y: np.ndarray, split: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) within the training classes: by class or by example."""
    if split.val_by == "example":
        return stratified_split(y, split.val_fraction, split.split_seed)
    classes = np.unique(y)
    n_val = max(1, round(split.val_fraction * len(classes)))
    require(len(classes) - n_val >= 2, f"{len(classes)} training classes are too few to hold "
            f"out {n_val} for validation; use split.val_by = \"example\"")
    rng = np.random.default_rng(split.split_seed)
    held = np.isin(y, rng.permutation(classes)[:n_val])
    return np.flatnonzero(~held), np.flatnonzero(held)


def prepare_data(spec: Mapping[str, Any], split: SplitConfig, device: torch.device
                 ) -> RetrievalData:
    """Source -> class split -> validation split -> device (images stay uint8 until a batch)."""
    source = str(spec["data"].get("source", ""))
    raw = load_source(spec["data"])
    x_tr, y_tr, x_te, y_te = class_split(raw, split, source)
    train_idx, val_idx = validation_split(y_tr, split)
    train_idx = subset(train_idx, split.train_limit, split.split_seed)
    val_idx = subset(val_idx, split.val_limit, split.split_seed)
    test_idx = subset(np.arange(len(y_te)), split.test_limit, split.split_seed)
    x_te, y_te = x_te[test_idx], y_te[test_idx]
    y_train = np.unique(y_tr[train_idx], return_inverse=True)[1]
    image = raw.kind == "image"
    dtype = torch.uint8 if image else torch.float32

    def put(x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=dtype).to(device)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.tensor(y, dtype=torch.int64).to(device)

    info = {
        "num_train": len(train_idx), "num_val": len(val_idx), "num_test": len(y_te),
        "train_classes": int(y_train.max()) + 1, "val_classes": len(np.unique(y_tr[val_idx])),
        "test_classes": len(np.unique(y_te)), "val_by": split.val_by,
        "origin": raw.meta.get("origin", source),
    }
    view = image_view(x_tr[train_idx], device) if image else identity
    return RetrievalData(
        put(x_tr[train_idx]), labels(y_train), put(x_tr[val_idx]), labels(y_tr[val_idx]),
        put(x_te), labels(y_te), int(y_train.max()) + 1, view, image, info,
    )


# --------------------------------------------------------------------------------------------
# Losses: embedding losses directly, logits losses through a cosine-classifier head.
# --------------------------------------------------------------------------------------------


class CosineHeadLoss(Loss):
    """A logits loss on ``scale * cos(emb, w_c)``: the normalised-softmax head (Zhai & Wu, 2019).

    The head's class weights [C, D] belong to this module, so the Trainer optimises them with
    the model; retrieval still uses the embeddings, not the head.
    """

    consumes = "embeddings"

    def __init__(self, inner: Loss, embedding_dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=embedding_dim**-0.5)

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        z = F.normalize(output.to(torch.promote_types(output.dtype, torch.float32)), dim=1)
        return self.scale * z @ F.normalize(self.weight.to(z.dtype), dim=1).T

    def forward(self, output: torch.Tensor, target: torch.Tensor, *,
                index: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(self.logits(output), target, index=index)

    def on_epoch_end(self, epoch: int) -> None:
        self.inner.on_epoch_end(epoch)


def _embedding_loss(entry: Entry[Loss], params: Mapping[str, Any], ret: RetrievalConfig,
                    num_classes: int, num_train: int) -> Loss:
    return entry.build(params, num_classes=num_classes, embedding_dim=ret.embedding_dim,
                       num_train=num_train)


def _logits_loss(entry: Entry[Loss], params: Mapping[str, Any], ret: RetrievalConfig,
                 num_classes: int, num_train: int) -> Loss:
    inner = entry.build(params, num_classes=num_classes, num_train=num_train)
    return CosineHeadLoss(inner, ret.embedding_dim, num_classes, ret.head_scale)


ADAPTERS: dict[str, Callable[..., Loss]] = {
    "embeddings": _embedding_loss,
    "logits": _logits_loss,
}
"""How a loss of each kind is trained here (the family's ``accepts``)."""


def build_loss(name: str, params: Mapping[str, Any], ret: RetrievalConfig, num_classes: int,
               num_train: int) -> Loss:
    """The loss as the Trainer calls it: ``ADAPTERS`` by kind (the grid checked the kind)."""
    entry = LOSSES.get(name)
    return ADAPTERS[entry.tags["consumes"]](entry, params, ret, num_classes, num_train)


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------


MAIN = ("recall@1", "map@r", "r_precision", "auc")
"""Test metrics also reported at the best-validation epoch."""


def build_model(spec: Mapping[str, Any], in_shape: tuple[int, ...], ret: RetrievalConfig
                ) -> nn.Module:
    """The task's model for inputs of ``in_shape`` with an ``embedding_dim`` output."""
    model_spec = {k: v for k, v in spec["model"].items() if k != "name"}
    return MODELS.get(spec["model"]["name"]).build(
        model_spec, in_shape=in_shape, out_dim=ret.embedding_dim)


def add_epoch(curves: dict[str, list[float]], train_loss: float,
              scores: Mapping[str, Mapping[str, float]]) -> None:
    """Append one epoch: the training loss and each split's (``val``, ``test``) metrics."""
    curves.setdefault("train_loss", []).append(train_loss)
    for prefix, result in scores.items():
        for name, value in result.items():
            curves.setdefault(f"{prefix}_{name}", []).append(value)


def final_metrics(curves: Mapping[str, list[float]]) -> dict[str, float]:
    """Last-epoch test metrics, the best-validation-MAP@R epoch's, and the selection facts."""
    best = int(np.argmax(curves["val_map@r"]))
    metrics = {k: v[-1] for k, v in curves.items() if k.startswith("test_")}
    metrics |= {f"test_{m}@best_val": curves[f"test_{m}"][best] for m in MAIN}
    return metrics | {
        "val_map@r": curves["val_map@r"][-1],
        "val_recall@1": curves["val_recall@1"][-1],
        "best_val_map@r": curves["val_map@r"][best],
        "best_epoch": float(best + 1),
        "train_loss": curves["train_loss"][-1],
    }


@FAMILIES.register(
    "retrieval",
    accepts=tuple(ADAPTERS),
    summary=("test_recall@1", "test_map@r", "test_recall@1@best_val", "test_map@r@best_val",
             "test_auc", "test_knn_acc", "test_probe_acc"),
    check=check_spec,
    check_loss=check_spec_loss,
    supplies=("num_classes", "num_train", "embedding_dim"),
)
def run_retrieval(ctx: RunContext) -> RunOutput:
    """Train an embedding (supervised or self-supervised, ``retrieval.mode``); Recall@K, MAP@R,
    AUC on held-out classes (and kNN / linear-probe accuracy without labels)."""
    return mode_of(ctx.spec).run(ctx)


def run_supervised(ctx: RunContext) -> RunOutput:
    """Train an embedding on training classes; Recall@K, MAP@R, AUC on held-out classes."""
    spec = ctx.spec
    ret, split, ev = read_config(spec)
    cfg = TrainConfig.from_spec(spec["train"])
    data = prepare_data(spec, split, ctx.device)

    seed_everything(ctx.seed)
    model = build_model(spec, tuple(data.x_train.shape[1:]), ret).to(ctx.device)
    loss = build_loss(ctx.loss, ctx.loss_params, ret, data.num_classes,
                      len(data.x_train)).to(ctx.device)
    trainer = Trainer(model, loss, cfg, ctx.device, max(1, len(data.x_train) // cfg.batch_size),
                      augment=train_view(data.view, data.image, cfg.augment),
                      sampler=pk_sampler(ret.samples_per_class))
    generator = torch.Generator().manual_seed(ctx.seed)

    def score(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return retrieval_metrics(trainer.predict(x, view=data.view), y, ev.recall_at,
                                 ev.chunk_elements)

    curves: dict[str, list[float]] = {}
    for epoch in range(cfg.epochs):
        train_loss = trainer.epoch(data.x_train, data.y_train, generator, epoch)
        add_epoch(curves, train_loss, {"val": score(data.x_val, data.y_val),
                                       "test": score(data.x_test, data.y_test)})
        ctx.report(epoch + 1, cfg.epochs, {"loss": train_loss,
                                           "val_map@r": curves["val_map@r"][-1],
                                           "test_recall@1": curves["test_recall@1"][-1]})
    return RunOutput(final_metrics(curves), curves, data.info)


MODES["supervised"] = Mode(run=run_supervised, check=check_supervised,
                           check_loss=lambda name: None)
