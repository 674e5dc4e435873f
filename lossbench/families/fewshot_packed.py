"""Packed few-shot: runs of one task and budget (seeds, losses) trained together by
``PackedTrainer``, producing the same records as running them one by one.

Members share the base/validation/novel split, the fixed evaluation episodes and the model
architecture (an ``embedding_dim`` output; heads belong to the losses). They must also draw the
same kind of batches: episodes in ``episodic`` mode (every loss), but in ``standard`` mode plain
batches for logits losses and P x m batches for embedding losses, so a group mixing the two is
not packable (it runs one by one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lossbench.data.views import train_view
from lossbench.engine.packed import (
    PACKED_RUNNERS,
    NotPackable,
    PackedTrainer,
    build_members,
    train_packed,
)
from lossbench.engine.train import Diverged, TrainConfig
from lossbench.families.base import RunContext, RunOutput
from lossbench.families.fewshot import (
    add_epoch,
    build_loss,
    build_model,
    check_base_ways,
    check_loss,
    embed,
    eval_episodes,
    extra_scoring,
    final_metrics,
    prepare_data,
    read_config,
    run_info,
    train_sampler,
)
from lossbench.families.fewshot_scoring import Snapshots, scored_metrics, scoring_info


def run_fewshot_packed(ctxs: Sequence[RunContext]) -> list[RunOutput | Diverged]:
    """Train every context's run in one packed computation; one outcome per context."""
    spec, device = ctxs[0].spec, ctxs[0].device
    fs, split, ev = read_config(spec)
    cfg = TrainConfig.from_spec(spec["train"])
    kind_of = {ctx.loss: check_loss(ctx.loss, fs.mode) for ctx in ctxs}
    kinds = [kind_of[ctx.loss] for ctx in ctxs]
    if fs.mode != "episodic" and len({kind == "embeddings" for kind in kinds}) > 1:
        raise NotPackable("standard mode: logits and embedding losses draw different batches")
    data = prepare_data(spec, split, device)
    check_base_ways(fs, data)
    val_eps, test_eps = eval_episodes(data, ev)
    scoring = extra_scoring(data, ev)
    snaps = [Snapshots() for _ in ctxs]
    models, losses = build_members(
        ctxs, lambda ctx: (build_model(spec, data, fs),
                           build_loss(ctx.loss, ctx.loss_params, fs, kind_of[ctx.loss], data)),
        device)
    sampler, steps = train_sampler(fs, kinds[0], cfg, len(data.x_base))
    trainer = PackedTrainer(models, losses, cfg, device, steps, sampler=sampler,
                            augment=train_view(data.view, data.image, cfg.augment))
    curves: list[dict[str, list[float]]] = [{} for _ in ctxs]

    def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
        return (embed(trainer.predict(data.x_val, view=data.view), ev.norm),
                embed(trainer.predict(data.x_novel, view=data.view), ev.norm))

    def record(m: int, epoch: int, train_loss: float,
               embeddings: tuple[torch.Tensor, torch.Tensor]) -> None:
        emb_val, emb_novel = embeddings
        add_epoch(curves[m], train_loss, emb_val[m], emb_novel[m], val_eps, test_eps)
        if scoring.active:
            snaps[m].update(curves[m], emb_novel[m], list(test_eps))

    outcomes = train_packed(trainer, cfg.epochs, data.x_base, [data.y_base] * len(ctxs),
                            [ctx.seed for ctx in ctxs], evaluate, record)

    def output(m: int) -> RunOutput:
        metrics = final_metrics(curves[m], test_eps)
        if scoring.active:
            metrics |= scored_metrics(scoring, snaps[m], test_eps)
        info = run_info(data, fs, kinds[m], steps, val_eps, test_eps) | scoring_info(scoring)
        return RunOutput(metrics, curves[m], info | {"packed": len(ctxs)})

    return [outcome or output(m) for m, outcome in enumerate(outcomes)]


PACKED_RUNNERS["fewshot"] = run_fewshot_packed
