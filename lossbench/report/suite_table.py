"""A suite's paper-style table: losses as rows, the suite's settings as columns.

A run belongs to a setting when its resolved task spec is the setting's (task, budget, the
setting's overrides, then any ``--set`` given here): the ``spec_key`` column of the tidy table.
Cells, bold, ties and the average rank are the leaderboard's (``leaderboard.family_table``).
With ``tuned``, only the runs a tuning chose (``lossbench run --tune``) are kept and a method is
its loss name: its parameters may differ from column to column.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from lossbench.engine.tables import spec_key
from lossbench.errors import require
from lossbench.report.compare import ALPHA, PARTIAL, Comparison, compare, metric_per_family
from lossbench.report.leaderboard import NOT_SIGNIFICANT, family_table, provenance
from lossbench.report.stats import TEST_NAME, higher_is_better
from lossbench.spec import resolve_task
from lossbench.suites import Suite
from lossbench.tuning import run_marks


def mark_tuned(runs: pd.DataFrame, paths: Sequence[Path]) -> pd.DataFrame:
    """``runs`` with a ``tuned`` column: ``chosen`` (a tuning's final run), ``trial`` (a point
    that lost) or '' (not tuned), from the tuning records of the results folders."""
    marks: dict[str, str] = {}
    for path in paths:
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        for key, mark in run_marks(folder).items():
            marks[key] = "chosen" if mark == "chosen" else marks.get(key, mark)
    return runs.assign(tuned=[marks.get(key, "") for key in runs["run_key"]])


def only_tuned(runs: pd.DataFrame) -> pd.DataFrame:
    """The chosen runs of tunings, a method per loss name."""
    chosen = runs[runs["tuned"] == "chosen"]
    require(not chosen.empty, "no tuned runs in the results (run them with `lossbench run "
                              "--tune`; tunings are recorded under <out>/tuning/)")
    return chosen.assign(method=chosen["loss"])


def label_settings(runs: pd.DataFrame, suite: Suite, overrides: Sequence[str] = ()
                   ) -> tuple[pd.DataFrame, list[str]]:
    """The runs of the suite's settings with a ``setting`` column (the suite's labels, in its
    order), and the labels of settings no run belongs to."""
    labels: dict[str, str] = {}
    for budget in sorted(runs["budget"].unique()):
        for setting in suite.settings:
            spec = resolve_task(setting.task, budget, [*setting.overrides, *overrides])
            labels[spec_key(spec)] = setting.label
    rows = runs[runs["spec_key"].isin(labels)]
    order = [s.label for s in suite.settings]
    found = set(rows["spec_key"].map(labels))
    missing = [label for label in order if label not in found]
    require(not rows.empty, f"no run of suite '{suite.name}' in the results (a run matches a "
                            "setting by its resolved task spec: pass the same --set overrides "
                            "the runs were made with; old tables may need `lossbench tables "
                            "--rebuild`)")
    setting = pd.Categorical(rows["spec_key"].map(labels), categories=order, ordered=True)
    return rows.assign(setting=setting), missing


def suite_table(runs: pd.DataFrame, suite: Suite, metric: str | None = None,
                overrides: Sequence[str] = ()) -> tuple[str, Comparison]:
    """The markdown document of a suite, and the comparison behind it (for a CD diagram)."""
    rows, missing = label_settings(runs, suite, overrides)
    metrics = metric_per_family(rows, metric)
    require(len(metrics) == 1, f"suite '{suite.name}' mixes families {', '.join(metrics)}; "
                               "pass --metric to compare one metric")
    [(family, family_metric)] = metrics.items()
    result = compare(rows, {family: family_metric}, ("setting",))
    direction = "higher" if higher_is_better(family_metric) else "lower"
    parts = [
        f"# {suite.name}", suite.description,
        tabulate(provenance(rows), ["provenance", ""], tablefmt="github", disable_numparse=True),
        f"{family_metric} ({direction} is better). Cells: mean ± std over the ok seeds (n). "
        f"**Bold**: best mean of the column. {NOT_SIGNIFICANT}: not significantly worse than "
        f"the best ({TEST_NAME}, p ≥ {ALPHA}). {PARTIAL}: fewer ok seeds than the column's "
        "most-run method. Avg rank: mean rank over the columns (1 = best).",
        family_table(result),
    ]
    if missing:
        parts.append(f"Settings without runs: {', '.join(missing)}.")
    return "\n\n".join(parts) + "\n", result
