"""Compare methods across settings: mean ± std, 95% CI, paired difference to a baseline, ranks.

A *method* is (loss, loss_params). A *setting* is a column of the comparison: the ``--by``
columns (default: task), plus any run condition (budget, noise kind/rate, results folder) that
would otherwise put two runs of the same method and seed into one cell -- a noise-rate sweep of one
task becomes one setting per rate instead of being averaged together.

Runs that are not ``ok`` are never averaged away: every cell counts its runs, diverged and
failed ones, and seeds other methods have but it lacks. A method whose runs all diverged on a
setting ranks last there (divergence is a result); one whose runs all crashed is unranked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tabulate import tabulate

from lossbench.errors import UserError, require
from lossbench.families import FAMILIES
from lossbench.report.stats import (
    TEST_NAME,
    higher_is_better,
    paired,
    rank_scores,
    smallest_p,
    t_interval,
)
from lossbench.report.summary import mean_std

BY_COLUMNS = ("task", "family", "budget", "noise_kind", "noise_rate", "source", "device",
              "git_commit", "lossbench_version", "torch_version", "setting")
"""``setting``: a suite's column labels (``report.suite_table.label_settings``)."""
CONDITIONS = ("task", "budget", "noise_kind", "noise_rate", "source")
"""Run conditions added to a setting when they are needed to keep cells to one run per seed."""
ALPHA = 0.05
PARTIAL = "⚠"


def _text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_one_run_per_seed(runs: pd.DataFrame, cols: Sequence[str]) -> None:
    """Refuse results where one (``cols``, seed) cell holds several runs (configs that differ
    in what the columns do not show, e.g. a ``--set`` value): averaging them would mix two
    experiments into one number."""
    keys = runs.groupby([*cols, "seed"], dropna=False)["run_key"].unique()
    clash = keys[keys.map(len) > 1]
    if len(clash):
        *where, seed = clash.index[0]
        raise UserError(f"runs {', '.join(clash.iloc[0])} are all seed {seed} at "
                        f"{'/'.join(map(_text, where))} but differ in config (e.g. a --set "
                        "override); keep such runs in separate results folders")


def assign_settings(runs: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """``runs`` with a ``setting`` label column (see the module docstring); rows sorted by it."""
    bad = [c for c in by if c not in BY_COLUMNS]
    require(len(by) > 0 and not bad,
            f"bad --by '{','.join(bad or by)}'; accepted: {', '.join(BY_COLUMNS)}")
    one = runs.drop_duplicates("run_key")
    cols = list(dict.fromkeys(by))
    for col in CONDITIONS:
        if col not in cols and (
            one.groupby([*cols, "method", "seed"], dropna=False)[col].nunique() > 1
        ).any():
            cols.append(col)
    check_one_run_per_seed(one, [*cols, "method"])
    base = cols[: len(dict.fromkeys(by))]
    combos = one[cols].drop_duplicates().sort_values(cols, kind="stable")
    # an added condition is named only where it varies (a sweep), not on every other task
    shown = {c: combos.groupby(base, dropna=False)[c].transform("nunique") > 1
             for c in cols[len(base):]}
    labels = [
        " · ".join([_text(row[c]) for c in base]
                   + [f"{c}={_text(row[c])}" for c in shown if shown[c].iloc[i]])
        for i, row in enumerate(combos.to_dict("records"))
    ]
    label = pd.Categorical(labels, categories=list(dict.fromkeys(labels)))
    merged = runs.merge(combos.assign(_setting=label), on=cols)
    # a ``setting`` column given as --by (a suite's labels) is replaced by its label
    merged = merged.drop(columns=["setting"], errors="ignore").rename(
        columns={"_setting": "setting"})
    return merged.sort_values("setting", kind="stable")


def available_metrics(runs: pd.DataFrame) -> list[str]:
    return sorted(runs.loc[runs["status"] == "ok", "metric"].dropna().unique())


def metric_per_family(runs: pd.DataFrame, metric: str | None) -> dict[str, str]:
    """The metric each family is compared on: ``metric``, or the family's primary summary metric.

    With ``metric`` given, families that do not report it are left out. A family none of whose
    runs finished is kept (its cells then show the failures) when its declared summary metrics
    include the one compared.
    """
    available = available_metrics(runs)
    require(len(available) > 0, "no finished (ok) runs in the results")
    require(not metric or metric in available,
            f"unknown metric '{metric}'; available: {', '.join(available)}")
    chosen = {}
    for family, group in runs.groupby("family"):
        reported = set(group.loc[group["status"] == "ok", "metric"].dropna())
        declared = FAMILIES.get(family).tags.get("summary", ()) if family in FAMILIES else ()
        candidates = [metric] if metric else list(declared)
        usable = [m for m in candidates if m in reported or (not reported and m in declared)]
        if usable:
            chosen[str(family)] = usable[0]
        else:
            require(bool(metric), f"no default metric for family '{family}'; pass --metric "
                                  f"(available: {', '.join(available)})")
    return chosen


@dataclass
class Comparison:
    """Per (setting, method) statistics, per-method average ranks, and the per-seed values."""

    cells: pd.DataFrame
    ranks: pd.DataFrame
    settings: list[str]
    metrics: dict[str, str]
    baseline: str | None
    values: dict[tuple[str, str], dict[int, float]]

    def versus(self, setting: str, method: str, other: str) -> tuple[float, float, int]:
        """Paired by seed: (mean difference method - other, Wilcoxon p, n pairs)."""
        return paired(self.values.get((setting, method), {}), self.values.get((setting, other), {}))

    @property
    def methods(self) -> list[str]:
        return list(self.ranks["method"])


def _cell(group: pd.DataFrame) -> dict[str, float]:
    ok = group.loc[(group["status"] == "ok") & group["value"].notna(), "value"]
    lo, hi = t_interval(ok.to_numpy())
    return {
        "n_runs": len(group), "n_ok": len(ok),
        "n_diverged": int((group["status"] == "diverged").sum()),
        "n_failed": int((~group["status"].isin(["ok", "diverged"])).sum()),
        "mean": float(ok.mean()) if len(ok) else math.nan,
        "std": float(ok.std(ddof=1)) if len(ok) > 1 else math.nan,
        "ci_low": lo, "ci_high": hi,
    }


def _rank_setting(cells: pd.DataFrame, higher: bool) -> pd.Series:
    """Rank by mean; methods whose runs all diverged share the last places; crashed: unranked."""
    ranks = pd.Series(np.nan, index=cells.index)
    scored = cells["n_ok"] > 0
    ranks[scored] = rank_scores(cells.loc[scored, "mean"].to_numpy(), higher)
    diverged = ~scored & (cells["n_diverged"] > 0)
    first, count = int(scored.sum()) + 1, int(diverged.sum())
    ranks[diverged] = first + (count - 1) / 2.0
    return ranks


def resolve_baseline(methods: Sequence[str], baseline: str | None) -> str | None:
    """``baseline`` if it is a method in the results; by default ``ce`` when present, else none."""
    if baseline is None:
        return "ce" if "ce" in methods else None
    require(baseline in methods,
            f"unknown baseline '{baseline}'; methods in the results: {', '.join(methods)}")
    return baseline


def compare(runs: pd.DataFrame, metric: str | Mapping[str, str] | None = None,
            by: Sequence[str] = ("task",), baseline: str | None = None) -> Comparison:
    """Everything ``lossbench compare`` shows, from a loaded runs table.

    ``metric``: a metric name, None for each family's primary metric, or an already resolved
    ``{family: metric}`` (``metric_per_family``).
    """
    metrics = metric if isinstance(metric, Mapping) else metric_per_family(runs, metric)
    runs = assign_settings(runs[runs["family"].isin(metrics)], by)
    one = runs.drop_duplicates("run_key")[["run_key", "setting", "family", "method", "seed",
                                           "status"]]
    chosen = runs[runs["metric"] == runs["family"].map(metrics)][["run_key", "value"]]
    per_run = one.merge(chosen, on="run_key", how="left")
    setting_metric = per_run.groupby("setting", observed=True)["family"].unique()
    mixed = setting_metric[setting_metric.map(len) > 1]
    require(mixed.empty, f"setting '{mixed.index[0] if len(mixed) else ''}' mixes task families; "
                         "add task to --by")
    metric_of = {str(s): metrics[str(f[0])] for s, f in setting_metric.items()}

    rows = []
    for (setting, method), group in per_run.groupby(["setting", "method"], observed=True):
        rows.append({"setting": str(setting), "metric": metric_of[str(setting)],
                     "method": method, **_cell(group)})
    cells = pd.DataFrame(rows)
    cells["n_seeds"] = cells.groupby("setting")["n_runs"].transform("max")
    cells["rank"] = np.nan
    for setting, group in cells.groupby("setting", sort=False):
        cells.loc[group.index, "rank"] = _rank_setting(group, higher_is_better(metric_of[setting]))

    ok = per_run[(per_run["status"] == "ok") & per_run["value"].notna()]
    values = {(str(s), str(m)): dict(zip(g["seed"], g["value"], strict=True))
              for (s, m), g in ok.groupby(["setting", "method"], observed=True)}
    base = resolve_baseline(sorted(cells["method"].unique()), baseline)
    if base is not None:
        tests = [paired(values.get((s, m), {}), values.get((s, base), {})) if m != base
                 else (math.nan, math.nan, 0)
                 for s, m in zip(cells["setting"], cells["method"], strict=True)]
        cells[["delta", "p", "n_pairs"]] = pd.DataFrame(tests, index=cells.index)
    ranks = (cells.dropna(subset=["rank"]).groupby("method")["rank"].agg(["mean", "size"])
             .rename(columns={"mean": "avg_rank", "size": "n_ranked"})
             .reindex(cells["method"].unique()).reset_index()
             .sort_values(["avg_rank", "method"], na_position="last", kind="stable")
             .fillna({"n_ranked": 0}).astype({"n_ranked": int}).reset_index(drop=True))
    order = {s: i for i, s in enumerate(metric_of)}
    cells = (cells.merge(ranks, on="method")
             .sort_values(["setting", "avg_rank", "method"], kind="stable",
                          key=lambda col: col.map(order) if col.name == "setting" else col)
             .reset_index(drop=True))
    return Comparison(cells, ranks, list(metric_of), metric_of, base, values)


def count_text(cell: pd.Series) -> str:
    """``n=5``, or ``n=2/5 ⚠ 1 diverged, 2 not run`` when the cell lacks seeds others have."""
    if cell["n_ok"] == cell["n_seeds"]:
        return f"n={cell['n_ok']}"
    why = [f"{cell[k]} {word}" for k, word in (("n_diverged", "diverged"), ("n_failed", "failed"))
           if cell[k]]
    if cell["n_seeds"] > cell["n_runs"]:
        why.append(f"{cell['n_seeds'] - cell['n_runs']} not run")
    return f"n={cell['n_ok']}/{cell['n_seeds']} {PARTIAL} " + ", ".join(why)


def _delta_text(cell: pd.Series, baseline: str | None) -> str:
    if baseline is None:
        return ""
    if cell["method"] == baseline:
        return "baseline"
    if cell["n_pairs"] == 0:
        return "Δ — (no common seeds)"
    return f"Δ {cell['delta']:+.2f} p={cell['p']:.3g}"


def _ci_text(cell: pd.Series) -> str:
    return "" if math.isnan(cell["ci_low"]) else f"[{cell['ci_low']:.2f}, {cell['ci_high']:.2f}]"


def _rank_text(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:g}"


def _avg_rank_text(row: pd.Series, n_settings: int) -> str:
    if math.isnan(row["avg_rank"]):
        return "—"
    over = f" ({row['n_ranked']}/{n_settings} settings)" if row["n_ranked"] < n_settings else ""
    return f"{row['avg_rank']:.2f}{over}"


def grid(result: Comparison) -> list[list[str]]:
    """Rows method x columns setting (+ average rank) of multi-line cell texts."""
    by_key = {(c["setting"], c["method"]): c for _, c in result.cells.iterrows()}
    rows = []
    for _, r in result.ranks.iterrows():
        row = [r["method"]]
        for setting in result.settings:
            cell = by_key.get((setting, r["method"]))
            if cell is None:
                row.append("— not run")
                continue
            ci = _ci_text(cell)
            lines = [mean_std(cell["mean"], cell["std"]), count_text(cell), ci and f"95% CI {ci}",
                     _delta_text(cell, result.baseline), f"rank {_rank_text(cell['rank'])}"]
            row.append("\n".join(line for line in lines if line))
        rows.append([*row, _avg_rank_text(r, len(result.settings))])
    return rows


def notes(result: Comparison) -> list[str]:
    """What the numbers mean, and what the seeds allow one to conclude."""
    directions = {m: "higher" if higher_is_better(m) else "lower" for m in result.metrics.values()}
    out = [
        "mean ± std over ok seeds; 95% CI: Student-t interval; rank 1 = best by mean ("
        + ", ".join(f"{m}: {d} is better" for m, d in directions.items())
        + "); runs that all diverged rank last; avg rank over settings.",
        f"{PARTIAL}: the cell has fewer ok seeds than the setting's most-run method "
        "(diverged, failed or not run).",
    ]
    if result.baseline is not None:
        out.append(f"Δ: mean paired difference to {result.baseline} over common seeds; p: "
                   f"{TEST_NAME} (uncorrected for multiple comparisons).")
        pairs = int(result.cells["n_pairs"].max())
        if smallest_p(pairs) > ALPHA:
            out.append(f"with {pairs} paired seeds the smallest attainable p is "
                       f"{smallest_p(pairs):.3g} > {ALPHA}: no difference can be significant; "
                       "run >= 6 seeds.")
    return out


LONG_COLUMNS = ["setting", "metric", "method", "n_ok", "n_runs", "n_seeds", "n_diverged",
                "n_failed", "mean", "std", "ci_low", "ci_high", "delta", "p", "n_pairs", "rank",
                "avg_rank"]


def long_table(result: Comparison) -> pd.DataFrame:
    """One row per (setting, method) with every number, for CSV and JSON."""
    cells = result.cells.reindex(columns=LONG_COLUMNS)
    return cells.assign(baseline=result.baseline or "", test=TEST_NAME)


def markdown(result: Comparison) -> str:
    """The long table as a GitHub markdown table, followed by the notes."""
    versus = [f"vs {result.baseline}"] if result.baseline else []
    header = ["setting", "metric", "method", "n", "mean ± std", "95% CI", *versus, "rank",
              "avg rank"]
    rows = [[c["setting"], c["metric"], c["method"], count_text(c), mean_std(c["mean"], c["std"]),
             _ci_text(c), *[_delta_text(c, result.baseline) for _ in versus],
             _rank_text(c["rank"]), _avg_rank_text(c, len(result.settings))]
            for _, c in result.cells.iterrows()]
    return tabulate(rows, header, tablefmt="github", disable_numparse=True) + "\n\n" + "\n".join(
        f"- {n}" for n in notes(result)) + "\n"
