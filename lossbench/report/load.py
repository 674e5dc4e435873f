"""Read one or more results folders (or tidy tables) into one runs table, and its curves.

A RESULTS argument is a folder written by ``lossbench run --out`` (``runs.parquet``, else
``runs.csv``, else its ``records/`` turned into the same tidy table in memory) or a table file
(``.parquet`` / ``.csv``). Every loaded row gets a ``source`` column (the path it came from) and a
``method`` column: the loss name, or ``loss:params`` when that loss appears with several parameter
sets, since (loss, loss_params) is what identifies a method.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lossbench.engine.store import CURVE_COLUMNS, RUN_COLUMNS, Store, tidy_curves, tidy_runs
from lossbench.errors import UserError, require

TEXT_COLUMNS = ["task", "family", "budget", "loss", "loss_params", "status", "reason",
                "noise_kind", "device", "git_commit", "lossbench_version", "torch_version",
                "finished_at"]
READERS = {".parquet": pd.read_parquet, ".csv": pd.read_csv}


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix not in READERS:
        raise UserError(f"cannot read '{path}': expected a results folder or a .parquet/.csv "
                        "runs table")
    try:
        return READERS[path.suffix](path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"'{path}' is not a readable {path.suffix[1:]} table "
                        f"({type(err).__name__}); rebuild it from the records with `lossbench "
                        f"tables {path.parent} --rebuild`, or delete it") from None


def _read_one(path: Path) -> pd.DataFrame:
    """The runs table of one RESULTS argument, as written (no cleaning yet)."""
    require(path.exists(), f"results path '{path}' does not exist")
    if path.is_file():
        return _read_table(path)
    for name in ("runs.parquet", "runs.csv"):
        if (path / name).is_file():
            return _read_table(path / name)
    records = Store(path).records()
    if records:
        return tidy_runs(records)
    raise UserError(f"no runs in '{path}' (expected runs.parquet, runs.csv or records/); "
                    f"produce them with `lossbench run ... --out {path}`")


def _clean(table: pd.DataFrame, source: Path) -> pd.DataFrame:
    missing = [c for c in RUN_COLUMNS if c not in table.columns]
    require(not missing, f"'{source}' is not a lossbench runs table: missing columns "
                         f"{', '.join(missing)}")
    require(len(table) > 0, f"'{source}' holds no runs")
    table = table[RUN_COLUMNS].copy()
    for col in TEXT_COLUMNS:  # CSV turns empty strings (e.g. CE's loss_params) into NaN
        table[col] = ["" if pd.isna(v) else str(v) for v in table[col]]
    table["seed"] = table["seed"].astype(int)
    for col in ("noise_rate", "noise_realised", "value", "wall_s"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    table["source"] = str(source)
    return table


def method_labels(runs: pd.DataFrame) -> pd.Series:
    """``loss`` where a loss has one parameter set in the table, else ``loss:params``."""
    n_params = runs.groupby("loss")["loss_params"].transform("nunique")
    with_params = runs["loss"] + ":" + runs["loss_params"]
    return runs["loss"].where(n_params <= 1, with_params)


def load_runs(paths: Sequence[Path]) -> pd.DataFrame:
    """All runs of ``paths`` in one tidy table (+ ``source``, ``method``).

    A run key found in several sources is the same run: the copy finished last is kept.
    """
    require(len(paths) > 0, "no results given; pass a results folder (e.g. results/runs)")
    runs = pd.concat([_clean(_read_one(Path(p)), Path(p)) for p in paths], ignore_index=True)
    latest = (runs.sort_values("finished_at", kind="stable")
              .drop_duplicates("run_key", keep="last")[["run_key", "source"]])
    runs = runs.merge(latest, on=["run_key", "source"])
    runs["method"] = method_labels(runs)
    return runs


def load_curves(paths: Sequence[Path]) -> pd.DataFrame:
    """Per-epoch curves of the results (``curves.parquet``, else ``records/``); may be empty."""
    tables = []
    for path in map(Path, paths):
        folder = path if path.is_dir() else path.parent
        if (folder / "curves.parquet").is_file():
            tables.append(_read_table(folder / "curves.parquet"))
        else:
            tables.append(tidy_curves(Store(folder).records()))
    tables = [t for t in tables if len(t)]
    if not tables:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    curves = pd.concat(tables, ignore_index=True)
    return curves.drop_duplicates(["run_key", "metric", "epoch"], keep="last")
