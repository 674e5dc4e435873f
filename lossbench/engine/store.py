"""The run store: one JSON record per finished run, written atomically, plus the tidy tables.

Layout under an output folder::

    records/<run-key>.json   one per finished run (status ok / diverged / failed): the truth
    records/<run-key>.npz    arrays a run keeps, where its family returns some (engine.arrays)
    runs.parquet/, curves.parquet/   the tidy tables, a cache of the records kept up to date
                             run by run (``lossbench.engine.tables``); runs.csv on request

A run whose record says ``ok`` or ``diverged`` is finished (divergence is a result: the same seed
diverges again); a ``failed`` run (a crash) is retried on the next invocation. ``--force`` re-runs
everything.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from lossbench.engine.arrays import SUFFIX, write_arrays
from lossbench.engine.atomic import atomic_write
from lossbench.engine.tables import (
    CURVE_COLUMNS,
    FINISHED,
    RUN_COLUMNS,
    SAVE_WAIT_S,
    TABLE_ERRORS,
    SyncReport,
    Tables,
    TablesBusy,
    curve_series,
    file_stamp,
    rows_of,
)
from lossbench.errors import UserError

__all__ = ["CURVE_COLUMNS", "FINISHED", "RUN_COLUMNS", "Store", "curve_points", "tidy_curves",
           "tidy_runs"]


LISTING_TTL_NS = 10 * 10**9
_LISTINGS: dict[str, tuple[int, int, dict[str, int]]] = {}
"""Per records folder: (its mtime, when listed, the listing), reused within one process."""


class Store:
    """Records of one output folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"
        self.unreadable: list[tuple[Path, str]] = []
        """Records found unreadable by the last ``records()`` or table update: (path, why)."""
        self.tables_problem = ""
        """Why the last ``save`` could not add its rows to the tables ('' when it did)."""

    def path(self, key: str) -> Path:
        return self.records_dir / f"{key}.json"

    def write(self, record: Mapping[str, Any]) -> Path:
        """Atomic: write a temp file in the same folder, fsync, rename over the final name.
        The record gets the mode any new file gets here (mkstemp's 0600 would hide a shared
        results folder from colleagues)."""
        self.records_dir.mkdir(parents=True, exist_ok=True)
        target = self.path(str(record["run_key"]))
        if record.get("arrays"):  # first, so a record's arrays exist once the record does
            write_arrays(target.with_suffix(SUFFIX), record["arrays"], 0o666 & ~_umask())
        text = json.dumps({k: v for k, v in record.items() if k != "arrays"}, indent=1,
                          sort_keys=True, default=str)
        atomic_write(target, lambda fh: fh.write(text.encode()), 0o666 & ~_umask())
        return target

    def save(self, record: Mapping[str, Any]) -> Path:
        """Write the record, then add its rows to the tables. The record is what counts: when the
        tables cannot be updated (busy, disk full), ``tables_problem`` says why and the next
        report adds the rows from the record."""
        path = self.write(record)
        try:
            self.tables.add([record], 0.0 if self.tables_problem else SAVE_WAIT_S)
            self.tables_problem = ""
        except (*TABLE_ERRORS, TablesBusy, UserError) as err:
            self.tables_problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        return path

    def listing(self) -> dict[str, int] | None:
        """Stamp (``file_stamp``) of every record file by key: listing a folder is cheap, parsing
        every record is not. None when there is no records folder."""
        try:
            folder = os.stat(self.records_dir)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISDIR(folder.st_mode):
            return None
        path = os.path.abspath(self.records_dir)
        started = time.time_ns()
        cached = _LISTINGS.get(path)
        # A record written, renamed or removed changes the folder's mtime; a listing taken well
        # after that mtime (not in the same clock tick) and not long ago is still the listing.
        if cached is not None and cached[0] == folder.st_mtime_ns and (
                cached[1] - folder.st_mtime_ns > 1e9 and started - cached[1] < LISTING_TTL_NS):
            return cached[2]
        with os.scandir(self.records_dir) as entries:  # file_stamp, inlined: 100k calls
            listing = {e.name[:-5]: hash((st.st_ino, st.st_mtime_ns, st.st_size))
                       for e in entries if e.name.endswith(".json") and e.name[0] != "."
                       for st in (e.stat(),)}
        _LISTINGS[path] = (folder.st_mtime_ns, started, listing)
        return listing

    def run_keys(self) -> list[str]:
        """Keys of the record files (temp files of an unfinished write are never records)."""
        if not self.records_dir.is_dir():
            return []
        return sorted(p.stem for p in self.records_dir.glob("*.json")
                      if not p.name.startswith("."))

    def read(self, key: str) -> dict[str, Any] | None:
        """The record of ``key``; None when it is missing or unreadable (see ``check_record``)."""
        record, _, _ = self.load(key)
        return record

    def load(self, key: str) -> tuple[dict[str, Any] | None, str, int]:
        """(record, '', stamp) or (None, why it cannot be used, 0); the stamp is the one of the
        file the record was read from."""
        return _load(self.path(key))

    def records(self) -> list[dict[str, Any]]:
        """Every readable record; unreadable ones are listed in ``self.unreadable`` (path,
        why) and count as not finished, so a resume re-runs them."""
        self.unreadable = []
        out = []
        for key in self.run_keys():
            record, problem, _ = _load(self.path(key))
            if record is None:
                self.unreadable.append((self.path(key), problem))
            else:
                out.append(record)
        return out

    @cached_property
    def tables(self) -> Tables:
        return Tables(self)

    def finished(self) -> dict[str, dict[str, Any]]:
        """Finished runs from the tables: key -> {status, versions: {torch, lossbench}}. Only
        records not yet in the tables are parsed; unreadable ones land in ``unreadable``."""
        self.unreadable = []
        return self.tables.finished()

    def done_keys(self) -> set[str]:
        return set(self.finished())

    def write_tables(self, rebuild: bool = False) -> SyncReport:
        """Bring the tables up to date with the records, adding only what they lack
        (``rebuild``: every record, replacing all rows)."""
        report = self.tables.sync(rebuild)
        self.unreadable = report.unreadable
        return report


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_record(record: Any, key: str) -> str:
    """Why ``record`` (parsed JSON of ``<key>.json``) is not a usable run record, or ''."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    if record.get("run_key") != key:
        return f"its run_key {record.get('run_key')!r} does not match the file name"
    if not isinstance(record.get("config"), dict) or not isinstance(record.get("status"), str):
        return "it lacks a config or a status"
    return ""


def _load(path: Path) -> tuple[dict[str, Any] | None, str, int]:
    """(record, '', stamp) or (None, why it cannot be used, 0)."""
    try:
        with path.open("rb") as fh:
            stamp = file_stamp(os.fstat(fh.fileno()))
            record = json.loads(fh.read())
    except FileNotFoundError:
        return None, "missing", 0
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})", 0
    problem = check_record(record, path.stem)
    return (None, problem, 0) if problem else (record, "", stamp)


def tidy_runs(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run x final metric; a run with no metrics (failed) keeps one row, metric=None."""
    return rows_of(records).runs_table().to_pandas()


def curve_points(curves: Mapping[str, list[float]]) -> list[tuple[str, int, float]]:
    """(metric, 1-based epoch, value) of a record's curves (see ``tables.curve_series``)."""
    return [(metric, epoch, value) for metric, epochs, values in curve_series(curves)
            for epoch, value in zip(epochs or range(1, len(values) + 1), values, strict=False)]


def tidy_curves(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run x metric x scored epoch."""
    return rows_of(records).curves_table().to_pandas()
