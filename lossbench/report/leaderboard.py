"""The markdown leaderboard: one table per task family, every figure with n and a spread.

The header records where the numbers come from (versions, devices, budgets, commits, dates), read
from the runs table's provenance columns -- never from the machine that renders it, so the same
results always render the same file. Bold marks the best mean per task; † marks methods whose
paired difference to that best is not significant.
"""

from __future__ import annotations

import math

import pandas as pd
from tabulate import tabulate

from lossbench.report.compare import ALPHA, PARTIAL, Comparison, compare, metric_per_family
from lossbench.report.stats import TEST_NAME, higher_is_better, smallest_p
from lossbench.report.summary import mean_std

NOT_SIGNIFICANT = "†"
PROVENANCE = [("lossbench", "lossbench_version"), ("torch", "torch_version"),
              ("device", "device"), ("budget", "budget"), ("git commit", "git_commit")]


def _values(runs: pd.DataFrame, column: str, limit: int = 4) -> str:
    values = sorted(v for v in runs[column].dropna().astype(str).unique() if v)
    shown = ", ".join(values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "") or "—"


def provenance(runs: pd.DataFrame) -> list[list[str]]:
    """Rows (what, values) describing where the results come from."""
    one = runs.drop_duplicates("run_key")
    dates = sorted(d[:10] for d in one["finished_at"] if d)
    n_ok = int((one["status"] == "ok").sum())
    rows = [[label, _values(one, col)] for label, col in PROVENANCE]
    rows.append(["runs finished", f"{dates[0]} – {dates[-1]}" if dates else "—"])
    rows.append(["runs", f"{len(one)} ({n_ok} ok, {len(one) - n_ok} not ok)"])
    return rows


def _cell_text(cell: pd.Series, best: bool, not_significant: bool) -> str:
    if cell["n_ok"] == 0:
        reason = "diverged" if cell["n_diverged"] else "failed"
        return f"{reason} (0/{cell['n_seeds']})"
    value = mean_std(cell["mean"], cell["std"])
    value = f"**{value}**" if best else value
    count = (f"{cell['n_ok']}" if cell["n_ok"] == cell["n_seeds"]
             else f"{cell['n_ok']}/{cell['n_seeds']} {PARTIAL}")
    return f"{value} ({count})" + (f" {NOT_SIGNIFICANT}" if not_significant else "")


def family_table(result: Comparison) -> str:
    """Methods x tasks of one family, best bold, † where not significantly worse than the best."""
    rows = {m: [m] for m in result.methods}
    for setting in result.settings:
        cells = result.cells[result.cells["setting"] == setting].set_index("method")
        best_rank = cells["rank"].min()
        best = list(cells.index[(cells["rank"] == best_rank) & (cells["n_ok"] > 0)])
        for method in result.methods:
            if method not in cells.index:
                rows[method].append("—")
                continue
            cell = cells.loc[method]
            is_best = method in best
            p_values = [result.versus(setting, method, b)[1] for b in best]
            tie = not is_best and cell["n_ok"] > 0 and any(
                math.isnan(p) or p >= ALPHA for p in p_values)
            rows[method].append(_cell_text(cell, is_best, tie))
    for _, r in result.ranks.iterrows():
        rank = "—" if math.isnan(r["avg_rank"]) else f"{r['avg_rank']:.2f}"
        if 0 < r["n_ranked"] < len(result.settings):
            rank += f" ({r['n_ranked']}/{len(result.settings)} tasks)"
        rows[r["method"]].append(rank)
    return tabulate(list(rows.values()), ["method", *result.settings, "avg rank"],
                    tablefmt="github", disable_numparse=True)


def leaderboard(runs: pd.DataFrame, metric: str | None = None) -> str:
    """The whole markdown document."""
    metrics = metric_per_family(runs, metric)
    runs = runs[runs["family"].isin(metrics)]
    max_seeds = int(runs.drop_duplicates("run_key").groupby(
        ["task", "method"])["seed"].nunique().max())
    parts = [
        "# lossbench leaderboard",
        tabulate(provenance(runs), ["provenance", ""], tablefmt="github", disable_numparse=True),
        f"Cells: mean ± std over the ok seeds (n seeds). **Bold**: best mean of the task. "
        f"{NOT_SIGNIFICANT}: difference to the best not significant ({TEST_NAME}, p ≥ {ALPHA}; "
        f"with n seeds the smallest attainable p is 2^(1-n), here "
        f"{smallest_p(max_seeds):.3g} for {max_seeds}, so fewer than 6 seeds can never show "
        f"a significant difference). {PARTIAL}: fewer ok seeds than the task's most-run method "
        "(diverged, failed or not run). Avg rank: mean over the family's columns (tasks; "
        "task x noise rate in a sweep) of the rank by mean (1 = best; a method whose runs all "
        "diverged ranks last).",
    ]
    for family, family_metric in sorted(metrics.items()):
        direction = "higher" if higher_is_better(family_metric) else "lower"
        result = compare(runs[runs["family"] == family], {family: family_metric}, ("task",))
        parts += [f"## {family} — {family_metric} ({direction} is better)", family_table(result)]
    return "\n\n".join(parts) + "\n"
