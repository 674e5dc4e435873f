"""Read one or more results folders (or tidy tables) into one runs table, and its curves.

A RESULTS argument is a folder written by ``lossbench run --out`` (its tables, brought up to date
with its ``records/`` first -- see ``lossbench.engine.tables``) or a single table file
(``.parquet`` / ``.csv``). Every loaded row gets a ``source`` column (the path it came from) and
a ``method`` column: the loss name, or ``loss:params`` when that loss appears with several
parameter sets, since (loss, loss_params) is what identifies a method.

Reports load only the metrics they show (``metrics``); every run still has a row then (one
without a metric where it has none of them), so counts of runs, failures and seeds stay whole.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import pandas as pd

from lossbench.engine.store import CURVE_COLUMNS, RUN_COLUMNS, Store
from lossbench.engine.tables import RUN_SCHEMA, read_table_file
from lossbench.errors import UserError, require

TEXT_COLUMNS = ["spec_key", "task", "family", "budget", "loss", "loss_params", "status",
                "reason", "noise_kind", "device", "git_commit", "lossbench_version",
                "torch_version", "finished_at"]
SUFFIXES = (".parquet", ".csv")


def _table_file(path: Path) -> Path:
    if path.suffix not in SUFFIXES:
        raise UserError(f"cannot read '{path}': expected a results folder or a .parquet/.csv "
                        "runs table")
    return path


def _read_one(path: Path, metrics: Collection[str] | None) -> pd.DataFrame:
    """The runs table of one RESULTS argument, as stored (no cleaning yet)."""
    require(path.exists(), f"results path '{path}' does not exist")
    if path.is_file():
        return read_table_file(_table_file(path), RUN_SCHEMA).to_pandas()
    table = Store(path).tables.runs_frame(metrics)
    require(not table.empty, _no_runs(path))
    return table


def _no_runs(path: Path) -> str:
    return (f"no runs in '{path}' (expected records/ or runs.parquet); produce them with "
            f"`lossbench run ... --out {path}`")


def _clean(table: pd.DataFrame, source: Path) -> pd.DataFrame:
    require(len(table) > 0, f"'{source}' holds no runs")
    table = table.reindex(columns=RUN_COLUMNS).copy()
    for col in TEXT_COLUMNS:  # CSV turns empty strings (e.g. CE's loss_params) into missing
        table[col] = table[col].fillna("").astype(str)
    table["seed"] = table["seed"].astype(int)
    for col in ("noise_rate", "noise_realised", "value", "wall_s"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    table["source"] = str(source)
    return table


def method_labels(runs: pd.DataFrame) -> pd.Series:
    """``loss`` where a loss has one parameter set in the table, else ``loss:params`` (the
    defaults, e.g. a loss without a reducer beside itself with one, stay ``loss``)."""
    n_params = runs.groupby("loss")["loss_params"].transform("nunique")
    params = runs["loss_params"].fillna("")
    with_params = runs["loss"] + (":" + params).where(params != "", "")
    return runs["loss"].where(n_params <= 1, with_params)


def load_runs(paths: Sequence[Path], metrics: Collection[str] | None = None) -> pd.DataFrame:
    """All runs of ``paths`` in one tidy table (+ ``source``, ``method``); with ``metrics``, only
    those metrics' rows (and one row for each run that has none of them).

    A run key found in several sources is the same run: the copy finished last is kept.
    """
    require(len(paths) > 0, "no results given; pass a results folder (e.g. results/runs)")
    runs = pd.concat([_clean(_read_one(Path(p), metrics), Path(p)) for p in paths],
                     ignore_index=True)
    latest = (runs.sort_values("finished_at", kind="stable")
              .drop_duplicates("run_key", keep="last")[["run_key", "source"]])
    runs = runs.merge(latest, on=["run_key", "source"])
    runs["method"] = method_labels(runs)
    return runs


def load_catalogue(paths: Sequence[Path]) -> pd.DataFrame:
    """Distinct (family, status, metric) of the runs of ``paths``: which metrics each family
    reports, without loading the values."""
    require(len(paths) > 0, "no results given; pass a results folder (e.g. results/runs)")
    parts = []
    for path in map(Path, paths):
        require(path.exists(), f"results path '{path}' does not exist")
        if path.is_file():
            columns = ["family", "status", "metric"]
            table = read_table_file(_table_file(path), RUN_SCHEMA, columns)
            parts.append(table.group_by(columns).aggregate([]).to_pandas())
        else:
            catalogue = Store(path).tables.catalogue()
            require(not catalogue.empty, _no_runs(path))
            parts.append(catalogue)
    return pd.concat(parts, ignore_index=True).drop_duplicates()


def report_metrics(paths: Sequence[Path], metric: str | None) -> dict[str, str]:
    """{family: the metric a report compares it on} (``metric``, else each family's primary),
    checked against the metrics the results have."""
    from lossbench.report.compare import metric_per_family

    return metric_per_family(load_catalogue(paths), metric)


def check_metrics(paths: Sequence[Path], metrics: Sequence[str]) -> None:
    """Every one of ``metrics`` is reported by some ok run, else a one-line error."""
    catalogue = load_catalogue(paths)
    available = set(catalogue.loc[catalogue["status"] == "ok", "metric"].dropna())
    unknown = [m for m in metrics if m not in available]
    require(not unknown, f"unknown metric '{', '.join(unknown)}'; available: "
                         f"{', '.join(sorted(available))}")


def load_curves(paths: Sequence[Path], metrics: Collection[str] | None = None) -> pd.DataFrame:
    """Per-epoch curves of the results (of ``metrics`` only, when given); may be empty."""
    tables = [Store(path if path.is_dir() else path.parent).tables.curves_frame(metrics)
              for path in map(Path, paths)]
    curves = pd.concat([t for t in tables if len(t)] or [pd.DataFrame(columns=CURVE_COLUMNS)],
                       ignore_index=True)
    return curves.drop_duplicates(["run_key", "metric", "epoch"], keep="last")
