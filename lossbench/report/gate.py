"""The CI gate: fail when a (task, loss, metric) got worse than its baseline by more than noise.

A baseline is a small CSV summary of trusted results, one row per (task, budget, noise kind,
noise rate, loss, loss_params, metric) with ``mean, std, n`` over seeds (``task, loss,
loss_params, metric, mean, std, n`` are required; the condition columns are optional and, when
present, must match too). An entry *regresses* when, for a higher-is-better metric,

    new_mean < baseline_mean - max(tolerance, k * std),  std = max(baseline std, new std)

(mirrored for lower-is-better metrics, see ``stats.higher_is_better``). The larger of the two
seed spreads is used so that a noisier side widens the band; a single seed's missing std counts
as 0, leaving ``tolerance`` alone. An entry also fails when the results have no ok run of it
(missing) or when runs that diverged or failed leave it fewer ok seeds than the baseline's n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lossbench.errors import UserError, require
from lossbench.report.compare import check_one_run_per_seed, metric_per_family
from lossbench.report.stats import higher_is_better

CONDITIONS = ["task", "budget", "noise_kind", "noise_rate"]
KEY = [*CONDITIONS, "loss", "loss_params", "metric"]
REQUIRED = ["task", "loss", "loss_params", "metric", "mean", "std", "n"]
BASELINE_COLUMNS = [*KEY, "mean", "std", "n"]
OK, REGRESSED, MISSING, NOT_OK = "ok", "REGRESSED", "MISSING", "NOT OK"


def _normalise(table: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """Key columns as comparable values (CSV reads '' as NaN and floats may print differently)."""
    table = table.copy()
    for col in key:
        if col == "noise_rate":
            table[col] = pd.to_numeric(table[col]).astype(float).round(6)
        else:
            table[col] = ["" if pd.isna(v) else str(v) for v in table[col]]
    return table


def summary_table(runs: pd.DataFrame, metrics: Sequence[str] = ()) -> pd.DataFrame:
    """Baseline rows from results: mean, std, n of the ok runs per entry.

    ``metrics`` default to each family's primary metric (test_top1 for classification).
    """
    chosen = list(metrics) or sorted(set(metric_per_family(runs, None).values()))
    available = set(runs.loc[runs["status"] == "ok", "metric"].dropna())
    unknown = [m for m in chosen if m not in available]
    require(not unknown, f"unknown metric '{', '.join(unknown)}'; available: "
                         f"{', '.join(sorted(available))}")
    check_one_run_per_seed(runs.drop_duplicates("run_key"), KEY[:-1])
    ok = _normalise(runs[(runs["status"] == "ok") & runs["metric"].isin(chosen)], KEY)
    table = ok.groupby(KEY, sort=True)["value"].agg(["mean", "std", "count"]).reset_index()
    return table.rename(columns={"count": "n"})[BASELINE_COLUMNS]


def read_baseline(path: Path) -> pd.DataFrame:
    require(path.is_file(), f"baseline '{path}' does not exist; write one with "
                            f"`lossbench gate --write-baseline {path} RESULTS`")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"baseline '{path}' is not a CSV table: {err}") from None
    missing = [c for c in REQUIRED if c not in table.columns]
    require(not missing, f"baseline '{path}' lacks columns {', '.join(missing)} (needs "
                         f"{', '.join(REQUIRED)})")
    require(len(table) > 0, f"baseline '{path}' has no rows")
    numeric = ["mean", "std", "n"] + (["noise_rate"] if "noise_rate" in table else [])
    for col in numeric:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = table.loc[values.isna() & table[col].notna(), col]
        if not bad.empty:
            raise UserError(f"baseline '{path}': column {col} has a non-numeric value "
                            f"{bad.iloc[0]!r} (row {bad.index[0] + 2}); expected numbers")
        table[col] = values
    require(table["mean"].notna().all() and table["n"].notna().all(),
            f"baseline '{path}': every row needs a mean and an n")
    negative = table.loc[table["std"] < 0, "std"]
    if not negative.empty:
        raise UserError(f"baseline '{path}': std {negative.iloc[0]:g} (row "
                        f"{negative.index[0] + 2}) is negative")
    not_count = table.loc[(table["n"] < 1) | (table["n"] % 1 != 0), "n"]
    if not not_count.empty:
        raise UserError(f"baseline '{path}': n {not_count.iloc[0]:g} (row "
                        f"{not_count.index[0] + 2}) is not a count of seeds (an integer >= 1)")
    return table


@dataclass
class GateResult:
    """One row per baseline entry with its verdict, and one message per failing entry."""

    rows: pd.DataFrame
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


def _entry_name(row: pd.Series) -> str:
    params = f" ({row['loss_params']})" if row["loss_params"] else ""
    return f"{row['task']} {row['loss']}{params} {row['metric']}"


def _verdict(row: pd.Series, tolerance: float, k: float) -> tuple[str, float, str]:
    """(status, allowed signed change, failure message or '') of one joined baseline row."""
    higher = higher_is_better(row["metric"])
    spread = max(0.0 if math.isnan(s) else s for s in (row["std"], row["new_std"]))
    margin = max(tolerance, k * spread)
    allowed = -margin if higher else margin
    name = _entry_name(row)
    if row["new_n"] == 0:
        return MISSING, allowed, (f"{MISSING}: {name}: no ok run in the results (baseline has "
                                  f"n={row['n']:g})")
    if row["not_ok"] and row["new_n"] < row["n"]:
        return NOT_OK, allowed, (f"{NOT_OK}: {name}: {row['not_ok']} run(s) {row['reasons']}, "
                                 f"{row['new_n']} ok vs n={row['n']:g} in the baseline")
    change = row["new_mean"] - row["mean"]
    if (change < allowed) if higher else (change > allowed):
        return REGRESSED, allowed, (
            f"{REGRESSED}: {name}: {row['new_mean']:.4g} vs baseline {row['mean']:.4g} "
            f"(change {change:+.4g}, {'higher' if higher else 'lower'} is better; allowed "
            f"{allowed:+.4g} = max(tolerance {tolerance:g}, k {k:g} x std {spread:.4g}))")
    return OK, allowed, ""


def gate(baseline: pd.DataFrame, runs: pd.DataFrame, tolerance: float = 1.0, k: float = 2.0,
         metrics: Sequence[str] = ()) -> GateResult:
    """Check every baseline entry (of ``metrics``, default all) against the results ``runs``."""
    require(tolerance >= 0 and k >= 0, f"--tolerance and --k must be >= 0, got {tolerance}, {k}")
    unknown = [m for m in metrics if m not in set(baseline["metric"])]
    require(not unknown, f"metric '{', '.join(unknown)}' is not in the baseline; it has: "
                         f"{', '.join(sorted(set(baseline['metric'])))}")
    if metrics:
        baseline = baseline[baseline["metric"].isin(metrics)]
    key = [c for c in KEY if c in baseline.columns]
    conditions = [c for c in CONDITIONS if c in baseline.columns]
    baseline = _normalise(baseline, key)
    runs = _normalise(runs, key)

    base_sets = set(baseline[conditions].itertuples(index=False, name=None))
    run_sets = set(runs[conditions].itertuples(index=False, name=None))
    if not base_sets & run_sets:
        def show(s: set[tuple[object, ...]], limit: int = 4) -> str:
            names = sorted("/".join(map(str, t)) for t in s)
            return "; ".join(names[:limit]) + (f"; … ({len(names)} in all)"
                                                if len(names) > limit else "")

        raise UserError(f"the baseline is for a different task set: baseline has "
                        f"{show(base_sets)}, results have {show(run_sets)} "
                        f"({'/'.join(conditions)})")

    check_one_run_per_seed(runs.drop_duplicates("run_key"), key[:-1])
    ok = runs[runs["status"] == "ok"]
    new = (ok.groupby(key)["value"].agg(["mean", "std", "count"])
           .rename(columns={"mean": "new_mean", "std": "new_std", "count": "new_n"}))
    # A run that did not finish has no realised-noise report, so its noise columns are not
    # trustworthy: it counts against every entry of its task, budget and method.
    entry = [c for c in key if c not in ("metric", "noise_kind", "noise_rate")]
    bad = runs[runs["status"] != "ok"].drop_duplicates("run_key")
    not_ok = bad.groupby(entry).agg(not_ok=("run_key", "size"),
                                    reasons=("status", lambda s: "/".join(sorted(set(s)))))
    rows = (baseline.merge(new.reset_index(), on=key, how="left")
            .merge(not_ok.reset_index(), on=entry, how="left")
            .fillna({"new_n": 0, "not_ok": 0, "reasons": ""}))
    rows["new_n"] = rows["new_n"].astype(int)
    rows["not_ok"] = rows["not_ok"].astype(int)
    verdicts = [_verdict(r, tolerance, k) for _, r in rows.iterrows()]
    rows["status"] = [v[0] for v in verdicts]
    rows["allowed"] = [v[1] for v in verdicts]
    rows["change"] = rows["new_mean"] - rows["mean"]
    return GateResult(rows, [v[2] for v in verdicts if v[2]])
