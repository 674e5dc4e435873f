"""Statistics for reports: t-intervals, exact paired Wilcoxon tests, ranks, Friedman and Nemenyi.

Pure functions on plain numbers. The t-interval and the Wilcoxon test need no scipy (reports must
work with the core dependencies); the Friedman p-value and the Nemenyi critical difference use
scipy, which the plotting extra needs anyway.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

LOWER_IS_BETTER = frozenset(
    {"ece", "nll", "loss", "rmse", "mae", "mse", "error", "err", "brier", "width",
     "ce", "bpc", "ppl", "rep", "wis", "crossing", "ci95"}
)
"""A metric is lower-is-better when one of the words of its name is in this set."""

TEST_NAME = "exact two-sided Wilcoxon signed-rank test, paired by seed"


def higher_is_better(metric: str) -> bool:
    """Direction of a metric from its name: split on non-alphanumerics, look for an error word.

    ``test_top1``, ``test_map@r`` -> higher; ``test_ece``, ``test_nll@best_val``, ``train_loss``,
    ``test_rmse``, the language-model ``test_ce``, ``test_bpc``, ``test_ppl`` and ``rep_4``,
    the quantile ``test_wis_conformal`` and ``test_crossing_raw``, and a few-shot accuracy's
    95% half-width ``test_ci95_3w1s`` -> lower. Unknown words default
    to higher-is-better. Parameters of a few-shot inference method in a name (after ``:``, up to
    ``@``) are not words of the metric: ``test_acc_5w1s_tim:ce_weight=0.5`` is an accuracy.
    """
    name, _, selection = metric.lower().partition("@")
    words = re.split(r"[^a-z0-9]+", name.split(":")[0] + "@" + selection)
    return not LOWER_IS_BETTER.intersection(words)


def _t_abs_cdf(t: float, df: int) -> float:
    """P(|T| <= t), Student's t with integer ``df``: closed form of Abramowitz & Stegun 26.7.3-4."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2/pi) * (theta + sin(theta) * sum of odd cosine powers)
        term, total = math.cos(theta), 0.0
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * j) / (2 * j + 1)
        return 2.0 / math.pi * (theta + s * total)
    term, total = 1.0, 0.0  # even: sin(theta) * sum of even cosine powers
    for j in range(1, df // 2 + 1):
        total += term
        term *= c2 * (2 * j - 1) / (2 * j)
    return s * total


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value: ``t`` with P(|T| <= t) = confidence (bisection)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    lo, hi = 0.0, 1.0
    while _t_abs_cdf(hi, df) < confidence:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_abs_cdf(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the mean: mean ± t_{n-1} · s / sqrt(n); NaNs with fewer than 2."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    half = t_quantile(len(x) - 1, confidence) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` ascending, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def wilcoxon_signed_rank(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Exact two-sided Wilcoxon signed-rank test of paired ``x`` vs ``y``: (T+, p).

    Wilcoxon (1945). Zero differences are dropped (Wilcoxon's convention), tied |differences|
    get mid-ranks, and the null distribution of T+ (the sum of ranks of positive differences) is
    enumerated exactly over the 2^n equally likely sign patterns of the *observed* ranks, so the
    p-value stays exact under ties. p = min(1, 2 · min(P(T+ <= t), P(T+ >= t))).
    """
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    d = d[d != 0]
    if len(d) == 0:
        return 0.0, 1.0
    doubled = np.rint(2 * _average_ranks(np.abs(d))).astype(int)  # mid-ranks are halves
    t_plus = int(doubled[d > 0].sum())
    counts = np.zeros(int(doubled.sum()) + 1)  # counts[s]: sign patterns with 2·T+ == s
    counts[0] = 1.0
    for r in doubled:  # each rank enters T+ or not; ranks are >= 1, so r >= 2
        with_r = np.zeros_like(counts)
        with_r[r:] = counts[:-r]
        counts += with_r
    total = counts.sum()
    p_low = counts[: t_plus + 1].sum() / total
    p_high = counts[t_plus:].sum() / total
    return t_plus / 2.0, float(min(1.0, 2.0 * min(p_low, p_high)))


def smallest_p(n_pairs: int) -> float:
    """The smallest two-sided p the exact signed-rank test can reach with ``n_pairs`` pairs."""
    return min(1.0, 2.0 ** (1 - n_pairs)) if n_pairs > 0 else 1.0


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, int]:
    """Pair two ``{seed: value}`` maps on their common seeds: (mean a-b, Wilcoxon p, n pairs)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return math.nan, math.nan, 0
    xa = [a[s] for s in seeds]
    xb = [b[s] for s in seeds]
    return float(np.mean(np.subtract(xa, xb))), wilcoxon_signed_rank(xa, xb)[1], len(seeds)


def rank_scores(scores: Sequence[float], higher_better: bool) -> np.ndarray:
    """Rank 1 = best; ties share their mean rank (Demšar 2006, Sec. 3.2.2)."""
    x = np.asarray(scores, dtype=float)
    return _average_ranks(-x if higher_better else x)


def friedman(ranks: np.ndarray) -> tuple[float, float, float]:
    """Friedman test from an N x k matrix of within-block ranks: (chi2_F, F_F, p of F_F).

    Demšar (2006), Eqs. (3)-(4): chi2_F = 12N/(k(k+1)) [sum_j R_j^2 - k(k+1)^2/4], and the
    Iman-Davenport F_F = (N-1) chi2_F / (N(k-1) - chi2_F), F-distributed with (k-1, (k-1)(N-1))
    degrees of freedom; its p-value is the one Demšar recommends reporting.
    """
    from scipy.stats import f as f_dist

    n, k = ranks.shape
    mean_ranks = ranks.mean(axis=0)
    chi2 = 12.0 * n / (k * (k + 1)) * (np.sum(mean_ranks**2) - k * (k + 1) ** 2 / 4.0)
    denom = n * (k - 1) - chi2
    if denom <= 0:  # every block ranks the methods identically
        return float(chi2), math.inf, 0.0
    f_f = (n - 1) * chi2 / denom
    return float(chi2), float(f_f), float(f_dist.sf(f_f, k - 1, (k - 1) * (n - 1)))


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks: q_alpha · sqrt(k(k+1) / (6N)).

    Demšar (2006), Sec. 3.2.2: q_alpha is the studentized range quantile for k groups and
    infinite degrees of freedom divided by sqrt(2).
    """
    from scipy.stats import studentized_range

    q_alpha = studentized_range.ppf(1.0 - alpha, k, math.inf) / math.sqrt(2.0)
    return float(q_alpha * math.sqrt(k * (k + 1) / (6.0 * n)))
