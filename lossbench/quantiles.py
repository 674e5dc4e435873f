"""Predicted quantiles: scores, monotone post-processing and split-conformal calibration.

Pure float64 numpy functions on quantile matrices ``q`` [N, Q] (column j predicts the quantile at
``levels[j]``, levels increasing) and targets ``y`` [N] in the same units. The regression family
scores every run of a quantile loss with ``quantile_scores``; ``lossbench aggregate`` scores the
aggregates of such runs with the same function.

- **WIS**, the weighted interval score of Bracher, Ray, Gneiting & Reich (PLOS Comp. Biol. 2021,
  Eq. 3): ``(1 / (K + 1/2)) (|y - m| / 2 + sum_k alpha_k / 2 IS_alpha_k)`` over K central
  intervals and the median. Since ``alpha / 2 IS_alpha = rho_{alpha/2}(y - l) +
  rho_{1-alpha/2}(y - u)`` (``rho_tau(r) = max(tau r, (tau - 1) r)``, the pinball loss), it is
  ``2 / Q`` times the pinball losses summed over the Q = 2K + 1 levels: the form Fakoor, Kim,
  Mueller, Smola & Tibshirani (JMLR 2023, Sec. 2) use, and the one computed here, so it is
  defined for any level set (for levels symmetric about a median it equals the interval form).
  With the median alone it is the absolute error.
- **Post-processing** (Fakoor et al. 2023, Sec. 4): sorting each row (the rearrangement of
  Chernozhukov, Fernández-Val & Galichon, Econometrica 2010) and isotonic regression of each row
  on the levels; the paper proves neither can increase WIS for any target (its Propositions on
  post sorting and post isotonic regression).
- **CQR**, split-conformal calibration of each symmetric pair of levels (Romano, Patterson &
  Candès, NeurIPS 2019, Eq. 6-7): conformity scores ``E = max(q_lo - y, y - q_hi)`` on a
  calibration set of n examples; both ends move out by the ``ceil((1 - alpha)(n + 1))``-th
  smallest score (``1 - alpha`` = the pair's nominal coverage).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Levels = Sequence[float]


def pinball(q: np.ndarray, y: np.ndarray, levels: Levels) -> np.ndarray:
    """``rho_tau(y - q_tau)`` [N, Q] (Koenker & Bassett 1978)."""
    tau = np.asarray(levels, dtype=np.float64)
    r = np.asarray(y, dtype=np.float64)[:, None] - np.asarray(q, dtype=np.float64)
    return np.maximum(tau * r, (tau - 1.0) * r)


def wis(q: np.ndarray, y: np.ndarray, levels: Levels) -> np.ndarray:
    """Weighted interval score per example [N]: ``2 / Q`` x the summed pinball losses."""
    return 2.0 * pinball(q, y, levels).mean(axis=1)


def crossed(q: np.ndarray) -> np.ndarray:
    """Per example [N]: whether some predicted quantile is below the one of a lower level."""
    return np.any(np.diff(q, axis=1) < 0, axis=1)


def level_coverage(q: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per level [Q]: the fraction of targets at or below the predicted quantile (nominal: the
    level itself)."""
    return (np.asarray(y)[:, None] <= q).mean(axis=0)


def sort_quantiles(q: np.ndarray) -> np.ndarray:
    """Post sorting: each row in increasing order."""
    return np.sort(q, axis=1)


_ISOTONIC_CELLS = 1 << 22
"""Rows x Q^2 cells per chunk of ``isotonic_quantiles`` (32 MiB of float64)."""


def isotonic_quantiles(q: np.ndarray) -> np.ndarray:
    """Post isotonic regression: each row's least-squares non-decreasing fit (equal weights).

    By the max-min formula ``iso_j = max_{i<=j} min_{k>=j} mean(q_i..q_k)`` (Robertson, Wright &
    Dykstra, Order Restricted Statistical Inference, 1988, Thm. 1.4.4), vectorised over rows:
    O(Q^2) per row, which beats a Python pool-adjacent-violators loop for the few levels a
    quantile head has.
    """
    q = np.asarray(q, dtype=np.float64)
    n, m = q.shape
    csum = np.concatenate([np.zeros((n, 1)), np.cumsum(q, axis=1)], axis=1)
    i, k = np.arange(m)[:, None], np.arange(m)[None, :]
    valid = k >= i
    length = np.where(valid, k - i + 1, 1)
    out = np.empty_like(q)
    step = max(1, _ISOTONIC_CELLS // (m * m))
    for s in range(0, n, step):
        c = csum[s : s + step]
        means = np.where(valid, (c[:, None, 1:] - c[:, :m, None]) / length, np.inf)
        tail_min = np.minimum.accumulate(means[:, :, ::-1], axis=2)[:, :, ::-1]
        out[s : s + step] = np.where(valid, tail_min, -np.inf).max(axis=1)
    return out


def symmetric_pairs(levels: Levels) -> list[tuple[int, int]]:
    """Column pairs (lo, hi) with ``levels[lo] + levels[hi] = 1``, ``levels[lo] < 1/2``."""
    return [(a, b) for a, lo in enumerate(levels) for b, hi in enumerate(levels)
            if lo < 0.5 and math.isclose(lo + hi, 1.0, abs_tol=1e-9)]


def conformal_rank(nominal: float, n: int) -> int:
    """The order statistic CQR takes: ``ceil(nominal (n + 1))`` (rounded to 9 decimals first,
    so a product such as 0.9 x 10 is 9, not 9.000000000000002 -> 10)."""
    return math.ceil(round(nominal * (n + 1), 9))


def cqr_shifts(q_cal: np.ndarray, y_cal: np.ndarray, levels: Levels
               ) -> tuple[dict[tuple[int, int], float], bool]:
    """Per symmetric pair, how far CQR moves both ends out (negative: in), fitted on a
    calibration set; and whether every pair was exact. A pair whose rank ``ceil((1 - alpha)
    (n + 1))`` exceeds n would need an infinite interval; it takes the largest score instead
    (not exact: the finite-sample guarantee does not hold for it)."""
    y_cal = np.asarray(y_cal, dtype=np.float64)
    n = len(y_cal)
    shifts: dict[tuple[int, int], float] = {}
    exact = True
    for lo, hi in symmetric_pairs(levels):
        scores = np.maximum(q_cal[:, lo] - y_cal, y_cal - q_cal[:, hi])
        rank = conformal_rank(levels[hi] - levels[lo], n)
        if rank > n:
            exact, rank = False, n
        shifts[(lo, hi)] = float(np.partition(scores, rank - 1)[rank - 1])
    return shifts, exact


def apply_shifts(q: np.ndarray, shifts: dict[tuple[int, int], float]) -> np.ndarray:
    """The quantiles with each pair's ends moved out by its shift; other levels unchanged."""
    out = np.array(q, dtype=np.float64)
    for (lo, hi), shift in shifts.items():
        out[:, lo] -= shift
        out[:, hi] += shift
    return out


POSTPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "raw": lambda q: np.asarray(q, dtype=np.float64),
    "sorted": sort_quantiles,
    "isotonic": isotonic_quantiles,
}
"""The monotone post-processings; ``conformal`` is CQR applied to the sorted quantiles."""


def level_name(tau: float) -> str:
    return f"{tau:g}"


@dataclass(frozen=True)
class QuantileScores:
    """Test-split scores of one set of quantile predictions, and whether CQR was exact."""

    metrics: dict[str, float]
    conformal_exact: bool | None
    """None when the levels hold no symmetric pair (no CQR)."""


def quantile_scores(levels: Levels, q_val: np.ndarray, y_val: np.ndarray, q_test: np.ndarray,
                    y_test: np.ndarray) -> QuantileScores:
    """WIS, crossing and coverage (in %) on the test split of the raw, sorted (unsuffixed: what
    the loss predicts), isotonic and conformal (CQR fitted on the validation split, applied to
    the sorted quantiles) predictions.

    Names: ``wis``/``wis_raw``/``wis_isotonic``/``wis_conformal``; ``crossing_raw`` and
    ``crossing_conformal`` (% of examples with crossed quantiles; sorted and isotonic never
    cross); ``coverage_<variant>`` and ``width_conformal`` of the outermost interval (the sorted
    one is the family's ``coverage``/``width``); ``qcov_<level>`` and ``qcov_<level>_conformal``
    (% of targets at or below each predicted quantile).
    """
    y_test = np.asarray(y_test, dtype=np.float64)
    out: dict[str, float] = {}
    variants = {name: fn(q_test) for name, fn in POSTPROCESS.items()}
    shifts, exact = cqr_shifts(sort_quantiles(q_val), y_val, levels)
    if shifts:
        variants["conformal"] = apply_shifts(variants["sorted"], shifts)
    for name, q in variants.items():
        tag = "" if name == "sorted" else f"_{name}"
        out[f"wis{tag}"] = float(wis(q, y_test, levels).mean())
        if name in ("raw", "conformal"):
            out[f"crossing{tag}"] = 100.0 * float(crossed(q).mean())
        if len(levels) > 1 and name != "sorted":
            inside = (y_test >= q[:, 0]) & (y_test <= q[:, -1])
            out[f"coverage{tag}"] = 100.0 * float(inside.mean())
        if name in ("sorted", "conformal"):
            cover = level_coverage(q, y_test)
            out |= {f"qcov_{level_name(t)}{tag}": 100.0 * float(c)
                    for t, c in zip(levels, cover, strict=True)}
        if name == "conformal":
            out["width_conformal"] = float((q[:, -1] - q[:, 0]).mean())
    return QuantileScores(out, exact if shifts else None)
