"""Per (task, setting, loss, params) summaries of the tidy run table: mean, std and n over seeds.

A setting is one resolved task spec (``spec_key``): runs of one task under different overrides
(a suite's noise rates) are never averaged together. Runs that did not finish ``ok`` are
counted, not averaged away: the summary has their number.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

GROUP = ["task", "setting", "loss", "loss_params"]


def setting_labels(runs: pd.DataFrame) -> pd.Series:
    """Per row, its setting's label within its task: '' where a task has one setting; else the
    noise (``uniform 0.6``), plus the spec key where that does not tell settings apart."""
    if "spec_key" not in runs.columns:
        return pd.Series("", index=runs.index)
    keys = runs["spec_key"].fillna("").astype(str)
    kind = runs["noise_kind"].fillna("").astype(str)
    noise = (kind + " " + runs["noise_rate"].map(lambda r: "" if pd.isna(r) else f"{r:g}")
             ).str.strip().where(~kind.isin(["", "none"]), "clean")
    per_task = keys.groupby(runs["task"]).transform("nunique")
    label = noise.where(per_task > 1, "")
    ambiguous = (pd.DataFrame({"task": runs["task"], "label": label, "key": keys})
                 .groupby(["task", "label"])["key"].transform("nunique") > 1)
    return label.where(~ambiguous, (label + " · spec " + keys.str[:6]).str.strip(" ·"))


def summarise(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per task x setting x loss x params: ``<metric>_mean/_std`` for each metric,
    n_ok, n_bad."""
    runs = runs.assign(setting=setting_labels(runs))
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
