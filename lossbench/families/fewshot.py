"""Few-shot classification: train on base classes, score N-way K-shot episodes on novel classes.

Protocol: base classes train the embedding, validation classes select the epoch, novel classes
are scored. Each evaluation setting (``eval.ways`` x ``eval.shots``, ``eval.queries`` queries per
class) is scored on ``eval.test_episodes`` fixed episodes (``lossbench.data.episodes``: their seed
is ``eval.episode_seed``, never the run seed) by the nearest-prototype rule on the embeddings;
the mean accuracy and its 95% confidence half-width ``1.96 std / sqrt(E)`` are reported as
``test_acc_<W>w<K>s`` / ``test_ci95_<W>w<K>s``, at the last epoch and at the epoch with the best
validation accuracy of the same setting (``...@best_val``). Validation episodes use
``min(W, number of validation classes)`` ways.

Training (``fewshot.mode``), the backbone's output being the embedding (``fewshot.embedding_dim``):

* ``episodic``: prototypical networks (Snell et al., NeurIPS 2017). Each step is one episode of
  ``train_ways`` base classes with ``train_shots`` support and ``train_queries`` query examples
  each. A logits loss is applied to the prototype logits ``-|q - c_k|^2 / temperature`` of the
  queries (``PrototypeLogitsLoss``: ``ce`` is ProtoNet's loss, ``ldr`` runs as is); an embedding
  loss (triplet, ms, ...) gets the whole episode as its batch with base-class labels; a
  ``fewshot`` loss (proto-triplet, icnn) gets the episode as its contract says.
* ``standard``: plain classification of the base classes through a linear head on the embedding
  (``LinearHeadLoss``), then nearest prototype on the embeddings at test; the strong baseline of
  Chen et al. (A Closer Look at Few-shot Classification, ICLR 2019) and Tian et al. (Rethinking
  Few-Shot Image Classification, ECCV 2020). An embedding loss trains on P x K batches
  (``fewshot.samples_per_class`` per class); ``fewshot`` losses need episodes.

Every mode processes the same number of images per epoch: ``fewshot.episodes_per_epoch = 0``
means one pass over the base set in episodes. ``eval.norm = "l2"`` L2-normalises embeddings
before the nearest-prototype rule (SimpleShot; Wang et al. 2019); default ``none``.

Inference is an axis of its own (``fewshot_scoring``): ``eval.inference`` lists methods of
``lossbench.fewshot_inference`` (prototype, soft-kmeans, paddle, tim, laplacianshot; default the
prototype rule alone) and ``eval.query_dirichlet`` concentrations of imbalanced test query sets
(Veilleux et al., NeurIPS 2021; default none); every method is scored on every query
distribution at the last and the best-validation epoch, e.g. ``test_acc_5w1s_dir2_paddle``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lossbench.data.episodes import (
    EvalEpisodes,
    draw_episodes,
    episode_accuracy,
    episode_sampler,
    mean_ci95,
)
from lossbench.data.fewshot_sources import CLASS_SPLITS, ClassSplit, SplitConfig
from lossbench.data.samplers import pk_sampler
from lossbench.data.sources import RawSplits, load_source
from lossbench.data.views import View, identity, image_view, train_view
from lossbench.engine.train import Sampler, TrainConfig, Trainer, batches, seed_everything
from lossbench.errors import UserError, require
from lossbench.families.base import FAMILIES, RunContext, RunOutput, check_common, config_table
from lossbench.families.fewshot_scoring import (
    Scoring,
    Snapshots,
    build_scoring,
    scored_metrics,
    scoring_info,
)
from lossbench.fewshot_inference import method_label
from lossbench.losses import LOSSES, Loss
from lossbench.losses.fewshot import prototype_logits, split_episode
from lossbench.models import MODELS
from lossbench.registry import Entry

# --------------------------------------------------------------------------------------------
# Task-spec tables.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FewshotConfig:
    """``[fewshot]``: how the embedding is trained (the same for every loss of a task)."""

    mode: Literal["episodic", "standard"] = "episodic"
    embedding_dim: int = 64
    train_ways: int = 5
    train_shots: int = 5
    train_queries: int = 15
    episodes_per_epoch: int = 0
    temperature: float = 1.0
    samples_per_class: int = 4


@dataclass(frozen=True)
class EvalConfig:
    """``[eval]``: the episode settings and counts, and the fixed episode seed."""

    ways: tuple[int, ...] = (5,)
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    test_episodes: int = 600
    val_episodes: int = 300
    episode_seed: int = 0
    norm: Literal["none", "l2"] = "none"
    inference: tuple[str, ...] = ("prototype",)
    query_dirichlet: tuple[float, ...] = ()

    @property
    def settings(self) -> list[tuple[int, int]]:
        return [(w, s) for w in self.ways for s in self.shots]


def _choice(name: str, value: object, accepted: tuple[str, ...]) -> None:
    require(value in accepted, f"{name} got {value!r}; accepted: {', '.join(accepted)}")


def read_config(spec: Mapping[str, Any]) -> tuple[FewshotConfig, SplitConfig, EvalConfig]:
    """The three few-shot tables of a resolved spec, range-checked."""
    fs = config_table(FewshotConfig, spec, "fewshot")
    split = config_table(SplitConfig, spec, "split")
    ev = config_table(EvalConfig, spec, "eval")
    _choice("fewshot.mode", fs.mode, ("episodic", "standard"))
    _choice("eval.norm", ev.norm, ("none", "l2"))
    require(fs.embedding_dim >= 1, f"fewshot.embedding_dim must be >= 1, got {fs.embedding_dim}")
    require(fs.train_ways >= 2 and fs.train_shots >= 1 and fs.train_queries >= 1,
            f"fewshot.train_ways >= 2, train_shots >= 1, train_queries >= 1; got "
            f"{fs.train_ways}, {fs.train_shots}, {fs.train_queries}")
    require(fs.episodes_per_epoch >= 0, "fewshot.episodes_per_epoch must be >= 0 (0: one pass)")
    require(fs.temperature > 0, f"fewshot.temperature must be > 0, got {fs.temperature}")
    require(fs.samples_per_class >= 2, "fewshot.samples_per_class must be >= 2")
    require(bool(ev.ways) and min(ev.ways) >= 2, f"eval.ways must be >= 2, got {list(ev.ways)}")
    require(bool(ev.shots) and min(ev.shots) >= 1, f"eval.shots must be >= 1, got "
            f"{list(ev.shots)}")
    require(ev.queries >= 1, f"eval.queries must be >= 1, got {ev.queries}")
    require(ev.test_episodes >= 2 and ev.val_episodes >= 2,
            "eval.test_episodes and eval.val_episodes must be >= 2")
    listed = [method_label(m) for m in ev.inference]
    require(len(set(listed)) == len(listed),
            f"eval.inference lists a method twice: {list(ev.inference)}")
    require(all(a > 0 for a in ev.query_dirichlet), f"eval.query_dirichlet concentrations must "
            f"be > 0, got {list(ev.query_dirichlet)}")
    require(len(set(ev.query_dirichlet)) == len(ev.query_dirichlet),
            f"eval.query_dirichlet repeats a concentration: {list(ev.query_dirichlet)}")
    CLASS_SPLITS.get(split.scheme)
    require(split.scheme == "explicit" or not (split.base or split.val or split.novel),
            f"split.base / split.val / split.novel apply to split.scheme = \"explicit\" only "
            f"(got \"{split.scheme}\")")
    if split.scheme == "explicit":
        require(len(split.base) >= fs.train_ways, f"fewshot.train_ways={fs.train_ways} exceeds "
                f"the {len(split.base)} base classes in split.base")
        require(max(ev.ways) <= len(split.novel), f"eval.ways={max(ev.ways)} exceeds the "
                f"{len(split.novel)} novel classes in split.novel")
    return fs, split, ev


def check_spec(spec: Mapping[str, Any]) -> None:
    """Validate a resolved spec before any data is loaded."""
    check_common(spec)
    read_config(spec)


# --------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------


@dataclass
class FewshotData:
    """Device tensors of the three class groups; base labels are 0..C-1, others original ids."""

    x_base: torch.Tensor
    y_base: torch.Tensor
    x_val: torch.Tensor
    y_val: np.ndarray
    x_novel: torch.Tensor
    y_novel: np.ndarray
    view: View
    image: bool
    info: dict[str, Any]

    @property
    def num_base(self) -> int:
        return int(self.y_base.max()) + 1


def pooled(raw: RawSplits) -> tuple[np.ndarray, np.ndarray]:
    """All examples of a source (train and test pooled): few-shot re-splits them by class."""
    if len(raw.x_test) == 0:  # few-shot sources hold everything in x_train: no copy
        return raw.x_train, raw.y_train
    return np.concatenate([raw.x_train, raw.x_test]), np.concatenate([raw.y_train, raw.y_test])


def class_split(raw: RawSplits, split: SplitConfig, source: str) -> ClassSplit:
    """The split rule's class groups, checked against the classes the data holds."""
    groups = CLASS_SPLITS.get(split.scheme).build({}, raw=raw, split=split)
    groups.check(np.unique(np.concatenate([raw.y_train, raw.y_test])), source)
    return groups


def prepare_data(spec: Mapping[str, Any], split: SplitConfig, device: torch.device
                 ) -> FewshotData:
    """Source -> pooled images -> base / validation / novel classes -> device."""
    source = str(spec["data"].get("source", ""))
    raw = load_source(spec["data"])
    groups = class_split(raw, split, source)
    x, y = pooled(raw)
    masks = [np.isin(y, g) for g in (groups.base, groups.val, groups.novel)]
    (xb, yb), (xv, yv), (xn, yn) = ((x[m], y[m]) for m in masks)
    image = raw.kind == "image"
    dtype = torch.uint8 if image else torch.float32

    def put(part: np.ndarray) -> torch.Tensor:
        return torch.tensor(part, dtype=dtype).to(device)

    y_base = torch.as_tensor(np.searchsorted(groups.base, yb), dtype=torch.int64).to(device)
    info = {
        "origin": raw.meta.get("origin", source), "scheme": split.scheme,
        "base_classes": len(groups.base), "val_classes": len(groups.val),
        "novel_classes": len(groups.novel), "num_base": len(yb), "num_val": len(yv),
        "num_novel": len(yn),
    }
    view = image_view(xb, device) if image else identity
    return FewshotData(put(xb), y_base, put(xv), yv, put(xn), yn, view, image, info)


# --------------------------------------------------------------------------------------------
# Losses: how each kind of loss trains in each mode.
# --------------------------------------------------------------------------------------------


class PrototypeLogitsLoss(Loss):
    """A logits loss on the prototype logits of an episode's queries (Snell et al., Eq. 2).

    The batch is an episode (support rows first); the inner loss sees the queries' logits
    ``-|q - c_k|^2 / temperature`` [Q, W] with episode labels 0..W-1, and the queries' dataset
    ids as ``index`` (for per-example state, e.g. ALDR-KL). Returns one loss per query.
    """

    consumes = "fewshot"

    def __init__(self, inner: Loss, shots: int, temperature: float) -> None:
        super().__init__()
        self.inner, self.shots, self.temperature = inner, shots, temperature

    def forward(self, output: torch.Tensor, target: torch.Tensor, *,
                index: torch.Tensor | None = None) -> torch.Tensor:
        ep = split_episode(output, target, self.shots)
        logits = prototype_logits(ep.queries, ep.prototypes, self.temperature)
        query_index = None if index is None else index[len(ep.support):]
        return self.inner(logits, ep.query_labels, index=query_index)

    def on_epoch_end(self, epoch: int) -> None:
        self.inner.on_epoch_end(epoch)


class LinearHeadLoss(Loss):
    """A logits loss on a linear classifier over the embedding (standard training).

    The head belongs to this module, so the Trainer optimises it with the model; evaluation uses
    the embeddings, not the head.
    """

    consumes = "embeddings"

    def __init__(self, inner: Loss, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.inner = inner
        self.head = nn.Linear(embedding_dim, num_classes)

    def forward(self, output: torch.Tensor, target: torch.Tensor, *,
                index: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(self.head(output), target, index=index)

    def on_epoch_end(self, epoch: int) -> None:
        self.inner.on_epoch_end(epoch)


@dataclass(frozen=True)
class Setup:
    """What loss factories may need: the few-shot table and the base-set sizes."""

    fs: FewshotConfig
    num_base: int
    num_train: int


def _prototype_logits_loss(entry: Entry[Loss], params: Mapping[str, Any], s: Setup) -> Loss:
    inner = entry.build(params, num_classes=s.fs.train_ways, num_train=s.num_train)
    return PrototypeLogitsLoss(inner, s.fs.train_shots, s.fs.temperature)


def _embedding_loss(entry: Entry[Loss], params: Mapping[str, Any], s: Setup) -> Loss:
    return entry.build(params, num_classes=s.num_base, embedding_dim=s.fs.embedding_dim,
                       num_train=s.num_train)


def _fewshot_loss(entry: Entry[Loss], params: Mapping[str, Any], s: Setup) -> Loss:
    return entry.build(params, shots=s.fs.train_shots, temperature=s.fs.temperature)


def _linear_head_loss(entry: Entry[Loss], params: Mapping[str, Any], s: Setup) -> Loss:
    inner = entry.build(params, num_classes=s.num_base, num_train=s.num_train)
    return LinearHeadLoss(inner, s.fs.embedding_dim, s.num_base)


ADAPTERS: dict[tuple[str, str], Callable[[Entry[Loss], Mapping[str, Any], Setup], Loss]] = {
    ("episodic", "logits"): _prototype_logits_loss,
    ("episodic", "embeddings"): _embedding_loss,
    ("episodic", "fewshot"): _fewshot_loss,
    ("standard", "logits"): _linear_head_loss,
    ("standard", "embeddings"): _embedding_loss,
}
"""(fewshot.mode, what the loss consumes) -> the loss as the Trainer calls it."""


def check_loss(name: str, mode: str) -> str:
    """The loss's kind, if ``mode`` can train it; else a UserError."""
    kind = str(LOSSES.get(name).tags["consumes"])
    if (mode, kind) not in ADAPTERS:
        raise UserError(f"loss '{name}' consumes {kind}, which needs fewshot.mode = \"episodic\" "
                        f"(got \"{mode}\")")
    return kind


def train_sampler(fs: FewshotConfig, kind: str, cfg: TrainConfig, num_train: int
                  ) -> tuple[Sampler, int]:
    """The Trainer's batches for this mode and kind, and the number of steps per epoch."""
    if fs.mode == "episodic":
        size = fs.train_ways * (fs.train_shots + fs.train_queries)
        episodes = fs.episodes_per_epoch or max(1, num_train // size)
        return episode_sampler(fs.train_ways, fs.train_shots, fs.train_queries, episodes), episodes
    steps = max(1, num_train // cfg.batch_size)
    if kind == "embeddings":
        return pk_sampler(fs.samples_per_class), steps
    return batches, steps


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------


def embed(emb: torch.Tensor, norm: str) -> torch.Tensor:
    """Embeddings as scored: L2-normalised along the last axis if ``norm == "l2"``."""
    return F.normalize(emb, dim=-1) if norm == "l2" else emb


def tag(ways: int, shots: int) -> str:
    """Metric suffix of a setting, e.g. ``5w1s``."""
    return f"{ways}w{shots}s"


def check_spec_loss(spec: Mapping[str, Any], loss: str) -> None:
    """Before the grid: can this spec's training mode train this loss?"""
    check_loss(loss, read_config(spec)[0].mode)


def eval_episodes(data: FewshotData, ev: EvalConfig
                  ) -> tuple[dict[str, EvalEpisodes], dict[str, EvalEpisodes]]:
    """The fixed validation and test episodes of every setting (``eval.episode_seed``: the same
    for every run seed and loss)."""
    n_val = len(np.unique(data.y_val))
    val_eps: dict[str, EvalEpisodes] = {}
    test_eps: dict[str, EvalEpisodes] = {}
    for w, s in ev.settings:
        val_eps[tag(w, s)] = draw_episodes(data.y_val, min(w, n_val), s, ev.queries,
                                           ev.val_episodes, ev.episode_seed, "val")
        test_eps[tag(w, s)] = draw_episodes(data.y_novel, w, s, ev.queries, ev.test_episodes,
                                            ev.episode_seed, "test")
    return val_eps, test_eps


def extra_scoring(data: FewshotData, ev: EvalConfig) -> Scoring:
    """The inference methods and imbalanced test episodes scored after training."""
    settings = {tag(w, s): (w, s) for w, s in ev.settings}
    return build_scoring(ev.inference, ev.query_dirichlet, data.y_novel, settings, ev.queries,
                         ev.test_episodes, ev.episode_seed)


def build_model(spec: Mapping[str, Any], data: FewshotData, fs: FewshotConfig) -> nn.Module:
    """The task's model with an ``embedding_dim`` output."""
    model_spec = {k: v for k, v in spec["model"].items() if k != "name"}
    return MODELS.get(spec["model"]["name"]).build(
        model_spec, in_shape=tuple(data.x_base.shape[1:]), out_dim=fs.embedding_dim)


def build_loss(name: str, params: Mapping[str, Any], fs: FewshotConfig, kind: str,
               data: FewshotData) -> Loss:
    """The loss as this mode trains a loss of this kind (``ADAPTERS``)."""
    setup = Setup(fs, data.num_base, len(data.x_base))
    return ADAPTERS[(fs.mode, kind)](LOSSES.get(name), params, setup)


def add_epoch(curves: dict[str, list[float]], train_loss: float, emb_val: torch.Tensor,
              emb_novel: torch.Tensor, val_eps: Mapping[str, EvalEpisodes],
              test_eps: Mapping[str, EvalEpisodes]) -> None:
    """Append one epoch: training loss, and per setting the validation accuracy and the test
    accuracy with its 95% CI, by the nearest-prototype rule on the given embeddings."""
    curves.setdefault("train_loss", []).append(train_loss)
    for key in test_eps:
        val_mean, _ = mean_ci95(episode_accuracy(emb_val, val_eps[key]))
        test_mean, test_ci = mean_ci95(episode_accuracy(emb_novel, test_eps[key]))
        for name, value in ((f"val_acc_{key}", val_mean), (f"test_acc_{key}", test_mean),
                            (f"test_ci95_{key}", test_ci)):
            curves.setdefault(name, []).append(value)


def final_metrics(curves: Mapping[str, list[float]], settings: Iterable[str]
                  ) -> dict[str, float]:
    """Per setting: last-epoch and best-validation test accuracy (± CI) and the selection."""
    metrics = {"train_loss": curves["train_loss"][-1]}
    for key in settings:
        best = int(np.argmax(curves[f"val_acc_{key}"]))
        for m in ("test_acc", "test_ci95"):
            metrics[f"{m}_{key}"] = curves[f"{m}_{key}"][-1]
            metrics[f"{m}_{key}@best_val"] = curves[f"{m}_{key}"][best]
        metrics[f"val_acc_{key}"] = curves[f"val_acc_{key}"][-1]
        metrics[f"best_val_acc_{key}"] = curves[f"val_acc_{key}"][best]
        metrics[f"best_epoch_{key}"] = float(best + 1)
    return metrics


def run_info(data: FewshotData, fs: FewshotConfig, kind: str, steps: int,
             val_eps: Mapping[str, EvalEpisodes], test_eps: Mapping[str, EvalEpisodes]
             ) -> dict[str, Any]:
    """The record's facts: data sizes, mode, loss kind, and the episodes' digests."""
    return data.info | {
        "mode": fs.mode, "loss_kind": kind, "steps_per_epoch": steps,
        "val_ways": {k: e.ways for k, e in val_eps.items()},
        "test_episodes": {k: e.digest for k, e in test_eps.items()},
        "val_episodes": {k: e.digest for k, e in val_eps.items()},
    }


def check_base_ways(fs: FewshotConfig, data: FewshotData) -> None:
    require(fs.train_ways <= data.num_base, f"fewshot.train_ways={fs.train_ways} exceeds the "
            f"{data.num_base} base classes")


@FAMILIES.register(
    "fewshot",
    accepts=("logits", "embeddings", "fewshot"),
    summary=("test_acc_5w1s", "test_acc_5w5s", "test_acc_3w1s", "test_acc_3w5s"),
    check=check_spec,
    check_loss=check_spec_loss,
    supplies=("num_classes", "num_train", "embedding_dim", "shots", "temperature"),
)
def run_fewshot(ctx: RunContext) -> RunOutput:
    """Train on base classes; N-way K-shot accuracy ± 95% CI on novel classes, last and best-val."""
    spec = ctx.spec
    fs, split, ev = read_config(spec)
    cfg = TrainConfig.from_spec(spec["train"])
    kind = check_loss(ctx.loss, fs.mode)
    data = prepare_data(spec, split, ctx.device)
    check_base_ways(fs, data)
    val_eps, test_eps = eval_episodes(data, ev)
    scoring = extra_scoring(data, ev)
    snaps = Snapshots()

    seed_everything(ctx.seed)
    model = build_model(spec, data, fs).to(ctx.device)
    loss = build_loss(ctx.loss, ctx.loss_params, fs, kind, data).to(ctx.device)
    sampler, steps = train_sampler(fs, kind, cfg, len(data.x_base))
    trainer = Trainer(model, loss, cfg, ctx.device, steps,
                      augment=train_view(data.view, data.image, cfg.augment), sampler=sampler)
    generator = torch.Generator().manual_seed(ctx.seed)

    curves: dict[str, list[float]] = {}
    for epoch in range(cfg.epochs):
        train_loss = trainer.epoch(data.x_base, data.y_base, generator, epoch)
        emb_val = embed(trainer.predict(data.x_val, view=data.view), ev.norm)
        emb_novel = embed(trainer.predict(data.x_novel, view=data.view), ev.norm)
        add_epoch(curves, train_loss, emb_val, emb_novel, val_eps, test_eps)
        if scoring.active:
            snaps.update(curves, emb_novel, list(test_eps))
        first = next(iter(test_eps))
        ctx.report(epoch + 1, cfg.epochs, {"loss": curves["train_loss"][-1],
                                           f"val_{first}": curves[f"val_acc_{first}"][-1],
                                           f"test_{first}": curves[f"test_acc_{first}"][-1]})
    metrics = final_metrics(curves, test_eps)
    if scoring.active:
        metrics |= scored_metrics(scoring, snaps, test_eps)
    return RunOutput(metrics, curves,
                     run_info(data, fs, kind, steps, val_eps, test_eps) | scoring_info(scoring))
