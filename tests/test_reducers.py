"""Reducers: weights against hand formulas (float64), the gradient they give, the spec grammar,
the run key, and a reducer through the single and packed trainers and the CLI."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.engine.grid import expand
from lossbench.engine.packed import PackedTrainer
from lossbench.engine.store import Store
from lossbench.engine.train import TrainConfig, Trainer
from lossbench.errors import UserError
from lossbench.losses import LOSSES
from lossbench.losses.reducers import (
    REDUCERS,
    LossBasedReweighting,
    Reduced,
    SmallLossSelection,
    with_reducer,
)
from lossbench.models import MODELS

runner = CliRunner()


def hand_loss_weights(losses: np.ndarray, strategy: str, delta: float, r: float) -> np.ndarray:
    """Sow et al. 2025, written out: min-max to [-delta, delta], f, softmax(f / r)."""
    x = 2 * delta * (losses - losses.min()) / (losses.max() - losses.min()) - delta
    f = {"linupper": np.minimum(x + delta, delta), "quadratic": 1 - x**2 / delta**2,
         "extremes": np.abs(x), "uniform": x}[strategy]
    e = np.exp(f / r - (f / r).max())
    return e / e.sum()


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes", "uniform"])
@pytest.mark.parametrize(("delta", "r"), [(1.0, 1.0), (0.5, 0.3), (2.0, 5.0)])
def test_loss_weights_match_the_hand_formula(strategy: str, delta: float, r: float) -> None:
    losses = np.random.default_rng(3).gamma(2.0, 1.0, size=37)
    got = LossBasedReweighting(strategy, delta, r).weights(torch.tensor(losses), 0)
    np.testing.assert_allclose(got.numpy(), hand_loss_weights(losses, strategy, delta, r),
                               rtol=1e-12)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_loss_weight_strategies_have_the_papers_shapes() -> None:
    losses = torch.linspace(0.0, 4.0, 9, dtype=torch.float64)
    lin = LossBasedReweighting("linupper").weights(losses, 0)
    assert torch.all(lin[1:5] > lin[:4]) and torch.allclose(lin[4:], lin[4].expand(5))
    quad = LossBasedReweighting("quadratic").weights(losses, 0)
    assert quad.argmax() == 4 and quad[0] == pytest.approx(quad[-1].item())
    ext = LossBasedReweighting("extremes").weights(losses, 0)
    assert ext.argmin() == 4
    flat = LossBasedReweighting("uniform", r=1e9).weights(losses, 0)
    torch.testing.assert_close(flat, torch.full_like(losses, 1 / 9))


def test_equal_losses_get_equal_weights() -> None:
    for entry in REDUCERS:
        if entry.name == "small-loss":  # selection drops a share even among equals
            continue
        w = entry.build({}).weights(torch.full((6,), 2.5, dtype=torch.float64), 20)
        torch.testing.assert_close(w, torch.full((6,), 1 / 6, dtype=torch.float64))


def test_small_loss_keeps_the_smallest_with_coteachings_schedule() -> None:
    reducer = SmallLossSelection(rate=0.5, warmup=4)
    assert [reducer.forget_rate(e) for e in range(6)] == [0, 0.125, 0.25, 0.375, 0.5, 0.5]
    losses = torch.tensor([5.0, 1.0, 3.0, 0.5, 4.0, 2.0, 6.0, 0.1], dtype=torch.float64)
    w = reducer.weights(losses, epoch=10)  # forget half: keep the 4 smallest
    kept = set(torch.nonzero(w).flatten().tolist())
    assert kept == {7, 3, 1, 5}
    assert w.sum().item() == pytest.approx(1.0) and set(w[list(kept)].tolist()) == {0.25}
    assert torch.count_nonzero(reducer.weights(losses, epoch=1)) == math.ceil(0.875 * 8)
    assert torch.count_nonzero(SmallLossSelection(0.5, warmup=0).weights(losses, 0)) == 4


def test_the_reduced_objective_is_the_weighted_sum_with_weights_held_fixed() -> None:
    """Values: mean of N w_i l_i = sum w_i l_i. Gradient: the weights carry none (the papers
    compute them without gradient), so d/dz = sum_i w_i dl_i/dz."""
    torch.manual_seed(0)
    z = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (12,))
    ce = LOSSES.get("ce").build({}, num_classes=5, num_train=12)
    reducer = LossBasedReweighting("quadratic", r=0.5)
    reduced = Reduced(ce, reducer)
    value = reduced(z, y).mean()
    per_example = ce(z, y)
    w = reducer.weights(per_example.detach(), 0)
    assert value.item() == pytest.approx((w * per_example).sum().item(), rel=1e-12)
    (grad,) = torch.autograd.grad(value, z)
    (expected,) = torch.autograd.grad((w * ce(z, y)).sum(), z)
    torch.testing.assert_close(grad, expected)


def test_reduced_passes_epochs_state_and_attributes_through() -> None:
    aldr = LOSSES.get("aldr").build({}, num_classes=4, num_train=10)
    reduced = LOSSES.get("aldr").build({"reduce": "small-loss", "reduce.warmup": "2"},
                                       num_classes=4, num_train=10)
    assert isinstance(reduced, Reduced) and type(reduced.inner) is type(aldr)
    assert dict(reduced.named_buffers()).keys() == {f"inner.{k}" for k, _ in
                                                    aldr.named_buffers()}
    reduced.on_epoch_end(0)
    assert reduced.epoch == 1
    assert reduced.consumes == aldr.consumes  # read from the wrapped loss


def test_spec_keys_resolve_check_and_leave_the_mean_key_alone() -> None:
    entry = LOSSES.get("ce")
    assert entry.resolve({"reduce": "mean"}) == entry.resolve({}) == {}
    assert entry.resolve({"reduce": "small-loss", "reduce.rate": "0.4"}) == {
        "reduce": "small-loss", "reduce.rate": 0.4, "reduce.warmup": 10}
    for values, message in [
        ({"reduce": "median"}, "unknown reducer 'median'; accepted: loss-weight, mean"),
        ({"reduce.rate": "0.4"}, "given without reduce=NAME"),
        ({"reduce": "small-loss", "reduce.rate": "1.5"}, "reduce.rate must be in [0, 1)"),
        ({"reduce": "small-loss", "reduce.speed": "1"}, "unknown parameter 'speed'"),
        ({"reduce": "loss-weight", "reduce.strategy": "cubic"}, "accepted: linupper"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            LOSSES.get("ce").build(values, num_classes=3, num_train=4)
    plain = expand(["ce"], ["digits-noisy"], [0], "smoke")[0]
    named_mean = expand(["ce:reduce=mean"], ["digits-noisy"], [0], "smoke")[0]
    reduced = expand(["ce:reduce=small-loss"], ["digits-noisy"], [0], "smoke")[0]
    assert plain.key == named_mean.key != reduced.key
    every = expand(["all:reduce=small-loss"], ["digits-noisy"], [0], "smoke")
    assert len(every) > 5 and all(c.loss_params["reduce"] == "small-loss" for c in every)


def test_with_reducer_follows_the_spec_grammar() -> None:
    assert with_reducer("ce", "small-loss:rate=0.3") == "ce:reduce=small-loss,reduce.rate=0.3"
    assert with_reducer("gce:q=0.7", "mean") == "gce:q=0.7,reduce=mean"
    assert with_reducer("my.mod:Loss", "small-loss") == "my.mod:Loss:reduce=small-loss"
    assert with_reducer("f.py:Loss:a=1", "small-loss") == "f.py:Loss:a=1,reduce=small-loss"


def test_a_reduced_loss_packs_like_its_single_run() -> None:
    n, d, k = 64, 8, 3
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    params = {"reduce": "small-loss", "reduce.rate": "0.5", "reduce.warmup": "1"}

    def member() -> tuple[torch.nn.Module, torch.nn.Module]:
        torch.manual_seed(0)
        return (MODELS.get("mlp").build({"hidden": 8}, in_shape=(d,), out_dim=k),
                LOSSES.get("ce").build(params, num_classes=k, num_train=n))

    model, loss = member()
    single = Trainer(model, loss, cfg, torch.device("cpu"), n // 16)
    g = torch.Generator().manual_seed(0)
    curve = [single.epoch(x, y, g, e) for e in range(3)]
    pm, pl = member()
    packed = PackedTrainer([pm], [pl], cfg, torch.device("cpu"), n // 16)
    pg = [torch.Generator().manual_seed(0)]
    assert [packed.epoch(x, [y], pg, e)[0] for e in range(3)] == pytest.approx(curve, rel=1e-5)


def test_the_cli_reduce_axis_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "res"
    result = runner.invoke(app, ["run", "--loss", "ce", "--reduce", "mean", "--reduce",
                                 "small-loss:rate=0.3,warmup=1", "--task", "digits-noisy",
                                 "--budget", "smoke", "--set", "train.epochs=2", "--seeds", "0",
                                 "--device", "cpu", "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "2 to run" in result.output
    params = sorted((r["config"]["loss_params"] for r in Store(out).records()), key=len)
    assert params == [{}, {"reduce": "small-loss", "reduce.rate": 0.3, "reduce.warmup": 1}]
    bad = runner.invoke(app, ["run", "--loss", "ce", "--reduce", "median", "--task",
                              "digits-noisy", "--budget", "smoke", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown reducer 'median'" in bad.output
    assert "Traceback" not in bad.output
