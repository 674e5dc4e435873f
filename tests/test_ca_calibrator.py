"""The per-example correctness-aware calibrator (Liu et al., arXiv:2404.13016) and its
transformed copies: the objective by a float64 loop, the features by hand, accuracy preserved,
determinism, validation-only fitting, a fixture it calibrates, bad options, and a run."""

from __future__ import annotations

import math

import pytest
import torch

from lossbench.ca_calibrator import (
    T_MAX,
    T_MIN,
    TemperatureNet,
    correctness_features,
    fit_ca_calibrator,
)
from lossbench.calibration import (
    CalibrationConfig,
    calibrate,
    correctness_aware_objective,
    read_calibration,
)
from lossbench.calibration_transforms import (
    contrast,
    rotate,
    transformed_outputs,
    transforms_for,
)
from lossbench.engine.grid import expand
from lossbench.errors import UserError
from lossbench.families import RunContext
from lossbench.families.classification import run_classification
from lossbench.families.classification_packed import run_classification_packed
from lossbench.metrics import expected_calibration_error
from lossbench.spec import resolve_task


def fixture(seed: int, n: int, k: int = 4, over: float = 3.0, copies: int = 3
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z); the model reports ``over * z`` (overconfident) and its
    copies ``over * (z + noise)``: examples near a class boundary flip under the noise, as an
    input near the boundary flips under a transform."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial(z.softmax(dim=1), 1, generator=g).squeeze(1)
    views = torch.stack([over * (z + 0.7 * torch.randn(n, k, generator=g, dtype=torch.float64))
                         for _ in range(copies)])
    return over * z, y, views


def test_ca_objective_with_per_example_temperatures_matches_a_float64_loop() -> None:
    g = torch.Generator().manual_seed(0)
    n, k = 40, 5
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, k, (n,), generator=g)
    t = 0.2 + 4 * torch.rand(n, generator=g, dtype=torch.float64)
    confs, rights = [], []
    for i in range(n):
        exps = [math.exp(z[i, j].item() / t[i].item()) for j in range(k)]
        confs.append(max(exps) / sum(exps))
        rights.append(float(max(range(k), key=lambda j: z[i, j].item()) == y[i].item()))
    acc = sum(rights) / n
    assert 0 < acc < 1
    weights = [1 - acc if r else acc for r in rights]
    expected = sum(w * (c - r) ** 2 for w, c, r in zip(weights, confs, rights, strict=True))
    expected /= sum(weights)
    got = correctness_aware_objective(z / t[:, None], y)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # The calibrator learns through it: gradients with respect to the temperatures are right.
    assert torch.autograd.gradcheck(
        lambda temps: correctness_aware_objective(z / temps[:, None], y), (t.requires_grad_(),))


def test_features_are_each_copy_probability_on_the_original_top_classes() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]], dtype=torch.float64)  # top-4: 1, 3, 2, 0
    views = torch.stack([torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]])),
                         torch.log(torch.tensor([[0.5, 0.1, 0.1, 0.1, 0.2]]))]).double()
    expected = torch.tensor([[0.2, 0.15, 0.3, 0.1, 0.1, 0.1, 0.1, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(correctness_features(logits, views), expected)
    # Two classes: k = 2, the copy's probabilities on (top, runner-up).
    two = correctness_features(torch.tensor([[1.0, 0.0]]), torch.log(torch.tensor([[[0.3, 0.7]]])))
    torch.testing.assert_close(two, torch.tensor([[0.3, 0.7]]).double())


def test_the_temperature_net_starts_at_one_and_stays_in_range() -> None:
    torch.manual_seed(0)
    net = TemperatureNet(6).double()
    x = torch.randn(100, 6, dtype=torch.float64) * 100
    torch.testing.assert_close(net(x), torch.ones(100, dtype=torch.float64))
    with torch.no_grad():
        net.head.weight.fill_(1e3)
    t = net(x)
    assert (t >= T_MIN).all() and (t <= T_MAX).all() and t.min() < 1 < t.max()


def test_the_calibrator_preserves_accuracy_and_is_deterministic_by_seed() -> None:
    val, y_val, val_views = fixture(0, 400)
    test, _, test_views = fixture(1, 400)
    first = fit_ca_calibrator(val, val_views, y_val, seed=3, steps=200)
    again = fit_ca_calibrator(val, val_views, y_val, seed=3, steps=200)
    other = fit_ca_calibrator(val, val_views, y_val, seed=4, steps=200)
    temps = first.temperatures(test, test_views)
    assert torch.equal(temps, again.temperatures(test, test_views))
    assert not torch.equal(temps, other.temperatures(test, test_views))
    assert temps.std() > 0.1  # per example, not one temperature in disguise
    assert torch.equal(first(test, test_views).argmax(dim=1), test.argmax(dim=1))


def test_the_fit_sees_the_validation_split_only() -> None:
    val, y_val, val_views = fixture(0, 400)
    test, y_test, test_views = fixture(1, 400)
    cal = CalibrationConfig("correctness-aware", steps=200)
    out = calibrate(val, y_val, test, y_test, cal, 15, (val_views, test_views), seed=0)
    shuffled = y_test[torch.randperm(len(y_test), generator=torch.Generator().manual_seed(0))]
    other_test = test[:100] * 2  # other test logits, other copies
    out2 = calibrate(val, y_val, other_test, shuffled[:100], cal, 15,
                     (val_views, test_views[:, :100] * 2), seed=0)
    fitted = fit_ca_calibrator(val, val_views, y_val, seed=0, steps=200)
    assert out["temperature_ca"] == pytest.approx(float(fitted.temperatures(test, test_views)
                                                        .mean()), rel=1e-12)
    assert out2["temperature_ca"] == pytest.approx(float(
        fitted.temperatures(other_test, test_views[:, :100] * 2).mean()), rel=1e-12)
    # The validation copies do not depend on the test inputs either.
    x_val = torch.rand(30, 8)
    predict = torch.nn.Linear(8, 3).requires_grad_(False)
    a = transformed_outputs(cal, x_val, torch.rand(20, 8), False, predict)
    b = transformed_outputs(cal, x_val, torch.rand(50, 8), False, predict)
    assert torch.equal(a[0], b[0]) and a[0].shape == (3, 30, 3) and b[1].shape == (3, 50, 3)


def test_it_calibrates_an_overconfident_model_better_than_leaving_it_alone() -> None:
    val, y_val, val_views = fixture(0, 600)
    test, y_test, test_views = fixture(1, 600)
    out = calibrate(val, y_val, test, y_test, "correctness-aware", 15, (val_views, test_views))
    before = expected_calibration_error(test.softmax(dim=1), y_test)
    assert before > 15  # percent
    assert out["test_ece_ca"] < before * 0.7
    assert out["temperature_ca"] > 1  # it cooled the overconfident model


def test_transforms_for_each_kind_of_input() -> None:
    cal = CalibrationConfig("correctness-aware")
    grey, rgb, rows = torch.rand(4, 1, 6, 6), torch.rand(4, 3, 6, 6), torch.rand(4, 7)
    assert list(transforms_for(cal, grey, True)) == ["rotate", "contrast"]  # greyscale dropped
    assert list(transforms_for(cal, rgb, True)) == ["rotate", "greyscale", "contrast"]
    assert list(transforms_for(replace_copies(cal, 2), rows, False)) == ["noise0", "noise1"]
    torch.testing.assert_close(rotate(grey.double(), 90), torch.rot90(grey.double(), 1, (2, 3)))
    torch.testing.assert_close(rotate(grey, 0), grey)
    jittered = contrast(rgb, 0.4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(jittered.mean(dim=(1, 2, 3)), rgb.mean(dim=(1, 2, 3)))
    ratio = (jittered - jittered.mean(dim=(1, 2, 3), keepdim=True)) / (
        rgb - rgb.mean(dim=(1, 2, 3), keepdim=True))
    factors = ratio.flatten(1).median(dim=1).values
    assert ((factors > 0.6 - 1e-5) & (factors < 1.4 + 1e-5)).all() and factors.std() > 0
    noisy = transforms_for(replace_copies(cal, 1), rows.repeat(500, 1), False)["noise0"](
        torch.zeros(2000, 7), torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy.std(dim=0), 0.1 * rows.repeat(500, 1).std(dim=0),
                               rtol=0.1, atol=0)


def replace_copies(cal: CalibrationConfig, copies: int) -> CalibrationConfig:
    return CalibrationConfig(cal.method, input_noise=cal.input_noise, copies=copies)


@pytest.mark.parametrize(("override", "message"), [
    ("calibration.input_noise=-0.5", "calibration.input_noise must be >= 0, got -0.5"),
    ("calibration.copies=0", "calibration.copies must be an int >= 1, got 0"),
    ("calibration.contrast=1.5", r"calibration.contrast must be in \[0, 1\), got 1.5"),
    ("calibration.lr=0", "calibration.lr must be > 0, got 0"),
    ("calibration.hidden=3", "unknown key.*calibration.hidden; accepted: calibration.method"),
    ("calibration.method=ca", "unknown calibration.method 'ca'; accepted: none, temperature"),
])
def test_bad_calibration_options_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        expand(["ce"], ["digits-lt"], None, "smoke", [override])
    assert "\n" not in str(err.value)


def test_a_run_reports_all_three_and_packed_runs_match_single_ones() -> None:
    spec = resolve_task("digits-lt", "smoke", ["calibration.steps=100"])
    assert read_calibration(spec).method == "correctness-aware"
    ctxs = [RunContext(spec, "ce", {}, seed, torch.device("cpu")) for seed in (0, 1)]
    singles = [run_classification(ctx).metrics for ctx in ctxs]
    packed = [out.metrics for out in run_classification_packed(ctxs)]  # type: ignore[union-attr]
    for single, pack in zip(singles, packed, strict=True):
        for suffix in ("ts", "ca_global", "ca"):
            assert f"test_ece_{suffix}" in single
        assert single["test_ece_ca"] == pytest.approx(pack["test_ece_ca"], abs=1e-3)
        assert single["temperature_ca"] == pytest.approx(pack["temperature_ca"], rel=1e-3)
    assert singles[0]["temperature_ca"] != singles[1]["temperature_ca"]
