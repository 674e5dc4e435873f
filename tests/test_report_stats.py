"""Report statistics against scipy and against the numbers printed in Demšar (2006)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from lossbench.report.stats import (
    friedman,
    higher_is_better,
    nemenyi_cd,
    paired,
    rank_scores,
    smallest_p,
    t_interval,
    t_quantile,
    wilcoxon_signed_rank,
)


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_t_quantile_matches_scipy(confidence: float) -> None:
    for df in [*range(1, 41), 57, 250]:
        expected = sp.t.ppf(0.5 + confidence / 2, df)
        assert t_quantile(df, confidence) == pytest.approx(expected, rel=1e-9)


def test_t_interval_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        x = rng.normal(70, 3, size=n)
        expected = sp.t.interval(0.95, n - 1, loc=x.mean(), scale=sp.sem(x))
        assert t_interval(x) == pytest.approx(expected, rel=1e-9)
    assert all(math.isnan(v) for v in t_interval([1.0]))


def test_wilcoxon_matches_scipy_exact_without_ties() -> None:
    rng = np.random.default_rng(1)
    for n in range(1, 16):
        x, y = rng.normal(size=n), rng.normal(size=n) + rng.uniform(0, 1)
        stat, p = wilcoxon_signed_rank(x, y)
        ref = sp.wilcoxon(x, y, method="exact", alternative="two-sided")
        assert p == pytest.approx(ref.pvalue, rel=1e-12)
        assert stat == pytest.approx(np.sum(sp.rankdata(np.abs(x - y))[x - y > 0]))


def test_wilcoxon_with_ties_and_zeros_is_the_exact_permutation_test() -> None:
    """Zeros dropped, mid-ranks for ties, signs enumerated: scipy's exact permutation test."""
    d = np.array([1.0, -1.0, 2.0, 2.0, 2.0, 0.0, 3.5, -0.5, 4.0])
    nonzero = d[d != 0]
    ranks = sp.rankdata(np.abs(nonzero))

    def t_plus(signs: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sum(ranks * (signs > 0), axis=axis)

    ref = sp.permutation_test((np.sign(nonzero),), t_plus, permutation_type="samples",
                              n_resamples=np.inf, alternative="two-sided")
    assert wilcoxon_signed_rank(d, np.zeros_like(d))[1] == pytest.approx(ref.pvalue, rel=1e-12)


def test_wilcoxon_extremes_and_smallest_p() -> None:
    assert wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0]) == (0.0, 1.0)
    for n in range(1, 9):
        assert wilcoxon_signed_rank(np.arange(n) + 1.0, np.zeros(n))[1] == smallest_p(n)
    assert smallest_p(3) == 0.25 and smallest_p(5) > 0.05 > smallest_p(6)


def test_paired_uses_common_seeds_only() -> None:
    delta, p, n = paired({0: 10.0, 1: 12.0, 2: 9.0}, {1: 11.0, 2: 7.0, 3: 0.0})
    assert n == 2 and delta == pytest.approx(((12 - 11) + (9 - 7)) / 2)
    assert p == wilcoxon_signed_rank([12.0, 9.0], [11.0, 7.0])[1]
    assert math.isnan(paired({0: 1.0}, {1: 1.0})[0])


@pytest.mark.parametrize(
    ("metric", "higher"),
    [("test_top1", True), ("test_top1@best_val", True), ("test_map@r", True),
     ("test_recall@1", True), ("test_ece", False), ("test_nll@best_val", False),
     ("train_loss", False), ("test_rmse", False), ("test_mae", False),
     ("test_wis", False), ("test_wis_conformal@best_val", False), ("test_crossing_raw", False),
     ("test_pass@64", True), ("test_ci95_3w1s", False), ("test_acc_3w1s_tim", True)],
)
def test_metric_direction(metric: str, higher: bool) -> None:
    assert higher_is_better(metric) is higher


def test_rank_scores_match_scipy_rankdata() -> None:
    scores = np.array([70.0, 72.0, 70.0, 65.0, 72.0])
    assert rank_scores(scores, True) == pytest.approx(sp.rankdata(-scores))
    assert rank_scores(scores, False) == pytest.approx(sp.rankdata(scores))
    assert rank_scores(np.array([1.0, -np.inf, -np.inf]), True) == pytest.approx([1, 2.5, 2.5])


def test_friedman_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    data = rng.normal(size=(12, 5)) + np.arange(5) * 0.4  # 12 blocks (tasks), 5 methods
    ranks = np.vstack([rank_scores(row, False) for row in data])
    chi2, f_f, p = friedman(ranks)
    assert chi2 == pytest.approx(sp.friedmanchisquare(*data.T).statistic, rel=1e-12)
    n, k = ranks.shape
    assert f_f == pytest.approx((n - 1) * chi2 / (n * (k - 1) - chi2))
    assert p == pytest.approx(sp.f.sf(f_f, k - 1, (k - 1) * (n - 1)))


def test_nemenyi_matches_demsar_table_and_example() -> None:
    """Demšar (2006) Table 5(a) q_0.05 for k = 2..10, and the worked example CD = 1.25."""
    table = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]  # 3 decimals
    for k, q in zip(range(2, 11), table, strict=True):
        assert nemenyi_cd(k, 6) / math.sqrt(k * (k + 1) / 36) == pytest.approx(q, abs=1e-3)
    assert round(nemenyi_cd(4, 14), 2) == 1.25
