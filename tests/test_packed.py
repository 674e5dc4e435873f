"""Packed training gives the same numbers as training each member on its own."""

from __future__ import annotations

import pytest
import torch

from lossbench.engine.packed import PackedTrainer, packable
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


def test_batchnorm_models_are_not_packable() -> None:
    cnn = MODELS.get("small-cnn").build({"width": 4}, in_shape=(3, 8, 8), out_dim=3)
    assert not packable(cnn)
    assert packable(MODELS.get("mlp").build({}, in_shape=(4,), out_dim=3))
    with pytest.raises(ValueError, match="BatchNorm"):
        PackedTrainer([cnn], [LOSSES.get("ce").build({})], TrainConfig(epochs=1),
                      torch.device("cpu"), 1)
