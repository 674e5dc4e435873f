"""Self-supervised retrieval (``retrieval.mode = "self-supervised"``): no label in training.

Training (SimCLR: Chen, Kornblith, Norouzi, Hinton, ICML 2020): two augmented views of each
training image are its positive pair, every other image's views its negatives. The Trainer's
targets are the example ids (``arange``), so labels cannot reach the loss; each batch of B ids
becomes 2B rows (view 1 of the batch, then view 2; ``two_views``) and the loss sees the ids
twice as targets and as ``index`` (``SelfSupervisedLoss``): each row's only positive is its other
view. Views: random resized crop (area in ``[ssl.crop_scale, 1]``), flip, colour distortion
(``lossbench.data.augment``), drawn from the run's generator. A projection head owned by the
loss wrapper (SimCLR's ``g``: Linear-ReLU-Linear; ``ssl.head_hidden = 0``: none) maps the
representation -- the model's ``embedding_dim`` output, which is what is evaluated -- to the
space the contrastive loss sees. Losses: those registered with ``self_supervised=True``
(``infonce``, which is SimCLR's NT-Xent on these rows, ``sogclr``, ``isogclr``); any other is
refused before the grid starts.

Data: the source's training split (images of ``split.train_classes`` when given) -> a
stratified validation part (``split.val_fraction``) -> ``[imbalance]`` on both parts (a
long-tailed training set) -> limits. Labels serve the split and the evaluation only.

Evaluation, at the last epoch (no model selection; the SSL protocol) on the frozen
representation (``lossbench.metrics_frozen``): kNN accuracy and linear-probe accuracy, fitted
on the labelled training part and scored on the source's test images of the training classes
(the probe's L2 strength is chosen on the validation part); retrieval metrics (Recall@K,
MAP@R, AUC) among the test images of the held-out classes when ``split.train_classes`` leaves
classes out, else among all test images (classes seen in training, never labelled).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lossbench.data.augment import colour_jitter, resized_crop_flip
from lossbench.data.imbalance import apply_imbalance, check_imbalance
from lossbench.data.sources import load_source, stratified_split
from lossbench.data.views import TrainView, View, image_view
from lossbench.engine.packed import PackedTrainer, build_members, train_packed
from lossbench.engine.train import Diverged, TrainConfig, Trainer, batches, seed_everything
from lossbench.errors import UserError, require
from lossbench.families.base import RunContext, RunOutput, config_table
from lossbench.families.classification import subset
from lossbench.families.retrieval import (
    MODES,
    EvalConfig,
    Mode,
    RetrievalConfig,
    SplitConfig,
    build_model,
    read_config,
)
from lossbench.families.retrieval_packed import PACKED_MODES
from lossbench.losses import LOSSES, Loss
from lossbench.metrics_frozen import knn_accuracy, linear_probe
from lossbench.metrics_retrieval import retrieval_metrics


@dataclass(frozen=True)
class SslConfig:
    """``[ssl]``: the two views and the projection head, the same for every loss."""

    crop_scale: float = 0.2
    """Smallest crop area (fraction of the image); SupContrast's and the iSogCLR code's CIFAR
    value (SimCLR's ImageNet value is 0.08)."""
    jitter: float = 0.4
    """Brightness / contrast / saturation strength (SimCLR's ``s = 0.5`` gives 0.4)."""
    jitter_p: float = 0.8
    grey_p: float = 0.2
    head_hidden: int = 512
    """Hidden width of the projection head; 0: no head (the loss sees the representation)."""
    head_dim: int = 128


def read_ssl(spec: Mapping[str, Any]) -> SslConfig:
    """The ``[ssl]`` table, range-checked."""
    ssl = config_table(SslConfig, spec, "ssl")
    require(0.0 < ssl.crop_scale <= 1.0, f"ssl.crop_scale must be in (0, 1], got {ssl.crop_scale}")
    require(0.0 <= ssl.jitter < 1.0, f"ssl.jitter must be in [0, 1), got {ssl.jitter}")
    for key in ("jitter_p", "grey_p"):
        value = getattr(ssl, key)
        require(0.0 <= value <= 1.0, f"ssl.{key} must be in [0, 1], got {value}")
    require(ssl.head_hidden >= 0, f"ssl.head_hidden must be >= 0, got {ssl.head_hidden}")
    require(ssl.head_dim >= 1, f"ssl.head_dim must be >= 1, got {ssl.head_dim}")
    return ssl


def ssl_losses() -> list[str]:
    """The losses this mode trains: those registered with ``self_supervised=True``."""
    return [e.name for e in LOSSES if e.tags.get("self_supervised")]


def check_loss(name: str) -> None:
    if not LOSSES.get(name).tags.get("self_supervised"):
        raise UserError(f"loss '{name}' does not train in retrieval.mode = \"self-supervised\" "
                        f"(two views per image, no labels); accepted: {', '.join(ssl_losses())}")


def check_spec(spec: Mapping[str, Any]) -> None:
    """The mode's own checks (the common ones ran before)."""
    TrainConfig.from_spec(spec["train"])
    read_ssl(spec)
    _, split, _ = read_config(spec)
    if "imbalance" in spec:
        check_imbalance(spec["imbalance"])
        require(not split.train_classes, "[imbalance] with split.train_classes is not "
                "supported; use one or the other")


# --------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------


@dataclass
class SslData:
    """Device tensors. ``y_*`` are labels for evaluation; training sees ``ids`` only."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_retrieval: torch.Tensor
    y_retrieval: torch.Tensor
    view: View
    info: dict[str, Any]

    @property
    def ids(self) -> torch.Tensor:
        """The Trainer's targets: example ids, so no label can reach the loss."""
        return torch.arange(len(self.x_train), device=self.x_train.device)

    def eval_sets(self) -> list[torch.Tensor]:
        """The sets to embed at the end; the retrieval set only when it is not the test set."""
        sets = [self.x_train, self.x_val, self.x_test]
        return sets if self.x_retrieval is self.x_test else [*sets, self.x_retrieval]


def prepare_data(spec: Mapping[str, Any], split: SplitConfig, device: torch.device) -> SslData:
    """Source -> training classes -> validation part -> imbalance -> limits -> device."""
    source = str(spec["data"].get("source", ""))
    raw = load_source(spec["data"])
    require(raw.kind == "image", f"retrieval.mode = \"self-supervised\" needs an image source; "
            f"'{source}' is {raw.kind}")
    require(not raw.meta.get("class_disjoint"), f"source '{source}' splits train and test by "
            "class; the self-supervised mode needs test images of the training classes (for "
            "kNN and the linear probe)")
    present = np.unique(np.concatenate([raw.y_train, raw.y_test]))
    classes = np.array(split.train_classes) if split.train_classes else present
    absent = sorted(set(classes.tolist()) - set(present.tolist()))
    require(not absent, f"split.train_classes lists {absent}, not classes of '{source}'")
    pool = np.flatnonzero(np.isin(raw.y_train, classes))
    train_rel, val_rel = stratified_split(raw.y_train[pool], split.val_fraction,
                                          split.split_seed)
    train_idx, val_idx = pool[train_rel], pool[val_rel]
    info: dict[str, Any] = {}
    if "imbalance" in spec:  # its own fixed generator: the same subset for every run seed
        train_idx, val_idx, imb = apply_imbalance(raw.y_train, train_idx, val_idx,
                                                  raw.num_classes, spec["imbalance"])
        info["imbalance"] = asdict(imb)
    train_idx = subset(train_idx, split.train_limit, split.split_seed)
    val_idx = subset(val_idx, split.val_limit, split.split_seed)
    seen = np.isin(raw.y_test, classes)
    test_idx = subset(np.flatnonzero(seen), split.test_limit, split.split_seed)
    held_idx = subset(np.flatnonzero(~seen), split.test_limit, split.split_seed)

    def put(x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.uint8).to(device)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.tensor(y, dtype=torch.int64).to(device)

    x_test, y_test = put(raw.x_test[test_idx]), labels(raw.y_test[test_idx])
    x_ret, y_ret = ((put(raw.x_test[held_idx]), labels(raw.y_test[held_idx]))
                    if len(held_idx) else (x_test, y_test))
    info |= {
        "mode": "self-supervised", "labels_used_in_training": False,
        "selection": "last epoch",
        "num_train": len(train_idx), "num_val": len(val_idx), "num_test": len(test_idx),
        "train_classes": len(classes),
        "retrieval_set": "held-out classes" if len(held_idx) else "test images of the "
                         "training classes (unlabelled in training)",
        "num_retrieval": len(y_ret), "origin": raw.meta.get("origin", source),
    }
    return SslData(put(raw.x_train[train_idx]), labels(raw.y_train[train_idx]),
                   put(raw.x_train[val_idx]), labels(raw.y_train[val_idx]), x_test, y_test,
                   x_ret, y_ret, image_view(raw.x_train[train_idx], device), info)


# --------------------------------------------------------------------------------------------
# Views and the loss wrapper.
# --------------------------------------------------------------------------------------------


def augment(x: torch.Tensor, generator: torch.Generator, ssl: SslConfig) -> torch.Tensor:
    """One random view of float images in [0, 255]."""
    x = resized_crop_flip(x, generator, scale=(ssl.crop_scale, 1.0))
    return colour_jitter(x, generator, ssl.jitter, ssl.jitter_p, ssl.grey_p)


def two_views(view: View, ssl: SslConfig) -> TrainView:
    """Stored uint8 rows [B, ...] -> model inputs [2B, ...]: view 1 of every row, then view 2,
    each drawn from the run's generator and standardised by ``view``."""

    def inputs(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = xb.float()
        return torch.cat([view(augment(x, generator, ssl)), view(augment(x, generator, ssl))])

    return inputs


class SelfSupervisedLoss(Loss):
    """A contrastive loss on two views: ``output`` [2B, D] holds view 1 of the batch's B
    examples then view 2; ``target`` holds their B ids (the Trainer's targets are ids). The
    inner loss gets the projected rows with the ids twice as ``target`` and as ``index``, so
    each row's positive is its other view and per-example state is keyed by the image."""

    consumes = "embeddings"

    def __init__(self, inner: Loss, head: nn.Module | None) -> None:
        super().__init__()
        self.inner, self.head = inner, head

    def forward(self, output: torch.Tensor, target: torch.Tensor, *,
                index: torch.Tensor | None = None) -> torch.Tensor:
        if len(output) != 2 * len(target):
            raise ValueError(f"expected two views of {len(target)} examples, got "
                             f"{len(output)} rows")
        rows = target.repeat(2)
        z = output if self.head is None else self.head(output)
        return self.inner(z, rows, index=None if index is None else index.repeat(2))

    def on_epoch_end(self, epoch: int) -> None:
        self.inner.on_epoch_end(epoch)


def projection_head(ret: RetrievalConfig, ssl: SslConfig) -> nn.Module | None:
    """SimCLR's ``g``: Linear-ReLU-Linear from the representation to ``ssl.head_dim``."""
    if ssl.head_hidden == 0:
        return None
    return nn.Sequential(nn.Linear(ret.embedding_dim, ssl.head_hidden), nn.ReLU(),
                         nn.Linear(ssl.head_hidden, ssl.head_dim))


def build_loss(name: str, params: Mapping[str, Any], ret: RetrievalConfig, ssl: SslConfig,
               num_train: int) -> SelfSupervisedLoss:
    """The inner loss sees instance labels: ``num_classes`` is the number of images."""
    dim = ssl.head_dim if ssl.head_hidden else ret.embedding_dim
    inner = LOSSES.get(name).build(params, num_classes=num_train, embedding_dim=dim,
                                   num_train=num_train)
    return SelfSupervisedLoss(inner, projection_head(ret, ssl))


# --------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------


class HasExampleState(Protocol):
    def example_state(self) -> dict[str, torch.Tensor]: ...


def state_by_class(loss: SelfSupervisedLoss, y_train: torch.Tensor) -> dict[str, Any]:
    """Per-class summaries (count, mean, quartiles) of a loss's per-example state (iSogCLR's
    tau_i, SogCLR's u_i), for ``benchmarks/isogclr_tau_frequency.py``; {} for a stateless
    loss. Labels are read here, after training, for the report only."""
    getter = getattr(loss.inner, "example_state", None)
    if getter is None:
        return {}
    y = y_train.cpu()
    classes = torch.unique(y)
    out: dict[str, Any] = {"class": classes.tolist(),
                           "count": [int((y == c).sum()) for c in classes]}
    for name, values in getter().items():
        values = values.detach().float().cpu()
        q = torch.stack([torch.quantile(values[y == c], torch.tensor([0.25, 0.5, 0.75]))
                         for c in classes])
        out[name] = {"mean": [float(values[y == c].mean()) for c in classes],
                     "q25": q[:, 0].tolist(), "median": q[:, 1].tolist(),
                     "q75": q[:, 2].tolist()}
    return out


def evaluate(data: SslData, embedded: Sequence[torch.Tensor], ev: EvalConfig
             ) -> dict[str, float]:
    """Final metrics from the embeddings of ``data.eval_sets()``."""
    train, val, test = embedded[:3]
    ret = embedded[3] if len(embedded) > 3 else test
    if not all(bool(torch.isfinite(e).all()) for e in embedded):
        raise Diverged("non-finite embeddings at the last epoch")
    metrics = {f"test_{k}": v for k, v in retrieval_metrics(
        ret, data.y_retrieval, ev.recall_at, ev.chunk_elements).items()}
    knn = functools.partial(knn_accuracy, k=ev.knn_k, temperature=ev.knn_temperature)
    probe = linear_probe(train, data.y_train, val, data.y_val, test, data.y_test,
                         ev.probe_l2, ev.probe_iters)
    return metrics | {
        "test_knn_acc": knn(train, data.y_train, test, data.y_test),
        "val_knn_acc": knn(train, data.y_train, val, data.y_val),
        "test_probe_acc": probe.test_acc, "val_probe_acc": probe.val_acc,
        "probe_l2": probe.l2,
    }


def finish(data: SslData, embedded: Sequence[torch.Tensor], ev: EvalConfig,
           losses: list[float], loss: SelfSupervisedLoss, packed: int = 0) -> RunOutput:
    """The run's record: final metrics, the training-loss curve, the data facts."""
    metrics = evaluate(data, embedded, ev) | {"train_loss": losses[-1]}
    info = dict(data.info) | {"example_state_by_class": state_by_class(loss, data.y_train)}
    return RunOutput(metrics, {"train_loss": losses}, info | ({"packed": packed} if packed else {}))


# --------------------------------------------------------------------------------------------
# Runs.
# --------------------------------------------------------------------------------------------


def setup(spec: Mapping[str, Any], device: torch.device
          ) -> tuple[RetrievalConfig, SslConfig, EvalConfig, TrainConfig, SslData]:
    ret, split, ev = read_config(spec)
    return ret, read_ssl(spec), ev, TrainConfig.from_spec(spec["train"]), prepare_data(
        spec, split, device)


def run_self_supervised(ctx: RunContext) -> RunOutput:
    """Train without labels on two views per image; score the frozen representation."""
    spec = ctx.spec
    ret, ssl, ev, cfg, data = setup(spec, ctx.device)
    seed_everything(ctx.seed)
    model = build_model(spec, tuple(data.x_train.shape[1:]), ret).to(ctx.device)
    loss = build_loss(ctx.loss, ctx.loss_params, ret, ssl, len(data.x_train)).to(ctx.device)
    trainer = Trainer(model, loss, cfg, ctx.device, max(1, len(data.x_train) // cfg.batch_size),
                      augment=two_views(data.view, ssl), sampler=batches)
    generator = torch.Generator().manual_seed(ctx.seed)
    losses: list[float] = []
    for epoch in range(cfg.epochs):
        losses.append(trainer.epoch(data.x_train, data.ids, generator, epoch))
        ctx.report(epoch + 1, cfg.epochs, {"loss": losses[-1]})
    embedded = [trainer.predict(x, view=data.view) for x in data.eval_sets()]
    return finish(data, embedded, ev, losses, loss)


def run_self_supervised_packed(ctxs: Sequence[RunContext]) -> list[RunOutput | Diverged]:
    """Every context's run in one packed computation, the same records as one by one."""
    spec, device = ctxs[0].spec, ctxs[0].device
    ret, ssl, ev, cfg, data = setup(spec, device)
    in_shape = tuple(data.x_train.shape[1:])
    models, losses = build_members(
        ctxs, lambda ctx: (build_model(spec, in_shape, ret),
                           build_loss(ctx.loss, ctx.loss_params, ret, ssl, len(data.x_train))),
        device)
    trainer = PackedTrainer(models, losses, cfg, device,
                            max(1, len(data.x_train) // cfg.batch_size), sampler=batches,
                            augment=two_views(data.view, ssl))
    curves: list[list[float]] = [[] for _ in ctxs]
    done: list[RunOutput | None] = [None] * len(ctxs)
    epochs_seen = [0]

    def embed_at_end() -> list[torch.Tensor] | None:
        epochs_seen[0] += 1
        if epochs_seen[0] < cfg.epochs:
            return None
        return [trainer.predict(x, view=data.view) for x in data.eval_sets()]

    def record(m: int, epoch: int, train_loss: float, embedded: list[torch.Tensor] | None
               ) -> Diverged | None:
        curves[m].append(train_loss)
        if embedded is None:
            return None
        try:
            done[m] = finish(data, [e[m] for e in embedded], ev, curves[m], losses[m],
                             packed=len(ctxs))
        except Diverged as err:
            return err
        return None

    outcomes = train_packed(trainer, cfg.epochs, data.x_train, [data.ids] * len(ctxs),
                            [ctx.seed for ctx in ctxs], embed_at_end, record)
    out: list[RunOutput | Diverged] = []
    for outcome, result in zip(outcomes, done, strict=True):
        out.append(outcome if outcome is not None else result if result is not None
                   else Diverged("no evaluation"))
    return out


MODES["self-supervised"] = Mode(run=run_self_supervised, check=check_spec,
                                check_loss=check_loss)
PACKED_MODES["self-supervised"] = run_self_supervised_packed
