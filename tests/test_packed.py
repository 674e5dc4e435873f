"""Packed training gives the same numbers as training each member on its own."""

from __future__ import annotations

import pytest
import torch

from lossbench.data.augment import crop_flip
from lossbench.engine.packed import PackedTrainer, packable, train_packed
from lossbench.engine.train import TrainConfig, Trainer
from lossbench.losses import LOSSES
from lossbench.models import MODELS

N, D, K = 96, 12, 4
MEMBERS = [("ce", {}, 0), ("gce", {"q": 0.5}, 1), ("aldr", {}, 2)]


def member(seed: int, loss: str, params: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    model = MODELS.get("mlp").build({"hidden": 16}, in_shape=(D,), out_dim=K)
    return model, LOSSES.get(loss).build(params, num_classes=K, num_train=N)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_packed_matches_one_by_one(optimizer: str) -> None:
    x = torch.randn(N, D)
    ys = [torch.randint(0, K, (N,), generator=torch.Generator().manual_seed(s))
          for *_, s in MEMBERS]
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, optimizer=optimizer, schedule="cosine")

    singles = []
    for (loss, params, seed), y in zip(MEMBERS, ys, strict=True):
        model, loss_fn = member(seed, loss, params)
        trainer = Trainer(model, loss_fn, cfg, torch.device("cpu"), N // 16)
        g = torch.Generator().manual_seed(seed)
        curve = [trainer.epoch(x, y, g, e) for e in range(cfg.epochs)]
        singles.append((curve, trainer.predict(x)))

    built = [member(seed, loss, params) for loss, params, seed in MEMBERS]
    packed = PackedTrainer([m for m, _ in built], [lo for _, lo in built], cfg,
                           torch.device("cpu"), N // 16)
    gens = [torch.Generator().manual_seed(seed) for *_, seed in MEMBERS]
    curves = [packed.epoch(x, ys, gens, e) for e in range(cfg.epochs)]
    outputs = packed.predict(x)
    for m, (curve, out) in enumerate(singles):
        assert [c[m] for c in curves] == pytest.approx(curve, rel=1e-5, abs=1e-6)
        torch.testing.assert_close(outputs[m], out, rtol=1e-4, atol=1e-5)


def test_a_diverging_member_does_not_touch_the_others() -> None:
    x = torch.randn(N, D)
    y = torch.randint(0, K, (N,))
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, momentum=0.0)
    built = [member(s, "ce", {}) for s in (0, 1)]
    with torch.no_grad():
        for p in built[0][0].parameters():
            p.fill_(float("nan"))
    alone, alone_loss = member(1, "ce", {})
    ref = Trainer(alone, alone_loss, cfg, torch.device("cpu"), N // 16)
    ref_loss = ref.epoch(x, y, torch.Generator().manual_seed(1), 0)
    packed = PackedTrainer([m for m, _ in built], [lo for _, lo in built], cfg,
                           torch.device("cpu"), N // 16)
    losses = packed.epoch(x, [y, y], [torch.Generator().manual_seed(s) for s in (0, 1)], 0)
    assert losses[0] != losses[0]  # NaN
    assert losses[1] == pytest.approx(ref_loss, rel=1e-5)


def test_batchnorm_and_augmentation_pack_like_single_runs() -> None:
    """BatchNorm's running statistics are per member and each member draws its own crops."""
    n, k = 48, 3
    x = torch.randn(n, 3, 8, 8)
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(5))
    cfg = TrainConfig(epochs=2, batch_size=12, lr=0.05, augment=True)

    def cnn(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return MODELS.get("small-cnn").build({"width": 4}, in_shape=(3, 8, 8), out_dim=k)

    ce = LOSSES.get("ce").build({})
    singles = []
    for seed in (0, 1):
        trainer = Trainer(cnn(seed), ce, cfg, torch.device("cpu"), n // 12, augment=crop_flip)
        g = torch.Generator().manual_seed(seed)
        singles.append(([trainer.epoch(x, y, g, e) for e in range(2)], trainer.predict(x)))
    packed = PackedTrainer([cnn(0), cnn(1)], [ce, ce], cfg, torch.device("cpu"), n // 12,
                           augment=crop_flip)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    curves = [packed.epoch(x, [y, y], gens, e) for e in range(2)]
    outputs = packed.predict(x)  # eval mode: each member's own running statistics
    for m, (curve, out) in enumerate(singles):
        assert [c[m] for c in curves] == pytest.approx(curve, rel=1e-5, abs=1e-6)
        torch.testing.assert_close(outputs[m], out, rtol=1e-4, atol=1e-4)


def test_dropout_models_are_not_packable() -> None:
    dropout = MODELS.get("mlp").build({"dropout": 0.1}, in_shape=(4,), out_dim=3)
    assert not packable(dropout)
    assert packable(MODELS.get("mlp").build({}, in_shape=(4,), out_dim=3))
    assert packable(MODELS.get("small-cnn").build({"width": 4}, in_shape=(3, 8, 8), out_dim=3))
    with pytest.raises(ValueError, match="dropout"):
        PackedTrainer([dropout], [LOSSES.get("ce").build({})], TrainConfig(epochs=1),
                      torch.device("cpu"), 1)


def test_train_packed_stops_recording_a_diverged_member_only() -> None:
    class Losses:  # stands in for PackedTrainer: member 1 diverges in epoch 2
        def epoch(self, x, ys, gens, epoch):  # type: ignore[no-untyped-def]
            return [1.0, float("nan") if epoch == 1 else 2.0, 3.0]

    seen: list[tuple[int, float, str]] = []
    outcomes = train_packed(Losses(), 3, torch.zeros(1), [torch.zeros(1)] * 3, [0, 1, 2],
                            lambda: "eval", lambda m, epoch, loss, ev: seen.append((m, loss, ev)))
    assert outcomes[0] is None and outcomes[2] is None
    assert str(outcomes[1]) == "non-finite training loss at epoch 2"
    assert [m for m, *_ in seen] == [0, 1, 2, 0, 2, 0, 2]
    assert all(ev == "eval" for *_, ev in seen)
