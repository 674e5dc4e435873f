"""Packed regression: runs of one task, budget and split (the seed is the split index, so they
share inputs) whose losses ask for the same head size, trained together by ``PackedTrainer``
with the same records as one by one. ``pack_groups`` forms such groups from the family's
``pack_key``; e.g. mse, l1, huber, logcosh and cs-div (one output) pack together per split."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lossbench.data.bags import read_bags
from lossbench.engine.packed import (
    PACKED_RUNNERS,
    NotPackable,
    PackedTrainer,
    build_members,
    train_packed,
)
from lossbench.engine.train import Diverged, TrainConfig
from lossbench.families.base import RunContext, RunOutput
from lossbench.families.regression import (
    QuantileKeeper,
    add_epoch,
    build_loss_and_model,
    finish_run,
    prepare_data,
    read_config,
    regression_metrics,
    run_info,
)


def run_regression_packed(ctxs: Sequence[RunContext]) -> list[RunOutput | Diverged]:
    """Train every context's run in one packed computation; one outcome per context."""
    spec, device = ctxs[0].spec, ctxs[0].device
    if len({ctx.seed for ctx in ctxs}) > 1:
        raise NotPackable("runs of different splits see different inputs")
    if read_bags(spec).active:
        raise NotPackable("bagged tasks train on whole-bag batches, whose sizes can differ")
    data = prepare_data(spec, ctxs[0].seed, device)
    cfg = TrainConfig.from_spec(spec["train"])
    _, ev = read_config(spec)

    def member(ctx: RunContext) -> tuple[torch.nn.Module, torch.nn.Module]:
        loss, model = build_loss_and_model(spec, ctx.loss, ctx.loss_params, data)
        return model, loss

    models, losses = build_members(ctxs, member, device)
    if len({int(loss.head_dim) for loss in losses}) > 1:
        raise NotPackable("losses ask for different head sizes")
    trainer = PackedTrainer(models, losses, cfg, device,
                            max(1, len(data.x_train) // cfg.batch_size))
    levels = [getattr(loss, "interval_level", None) for loss in losses]
    keepers = [QuantileKeeper.of(loss) for loss in losses]
    curves: list[dict[str, list[float]]] = [{} for _ in ctxs]

    def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
        return trainer.predict(data.x_val), trainer.predict(data.x_test)

    def score(m: int, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return regression_metrics(losses[m].predict(out[m]), y, data.y_mean, data.y_std,
                                  ev.interval, levels[m])

    def record(m: int, epoch: int, train_loss: float,
               outputs: tuple[torch.Tensor, torch.Tensor]) -> Diverged | None:
        diverged = add_epoch(curves[m], train_loss, score(m, outputs[0], data.y_val),
                             score(m, outputs[1], data.y_test), epoch)
        keeper = keepers[m]
        if diverged is None and keeper is not None:
            keeper.update(epoch, curves[m]["val_rmse"][-1], outputs[0][m], outputs[1][m])
        return diverged

    outcomes = train_packed(trainer, cfg.epochs, data.x_train, [data.y_train] * len(ctxs),
                            [ctx.seed for ctx in ctxs], evaluate, record)
    return [outcome or finish_run(curves[m], run_info(data, curves[m], levels[m], ev)
                                  | {"packed": len(ctxs)}, keepers[m], data)
            for m, outcome in enumerate(outcomes)]


PACKED_RUNNERS["regression"] = run_regression_packed
