"""Post-hoc calibration: temperature recovery, the correctness-aware objective by hand, the
calibrate() report, and the calibration stage of a classification run."""

from __future__ import annotations

import math

import pytest
import torch

from lossbench.calibration import (
    METHODS,
    calibrate,
    correctness_aware_objective,
    fit_temperature,
    nll_objective,
)
from lossbench.errors import UserError
from lossbench.families import RunContext
from lossbench.families.classification import run_classification
from lossbench.metrics import expected_calibration_error
from lossbench.spec import resolve_task


def overconfident(seed: int, n: int, k: int, temperature: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z); the model reports temperature * z (overconfident if > 1)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial(z.softmax(dim=1), 1, generator=g).squeeze(1)
    return temperature * z, y


def test_temperature_scaling_recovers_the_true_temperature() -> None:
    logits, y = overconfident(0, 6000, 5, 2.5)
    assert fit_temperature(logits, y, nll_objective) == pytest.approx(2.5, rel=0.05)
    calibrated, y2 = overconfident(1, 6000, 5, 1.0)
    assert fit_temperature(calibrated, y2, nll_objective) == pytest.approx(1.0, rel=0.05)


def test_the_search_finds_the_minimum_of_a_known_objective() -> None:
    # objective(z / T) = (log T - log 3)^2 for z = ones: minimum at T = 3 exactly.
    def bowl(scaled: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (torch.log(1 / scaled[0, 0]) - math.log(3)) ** 2

    assert fit_temperature(torch.ones(1, 2), torch.zeros(1, dtype=torch.long), bowl
                           ) == pytest.approx(3.0, rel=1e-6)


def test_correctness_aware_objective_by_hand() -> None:
    # Three examples, confidences 0.8 (right), 0.6 (right), 0.7 (wrong): accuracy 2/3, weights
    # 1/3 on right and 2/3 on wrong predictions.
    probs = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.7, 0.3]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1])
    gaps = [(0.8 - 1) ** 2, (0.6 - 1) ** 2, (0.7 - 0) ** 2]
    weights = [1 / 3, 1 / 3, 2 / 3]
    expected = sum(w * g for w, g in zip(weights, gaps, strict=True)) / sum(weights)
    assert correctness_aware_objective(probs.log(), y).item() == pytest.approx(expected)
    # All right: nothing to balance, the plain mean.
    assert correctness_aware_objective(probs.log(), torch.tensor([0, 1, 0])).item() == (
        pytest.approx((0.2**2 + 0.4**2 + 0.3**2) / 3))


def test_calibrate_reports_each_calibrator_and_lowers_ece_of_an_overconfident_model() -> None:
    val, y_val = overconfident(2, 3000, 4, 3.0)
    test, y_test = overconfident(3, 3000, 4, 3.0)
    assert calibrate(val, y_val, test, y_test, "none") == {}
    out = calibrate(val, y_val, test, y_test, "correctness-aware-global")
    for suffix in METHODS["correctness-aware-global"]:
        assert {f"test_{m}_{suffix}" for m in ("ece", "ada_ece", "nll", "brier")} | {
            f"temperature_{suffix}"} <= set(out)
    before = expected_calibration_error(test.softmax(dim=1), y_test)
    assert out["test_ece_ts"] < before / 3 and out["test_ece_ca_global"] < before
    # The balancing weights give right and wrong predictions equal total weight, so at any
    # confidence level the CA optimum is pulled towards 1/2: with accuracy above 1/2 (here 0.69)
    # its temperature is higher than the NLL one (a global temperature cannot separate the two
    # groups the way the paper's per-example calibrator can).
    assert (val.argmax(dim=1) == y_val).double().mean() > 0.5
    assert out["temperature_ca_global"] > out["temperature_ts"] > 2
    assert set(calibrate(val, y_val, test, y_test, "temperature")) == {
        "test_ece_ts", "test_ada_ece_ts", "test_nll_ts", "test_brier_ts", "temperature_ts"}
    with pytest.raises(UserError, match=r"unknown calibration\.method 'isotonic'; accepted: none"):
        calibrate(val, y_val, test, y_test, "isotonic")


def test_the_classification_run_reports_calibrated_ece_beside_the_raw_one() -> None:
    spec = resolve_task("digits-lt", "smoke", ["calibration.method=temperature"])
    out = run_classification(RunContext(spec, "ce", {}, 0, torch.device("cpu")))
    assert {"test_ece", "test_ece_ts", "temperature_ts"} <= set(out.metrics)
    assert not any("_ca" in name for name in out.metrics)
    assert out.info["class_counts"] == out.info["imbalance"]["train_counts"]
