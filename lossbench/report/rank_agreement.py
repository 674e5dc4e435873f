"""Can a cheap tier pick the loss? Kendall's tau between two loss rankings of the same settings.

For every setting (a column of ``compare``: task, noise rate, ...) the methods both results have
are ranked by their mean over seeds in each, and Kendall's tau-b between the two orders says
how well one ranking predicts the other (1: same order, 0: unrelated, -1: reversed). Its 95%
interval comes from a bootstrap over seeds: each method's seeds are resampled with replacement,
in each result independently, and tau is recomputed (``B`` times, a fixed generator: the same
numbers every time). Typical use: the ``quick`` tier's results against the ``paper`` tier's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lossbench.errors import require
from lossbench.report.compare import compare

BOOTSTRAP = 1000
SEED = 20231121


@dataclass(frozen=True)
class Agreement:
    setting: str
    methods: int
    tau: float
    low: float
    high: float
    best_a: str
    best_b: str


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either ranking handled), NaN when a ranking is constant."""
    from scipy.stats import kendalltau

    if len(a) < 2:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def _means(values: Mapping[str, np.ndarray], methods: Sequence[str],
           rng: np.random.Generator | None) -> list[float]:
    out = []
    for m in methods:
        v = values[m]
        if rng is not None:
            v = v[rng.integers(0, len(v), len(v))]
        out.append(float(v.mean()))
    return out


def _seed_values(result: object, setting: str) -> dict[str, np.ndarray]:
    values = {m: np.array(list(per_seed.values()), dtype=float)
              for (s, m), per_seed in result.values.items()  # type: ignore[attr-defined]
              if s == setting and per_seed}
    return {m: v[np.isfinite(v)] for m, v in values.items() if np.isfinite(v).any()}


def rank_agreement(a: pd.DataFrame, b: pd.DataFrame, metric: str | None, by: Sequence[str],
                   bootstrap: int = BOOTSTRAP) -> list[Agreement]:
    """Per setting present in both ``a`` and ``b``: tau between the two method rankings."""
    ra, rb = compare(a, metric, by), compare(b, metric, by)
    common = [s for s in ra.settings if s in rb.settings]
    require(bool(common), "the two results share no setting (compare's columns: "
                          f"{', '.join(ra.settings[:4])} vs {', '.join(rb.settings[:4])})")
    out = []
    rng = np.random.default_rng(SEED)
    for setting in common:
        va, vb = _seed_values(ra, setting), _seed_values(rb, setting)
        methods = sorted(set(va) & set(vb))
        if len(methods) < 2:
            continue
        tau = kendall_tau(_means(va, methods, None), _means(vb, methods, None))
        draws = [kendall_tau(_means(va, methods, rng), _means(vb, methods, rng))
                 for _ in range(bootstrap)]
        draws = [d for d in draws if np.isfinite(d)]
        low, high = (np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan))
        sign = 1.0 if ra.metrics[setting] and _higher(ra.metrics[setting]) else -1.0
        best_a = max(methods, key=lambda m: sign * float(va[m].mean()))
        best_b = max(methods, key=lambda m: sign * float(vb[m].mean()))
        out.append(Agreement(setting, len(methods), tau, float(low), float(high), best_a,
                             best_b))
    require(bool(out), "no setting has two methods with ok runs in both results")
    return out


def _higher(metric: str) -> bool:
    from lossbench.report.stats import higher_is_better

    return higher_is_better(metric)
