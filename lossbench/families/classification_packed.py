"""Packed classification: the runs of one task and budget (seeds, losses with the same head)
trained together by ``PackedTrainer``, producing the same records as running them one by one.

Members share the inputs (the train/val split is fixed across seeds) and differ in noisy labels,
initialisation, data order, augmentation draws and loss. Not packable (falls back to one by one):
models with dropout (see ``lossbench.engine.packed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cache, cached_property

import torch

from lossbench.calibration import Views
from lossbench.data.augment import crop_flip
from lossbench.engine.packed import (
    PACKED_RUNNERS,
    NotPackable,
    PackedTrainer,
    build_members,
    train_packed,
)
from lossbench.engine.train import Diverged, TrainConfig
from lossbench.families.base import RunContext, RunOutput
from lossbench.families.classification import (
    EpochScorer,
    Splits,
    build_loss,
    build_model,
    calibration_views,
    finish_run,
    prepare_splits,
    read_eval,
    teacher_of,
    with_teacher,
)
from lossbench.families.teacher import TRAIN_LOGITS


def run_classification_packed(ctxs: Sequence[RunContext]) -> list[RunOutput | Diverged]:
    """Train every context's run in one packed computation; one outcome per context."""
    spec, device = ctxs[0].spec, ctxs[0].device
    cfg = TrainConfig.from_spec(spec["train"])
    ev = read_eval(spec)
    by_seed: dict[int, Splits] = {}
    for seed in dict.fromkeys(ctx.seed for ctx in ctxs):  # one split per seed, in order
        data = prepare_splits(spec, seed, device)
        if by_seed:  # members share inputs: keep one copy on the device, not one per seed
            first = next(iter(by_seed.values()))
            if not torch.equal(data.x_train, first.x_train):
                raise NotPackable("members see different training inputs")
            data = replace(data, x_train=first.x_train, x_val=first.x_val, x_test=first.x_test)
        by_seed[seed] = data
    datas = [by_seed[ctx.seed] for ctx in ctxs]
    teachers = {id(ctx): teacher_of(ctx, by_seed[ctx.seed]) for ctx in ctxs}
    models, losses = build_members(
        ctxs, lambda ctx: (build_model(spec, by_seed[ctx.seed]),
                           build_loss(ctx.loss, ctx.loss_params, by_seed[ctx.seed], ctx.seed,
                                      teachers[id(ctx)][0])),
        device)
    shared = datas[0]
    steps = max(1, len(shared.x_train) // cfg.batch_size)
    trainer = PackedTrainer(models, losses, cfg, device, steps,
                            augment=crop_flip if (cfg.augment and shared.image) else None)
    scorers = [EpochScorer(data, ev, cfg.epochs) for data in datas]

    def evaluate() -> Outputs:  # every member's outputs, predicted once, if a member asks
        return Outputs(lambda: trainer.predict(shared.x_val),
                       lambda: trainer.predict(shared.x_test))

    def record(m: int, epoch: int, train_loss: float, outputs: Outputs) -> None:
        scorers[m].add(epoch, train_loss, lambda: outputs.val[m], lambda: outputs.test[m])

    outcomes = train_packed(trainer, cfg.epochs, shared.x_train, [d.y_train for d in datas],
                            [ctx.seed for ctx in ctxs], evaluate, record)

    @cache
    def copies() -> Views:  # every member's outputs on the transformed inputs, [V, M, N, K]
        return calibration_views(spec, shared, trainer.predict)

    def member_copies(m: int) -> Callable[[], Views]:
        return lambda: (copies()[0][:, m], copies()[1][:, m])

    train_logits = trainer.predict(shared.x_train) if ev.keep_train_logits else None
    finished: list[RunOutput | Diverged] = []
    for m, outcome in enumerate(outcomes):
        if outcome is None:
            outcome = with_teacher(
                finish_run(spec, datas[m], scorers[m], ctxs[m].seed, member_copies(m)),
                teachers[id(ctxs[m])][1])
            outcome.info["packed"] = len(ctxs)
            if train_logits is not None:
                outcome.arrays[TRAIN_LOGITS] = train_logits[m].cpu().numpy()
        finished.append(outcome)
    return finished


class Outputs:
    """One epoch's outputs of every member [M, N, K] on the validation and test sets, each
    predicted on first use: an epoch no member scores makes no forward pass."""

    def __init__(self, val: Callable[[], torch.Tensor], test: Callable[[], torch.Tensor]) -> None:
        self._val, self._test = val, test

    @cached_property
    def val(self) -> torch.Tensor:
        return self._val()

    @cached_property
    def test(self) -> torch.Tensor:
        return self._test()


PACKED_RUNNERS["classification"] = run_classification_packed
