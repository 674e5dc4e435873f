"""Per (task, loss, params) summaries of the tidy run table: mean, std and n over seeds.

Runs that did not finish ``ok`` are counted, not averaged away: the summary has their number.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

GROUP = ["task", "loss", "loss_params"]


def summarise(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per task x loss x params: ``<metric>_mean/_std`` for each metric, n_ok, n_bad."""
    status = runs.drop_duplicates("run_key").groupby(GROUP, sort=False)["status"]
    out = pd.DataFrame({
        "n_ok": status.apply(lambda s: int((s == "ok").sum())),
        "n_bad": status.apply(lambda s: int((s != "ok").sum())),
    })
    ok = runs[(runs["status"] == "ok") & runs["metric"].isin(metrics)]
    if not ok.empty:
        stats = ok.groupby([*GROUP, "metric"], sort=False)["value"].agg(["mean", "std"]).unstack()
        stats.columns = [f"{metric}_{stat}" for stat, metric in stats.columns]
        out = out.join(stats)
    return out.reset_index()


def mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std`` (std is blank with a single seed)."""
    if pd.isna(mean):
        return "—"
    if pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
