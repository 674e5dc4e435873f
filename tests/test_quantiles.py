"""Quantile scores, post-processing and CQR (lossbench.quantiles) against independent formulas,
the properties Fakoor et al. (JMLR 2023) and Romano et al. (NeurIPS 2019) prove, and mapie."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from lossbench.quantiles import (
    apply_shifts,
    conformal_rank,
    cqr_shifts,
    crossed,
    isotonic_quantiles,
    level_coverage,
    quantile_scores,
    sort_quantiles,
    symmetric_pairs,
    wis,
)

LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def interval_score(lower: float, upper: float, y: float, alpha: float) -> float:
    """Gneiting & Raftery (2007) / Bracher et al. (2021) Eq. 1, written out."""
    return ((upper - lower) + 2 / alpha * (lower - y) * (y < lower)
            + 2 / alpha * (y - upper) * (y > upper))


def bracher_wis(q: np.ndarray, y: float, levels: tuple[float, ...]) -> float:
    """Bracher et al. (2021) Eq. 3 from intervals: K pairs around the median, w_k = alpha_k/2."""
    k = len(levels) // 2
    median = q[k]
    total = 0.5 * abs(y - median)
    for j in range(k):
        alpha = 2 * levels[j]
        total += alpha / 2 * interval_score(q[j], q[-1 - j], y, alpha)
    return total / (k + 0.5)


def crossing_rows(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """Quantile rows that cross often: a trend plus noise of the same size."""
    return np.linspace(-1, 1, m)[None, :] + rng.normal(size=(n, m)) * rng.uniform(1.0, 3.0)


def test_wis_is_the_interval_score_of_bracher_et_al() -> None:
    rng = np.random.default_rng(0)
    q = np.sort(rng.normal(size=(50, len(LEVELS))), axis=1)
    y = rng.normal(size=50) * 2
    ours = wis(q, y, LEVELS)
    reference = [bracher_wis(q[i], y[i], LEVELS) for i in range(50)]
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)


def test_wis_of_the_median_alone_is_the_absolute_error() -> None:
    rng = np.random.default_rng(1)
    q, y = rng.normal(size=(20, 1)), rng.normal(size=20)
    np.testing.assert_allclose(wis(q, y, (0.5,)), np.abs(y - q[:, 0]), rtol=1e-14)


@pytest.mark.parametrize("m", [2, 3, 7, 15])
def test_post_sorting_and_isotonic_never_increase_wis(m: int) -> None:
    """Fakoor et al. (2023), Propositions on post sorting and post isotonic regression: for any
    target, neither can worsen WIS (checked example by example, random levels and crossings)."""
    rng = np.random.default_rng(m)
    for _ in range(20):
        levels = tuple(np.sort(rng.choice(np.arange(1, 100), m, replace=False)) / 100)
        q = crossing_rows(rng, 200, m)
        y = rng.normal(size=200) * 1.5
        before = wis(q, y, levels)
        assert crossed(q).any()
        assert np.all(wis(sort_quantiles(q), y, levels) <= before + 1e-12)
        assert np.all(wis(isotonic_quantiles(q), y, levels) <= before + 1e-12)


def test_post_processing_can_strictly_improve() -> None:
    """Not a property that cannot fail: crossed rows do lose WIS on average."""
    rng = np.random.default_rng(5)
    q, y = crossing_rows(rng, 500, 7), rng.normal(size=500)
    assert wis(sort_quantiles(q), y, LEVELS).mean() < wis(q, y, LEVELS).mean() - 1e-3
    assert wis(isotonic_quantiles(q), y, LEVELS).mean() < wis(q, y, LEVELS).mean() - 1e-3


@pytest.mark.parametrize("m", [1, 2, 5, 20])
def test_isotonic_matches_scikit_learn(m: int) -> None:
    rng = np.random.default_rng(m)
    q = crossing_rows(rng, 40, m)
    levels = np.arange(m, dtype=float)
    reference = np.stack([IsotonicRegression().fit_transform(levels, row) for row in q])
    np.testing.assert_allclose(isotonic_quantiles(q), reference, rtol=1e-12, atol=1e-12)


def test_isotonic_is_monotone_keeps_row_means_and_fixes_sorted_rows() -> None:
    rng = np.random.default_rng(2)
    q = crossing_rows(rng, 300, 9)
    iso = isotonic_quantiles(q)
    assert not crossed(iso).any()
    np.testing.assert_allclose(iso.mean(axis=1), q.mean(axis=1), rtol=1e-12, atol=1e-12)
    monotone = np.sort(q, axis=1)
    np.testing.assert_allclose(isotonic_quantiles(monotone), monotone, atol=1e-12)


def test_crossing_and_level_coverage() -> None:
    q = np.array([[0.0, 1.0, 2.0], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    assert crossed(q).tolist() == [False, True, False]
    y = np.array([0.5, 3.0, 1.0])
    np.testing.assert_allclose(level_coverage(q, y), [1 / 3, 2 / 3, 2 / 3])


def test_symmetric_pairs() -> None:
    assert symmetric_pairs(LEVELS) == [(0, 6), (1, 5), (2, 4)]
    assert symmetric_pairs((0.1, 0.5, 0.8)) == []
    assert symmetric_pairs((0.05, 0.95)) == [(0, 1)]


def test_cqr_shift_is_romanos_order_statistic() -> None:
    """Romano et al. (2019) Eq. 6-7: the ceil((1 - alpha)(n + 1))-th smallest of
    E_i = max(q_lo - y, y - q_hi)."""
    rng = np.random.default_rng(3)
    n = 40
    q_cal = np.sort(rng.normal(size=(n, 3)), axis=1)
    y_cal = rng.normal(size=n) * 2
    shifts, exact = cqr_shifts(q_cal, y_cal, (0.05, 0.5, 0.95))
    scores = sorted(max(q_cal[i, 0] - y_cal[i], y_cal[i] - q_cal[i, 2]) for i in range(n))
    assert exact and shifts == {(0, 2): scores[math.ceil(0.9 * 41) - 1]}
    assert conformal_rank(0.9, 9) == 9  # 0.9 * 10 in floating point is 9.000000000000002
    moved = apply_shifts(q_cal, shifts)
    np.testing.assert_allclose(moved[:, 0], q_cal[:, 0] - shifts[(0, 2)])
    np.testing.assert_allclose(moved[:, 1], q_cal[:, 1])
    np.testing.assert_allclose(moved[:, 2], q_cal[:, 2] + shifts[(0, 2)])


def test_cqr_reaches_nominal_coverage_on_exchangeable_data() -> None:
    """Romano et al. (2019) Thm. 1: 1 - alpha <= P(Y in C(X)) <= 1 - alpha + 1/(n + 1), for a
    badly miscalibrated (too narrow) quantile model; averaged over many calibration draws."""
    rng = np.random.default_rng(4)
    n, trials, covered = 30, 4000, 0
    for _ in range(trials):
        x = rng.uniform(1, 2, size=n + 1)
        y = rng.normal(size=n + 1) * x
        q = np.stack([-0.3 * x, 0 * x, 0.3 * x], axis=1)  # far too narrow for a 90% interval
        shifts, _ = cqr_shifts(q[:n], y[:n], (0.05, 0.5, 0.95))
        moved = apply_shifts(q[n:], shifts)
        covered += int(moved[0, 0] <= y[n] <= moved[0, 2])
    rate = covered / trials
    assert 0.9 - 0.015 <= rate <= 0.9 + 1 / (n + 1) + 0.015


def test_cqr_with_too_few_calibration_points_is_marked_inexact() -> None:
    rng = np.random.default_rng(6)
    q = np.sort(rng.normal(size=(10, 3)), axis=1)
    y = rng.normal(size=10)
    shifts, exact = cqr_shifts(q, y, (0.01, 0.5, 0.99))  # needs n >= 49
    assert not exact
    assert shifts[(0, 2)] == pytest.approx(np.max(np.maximum(q[:, 0] - y, y - q[:, 2])))


def test_quantile_scores_names_and_values() -> None:
    rng = np.random.default_rng(7)
    levels = (0.05, 0.5, 0.95)
    q_val, y_val = crossing_rows(rng, 80, 3), rng.normal(size=80)
    q_test, y_test = crossing_rows(rng, 120, 3), rng.normal(size=120)
    scores = quantile_scores(levels, q_val, y_val, q_test, y_test)
    m = scores.metrics
    assert scores.conformal_exact is True
    assert m["wis"] == pytest.approx(wis(np.sort(q_test, axis=1), y_test, levels).mean())
    assert m["wis_raw"] == pytest.approx(wis(q_test, y_test, levels).mean())
    assert m["wis"] <= m["wis_raw"] and m["wis_isotonic"] <= m["wis_raw"]
    assert m["crossing_raw"] == pytest.approx(100 * crossed(q_test).mean())
    assert set(m) >= {"wis_conformal", "coverage_conformal", "width_conformal",
                      "crossing_conformal", "qcov_0.05", "qcov_0.95_conformal", "coverage_raw",
                      "coverage_isotonic"}
    median_only = quantile_scores((0.5,), q_val[:, :1], y_val, q_test[:, :1], y_test)
    assert median_only.conformal_exact is None and "wis_conformal" not in median_only.metrics


def test_cqr_matches_mapie() -> None:
    """The same calibrated interval as mapie's ConformalizedQuantileRegressor (prefit, symmetric
    correction) on identical predictions; mapie is a dev extra (pip install 'lossbench[dev]')."""
    mapie_regression = pytest.importorskip(
        "mapie.regression", reason="mapie not installed (dev extra: pip install 'lossbench[dev]')")
    from sklearn.linear_model import QuantileRegressor

    def column(col: int, tau: float) -> QuantileRegressor:
        """A 'fitted' linear quantile model that returns column ``col`` of X exactly."""
        est = QuantileRegressor(quantile=tau, alpha=0.0)
        est.coef_, est.intercept_, est.n_features_in_ = np.eye(3)[col], 0.0, 3
        return est

    rng = np.random.default_rng(8)
    for n_cal, tau in [(57, 0.05), (200, 0.1), (31, 0.25)]:
        levels = (tau, 0.5, 1 - tau)
        q_cal = np.sort(rng.normal(size=(n_cal, 3)), axis=1)
        y_cal = rng.normal(size=n_cal) * rng.uniform(0.5, 2)
        q_test = np.sort(rng.normal(size=(300, 3)), axis=1)
        model = mapie_regression.ConformalizedQuantileRegressor(
            [column(0, tau), column(2, 1 - tau), column(1, 0.5)],
            confidence_level=1 - 2 * tau, prefit=True)
        model.conformalize(q_cal, y_cal)
        _, intervals = model.predict_interval(q_test, symmetric_correction=True)
        shifts, exact = cqr_shifts(q_cal, y_cal, levels)
        ours = apply_shifts(q_test, shifts)
        assert exact
        np.testing.assert_allclose(ours[:, 0], intervals[:, 0, 0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours[:, 2], intervals[:, 1, 0], rtol=0, atol=1e-12)
