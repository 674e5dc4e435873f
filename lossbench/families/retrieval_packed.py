"""Packed retrieval: runs of one task and budget (seeds, losses) trained together by
``PackedTrainer``, producing the same records as running them one by one.

Every member sees the same data (the class and validation splits do not depend on the seed) and
the same architecture (an ``embedding_dim`` output; a logits loss's cosine head and a proxy
loss's proxies are parameters of its loss, which each member owns). Members differ in
initialisation, P x m batch order, augmentation draws and loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lossbench.data.samplers import pk_sampler
from lossbench.data.views import train_view
from lossbench.engine.packed import (
    PACKED_RUNNERS,
    PackedTrainer,
    build_members,
    train_packed,
)
from lossbench.engine.train import Diverged, TrainConfig
from lossbench.families.base import RunContext, RunOutput
from lossbench.families.retrieval import (
    add_epoch,
    build_loss,
    build_model,
    final_metrics,
    prepare_data,
    read_config,
)
from lossbench.metrics_retrieval import retrieval_metrics

PackedRunner = Callable[[Sequence[RunContext]], list[RunOutput | Diverged]]

PACKED_MODES: dict[str, PackedRunner] = {}
"""``retrieval.mode`` -> its packed runner (``self-supervised``: ``retrieval_ssl``)."""


def run_retrieval_packed(ctxs: Sequence[RunContext]) -> list[RunOutput | Diverged]:
    """The packed runner of the group's ``retrieval.mode``."""
    return PACKED_MODES[read_config(ctxs[0].spec)[0].mode](ctxs)


def run_supervised_packed(ctxs: Sequence[RunContext]) -> list[RunOutput | Diverged]:
    """Train every context's run in one packed computation; one outcome per context."""
    spec, device = ctxs[0].spec, ctxs[0].device
    ret, split, ev = read_config(spec)
    cfg = TrainConfig.from_spec(spec["train"])
    data = prepare_data(spec, split, device)
    models, losses = build_members(
        ctxs, lambda ctx: (build_model(spec, tuple(data.x_train.shape[1:]), ret),
                           build_loss(ctx.loss, ctx.loss_params, ret, data.num_classes,
                                      len(data.x_train))),
        device)
    trainer = PackedTrainer(models, losses, cfg, device,
                            max(1, len(data.x_train) // cfg.batch_size),
                            sampler=pk_sampler(ret.samples_per_class),
                            augment=train_view(data.view, data.image, cfg.augment))
    curves: list[dict[str, list[float]]] = [{} for _ in ctxs]

    def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
        return (trainer.predict(data.x_val, view=data.view),
                trainer.predict(data.x_test, view=data.view))

    def record(m: int, epoch: int, train_loss: float,
               outputs: tuple[torch.Tensor, torch.Tensor]) -> None:
        val, test = outputs
        add_epoch(curves[m], train_loss, {
            "val": retrieval_metrics(val[m], data.y_val, ev.recall_at, ev.chunk_elements),
            "test": retrieval_metrics(test[m], data.y_test, ev.recall_at, ev.chunk_elements),
        })

    outcomes = train_packed(trainer, cfg.epochs, data.x_train, [data.y_train] * len(ctxs),
                            [ctx.seed for ctx in ctxs], evaluate, record)
    return [outcome or RunOutput(final_metrics(curves[m]), curves[m],
                                 dict(data.info) | {"packed": len(ctxs)})
            for m, outcome in enumerate(outcomes)]


PACKED_MODES["supervised"] = run_supervised_packed
PACKED_RUNNERS["retrieval"] = run_retrieval_packed
