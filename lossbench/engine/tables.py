"""The tidy tables: a cache of the records that grows by a segment with each finished run.

Layout under an output folder (``records/`` stays the source of truth)::

    runs.parquet/<segment>.parquet          tidy rows: one per run x final metric
    curves.parquet/<segment>.parquet        tidy rows: one per run x metric x epoch
    runs.parquet/_index/<segment>.parquet   one row per run of the segment (key, the record
                                            file's stamp, status, family, versions)
    .tables.lock                            held by a writer (flock); readers never take it

Each ``*.parquet`` folder is a parquet dataset: ``pandas.read_parquet(out / "runs.parquet")``
reads it as one table (pyarrow skips names starting with ``_`` or ``.``).

Why segments: a finished run appends its rows as a new segment instead of rewriting every row
(the cost of a run no longer grows with the folder), and segments are merged in size tiers of
``FANOUT`` (as a log-structured merge tree does) so a folder holds O(log n) small segments plus
full ones of ``FULL_RUNS`` runs. Every file is written under a temp name and renamed, never
changed in place; a segment exists for readers once its index file does (written last). A
reader that finds a file gone (merged away meanwhile) takes a new snapshot and reads again.

Which rows are live: the newest segment holding a run owns its rows (writers are serialised by
the lock and always write what the record says now, so newer is truer), and only runs whose
record file is still there with the same stamp (inode, mtime, size: a record rewritten by
``--force``, or changed in place, has another) count. A record that is not
live in the tables (written by a run killed before its rows were added, rewritten, or whose
segment is unreadable) is *pending*: readers add it first (under the lock), or, where the folder
cannot be written, read it into memory. Listing the records folder is cheap; parsing every
record is what the tables exist to avoid.

Inside a segment the rows are sorted by metric and every parquet row group holds whole metrics,
so a report that asks for one metric reads only that metric's row groups.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from lossbench.errors import UserError

if TYPE_CHECKING:
    from lossbench.engine.store import Store

FINISHED = frozenset({"ok", "diverged"})
RUN_SCHEMA = pa.schema([
    ("run_key", pa.string()), ("task", pa.string()), ("family", pa.string()),
    ("budget", pa.string()), ("loss", pa.string()), ("loss_params", pa.string()),
    ("seed", pa.int64()), ("status", pa.string()), ("reason", pa.string()),
    ("noise_kind", pa.string()), ("noise_rate", pa.float64()), ("noise_realised", pa.float64()),
    ("metric", pa.string()), ("value", pa.float64()), ("wall_s", pa.float64()),
    ("device", pa.string()), ("git_commit", pa.string()), ("lossbench_version", pa.string()),
    ("torch_version", pa.string()), ("finished_at", pa.string()), ("spec_key", pa.string()),
])
OPTIONAL_RUN_COLUMNS = frozenset({"spec_key"})
"""Columns older tables lack: read as empty (``lossbench tables --rebuild`` fills them)."""
CURVE_SCHEMA = pa.schema([
    ("run_key", pa.string()), ("task", pa.string()), ("loss", pa.string()),
    ("loss_params", pa.string()), ("seed", pa.int64()), ("metric", pa.string()),
    ("epoch", pa.int64()), ("value", pa.float64()),
])
INDEX_SCHEMA = pa.schema([
    ("run_key", pa.string()), ("stamp", pa.int64()), ("status", pa.string()),
    ("family", pa.string()), ("torch_version", pa.string()), ("lossbench_version", pa.string()),
])
RUN_COLUMNS = RUN_SCHEMA.names
CURVE_COLUMNS = CURVE_SCHEMA.names

FANOUT = 4
"""Segments of one size tier (runs within a factor FANOUT) merged together."""
FULL_RUNS = 4096
"""A segment of this many runs is never merged again (bounds the cost of one merge)."""
CHUNK_RUNS = 256
"""Records per segment when many are added at once (bounds the memory of a catch-up)."""
GROUP_ROWS = 1024
"""Metrics are packed into one parquet row group until it reaches this many rows."""
LOCK_TIMEOUT_S = 30.0
"""How long a writer waits for another (a merge of FULL_RUNS runs takes seconds)."""
READER_WAIT_S = 2.0
"""How long a reader waits to add pending records itself before reading them into memory."""
SAVE_WAIT_S = 5.0
"""How long a finished run waits to add its rows; after a miss the next runs do not wait (their
rows are added by the next reader), so a long catch-up elsewhere does not slow a grid."""
READ_RETRIES = 5
TABLE_ERRORS = (pa.ArrowException, OSError, ValueError)


class TablesBusy(Exception):
    """Another process held the tables' lock for longer than the timeout."""


# -- records -> rows ------------------------------------------------------------------------------

def file_stamp(st: os.stat_result) -> int:
    """What changes when a record file is rewritten (a new inode) or changed in place."""
    return hash((st.st_ino, st.st_mtime_ns, st.st_size))  # ints hash the same in every process


def _params_text(params: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(params.items()))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def curve_series(curves: Mapping[str, Sequence[Any]]
                 ) -> list[tuple[str, list[int] | None, Sequence[Any]]]:
    """(metric, its 1-based epochs, its values) of a record's curves; epochs None means one
    value per epoch from 1. A curve ``<prefix>_...`` is measured at the epochs listed in the
    curve ``<prefix>_epoch`` when the record has one (a family that scores some epochs only,
    e.g. classification's ``val_epoch`` / ``test_epoch``); the ``*_epoch`` lists themselves
    are not curves, and an empty curve has no points."""
    out: list[tuple[str, list[int] | None, Sequence[Any]]] = []
    for metric, values in curves.items():
        if metric.endswith("_epoch") or not values:
            continue
        listed = curves.get(f"{metric.split('_', 1)[0]}_epoch")
        if listed:
            n = min(len(listed), len(values))
            out.append((metric, [int(e) for e in listed[:n]], values[:n]))
        else:
            out.append((metric, None, values))
    return out


def run_fields(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The columns every row of a run repeats (all of RUN_COLUMNS but metric and value)."""
    cfg = rec["config"]
    # Diverged/failed runs have no noise report: fall back to the requested noise in the spec,
    # so they land in the right column of a noise sweep (realised rate unknown).
    requested = (cfg.get("spec") or {}).get("noise") or {}
    noise = (rec.get("info") or {}).get("noise") or {
        "kind": requested.get("kind", "none"),
        "requested_rate": requested.get("rate", 0.0),
        "realised_rate": float("nan"),
    }
    versions = rec.get("versions") or {}
    return {
        "run_key": str(rec["run_key"]), "task": _text(cfg["task"]),
        "family": _text(cfg["family"]), "budget": _text(cfg["budget"]),
        "loss": _text(cfg["loss"]), "loss_params": _params_text(cfg["loss_params"]),
        "seed": int(cfg["seed"]), "status": _text(rec["status"]),
        "reason": _text(rec.get("reason", "")),
        "noise_kind": _text(noise.get("kind", "none")),
        "noise_rate": _number(noise.get("requested_rate", 0.0)),
        "noise_realised": _number(noise.get("realised_rate", 0.0)),
        "wall_s": _number(rec.get("wall_s")), "device": _text(rec.get("device")),
        "git_commit": _text(rec.get("git_commit")),
        "lossbench_version": _text(versions.get("lossbench")),
        "torch_version": _text(versions.get("torch")),
        "finished_at": _text(rec.get("finished_at")),
        "spec_key": spec_key(cfg.get("spec") or {}),
    }


def spec_key(spec: Mapping[str, Any]) -> str:
    """sha256[:16] of a resolved task spec: which runs share a setting (a suite's columns find
    their runs by it), whatever their loss, seed or numerics."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class _Rows:
    """Rows of a batch of records, built column by column."""

    runs: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in RUN_COLUMNS})
    curve_runs: list[dict[str, Any]] = field(default_factory=list)
    curve_parts: list[tuple[int, str, pa.Array, Sequence[int] | None]] = field(
        default_factory=list)
    index: dict[str, list[Any]] = field(
        default_factory=lambda: {c: [] for c in INDEX_SCHEMA.names})

    def add(self, rec: Mapping[str, Any], stamp: int = 0) -> None:
        """Add one record's rows; raises (and adds nothing) when a field has the wrong type."""
        base = run_fields(rec)
        metrics = rec.get("metrics") or {None: None}
        values = [_number(v) for v in metrics.values()]
        curves = [(str(m), pa.array(values, pa.float64()), epochs)
                  for m, epochs, values in curve_series(rec.get("curves") or {})]
        names = [None if m is None else str(m) for m in metrics]
        for col, value in base.items():
            self.runs[col] += [value] * len(values)
        self.runs["metric"] += names
        self.runs["value"] += values
        run = len(self.curve_runs)
        self.curve_runs.append(base)
        self.curve_parts += [(run, metric, array, epochs) for metric, array, epochs in curves]
        for col in INDEX_SCHEMA.names:
            self.index[col].append(stamp if col == "stamp" else base[col])

    def runs_table(self) -> pa.Table:
        return pa.table(self.runs, schema=RUN_SCHEMA)

    def curves_table(self) -> pa.Table:
        """Sorted by metric (as segments store them) without sorting: parts are put in order."""
        if not self.curve_parts:
            return CURVE_SCHEMA.empty_table()
        parts = sorted(self.curve_parts, key=lambda p: p[1])
        counts = np.array([len(p[2]) for p in parts], dtype=np.int64)
        run_of_row = pa.array(np.repeat([p[0] for p in parts], counts))
        part_of_row = pa.array(np.repeat(np.arange(len(counts)), counts))
        columns: dict[str, pa.Array] = {
            col: pa.array([r[col] for r in self.curve_runs], CURVE_SCHEMA.field(col).type)
            .take(run_of_row)
            for col in ("run_key", "task", "loss", "loss_params", "seed")
        }
        columns["metric"] = pa.array([p[1] for p in parts]).take(part_of_row)
        if all(p[3] is None for p in parts):  # one value per epoch: 1, 2, ... per curve
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            columns["epoch"] = pa.array(np.arange(len(run_of_row)) - starts + 1)
        else:
            columns["epoch"] = pa.array(np.concatenate([
                np.arange(1, len(p[2]) + 1) if p[3] is None else np.asarray(p[3], np.int64)
                for p in parts]))
        columns["value"] = pa.concat_arrays([p[2] for p in parts])
        return pa.table(columns, schema=CURVE_SCHEMA)

    def index_table(self) -> pa.Table:
        return pa.table(self.index, schema=INDEX_SCHEMA)


def rows_of(records: Iterable[Mapping[str, Any]]) -> _Rows:
    rows = _Rows()
    for rec in records:
        rows.add(rec)
    return rows


# -- files ----------------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Segment:
    """A segment's name: ``<seq>-<runs>-<token>``; seq orders segments (newer owns a run)."""

    seq: int
    runs: int
    token: str

    @property
    def name(self) -> str:
        return f"{self.seq:020d}-{self.runs:07d}-{self.token}"

    @classmethod
    def parse(cls, stem: str) -> Segment | None:
        parts = stem.split("-")
        if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
            return None
        return cls(int(parts[0]), int(parts[1]), parts[2])

    @property
    def tier(self) -> int:
        return int(math.log(max(self.runs, 1), FANOUT) + 1e-9)


def _replace_into(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(temp)`` beside ``path``, then rename: readers never see half a file.
    The file gets the mode any new file gets here (as records do)."""
    tmp = path.with_name(f".tmp-{secrets.token_hex(4)}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _metric_groups(table: pa.Table, presorted: bool = False) -> Iterator[pa.Table]:
    """``table``'s rows, one table per metric (sorted; missing metric last)."""
    if table.num_rows == 0:
        return
    if not presorted:
        table = table.sort_by([("metric", "ascending")])  # missing metric last
    table = table.combine_chunks()
    metric = table.column("metric").combine_chunks()
    changed = pc.not_equal(metric[1:], metric[:-1]).fill_null(False)
    bounds = np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1
    edges = sorted({0, *bounds.tolist(), table.num_rows - metric.null_count, table.num_rows})
    for start, stop in itertools.pairwise(edges):
        if stop > start:
            yield table.slice(start, stop - start)


def _write_grouped(path: Path, schema: pa.Schema, groups: Iterable[pa.Table]) -> None:
    """Parquet whose row groups each hold whole metrics (a metric filter skips the others)."""

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            pending: list[pa.Table] = []
            for group in groups:
                pending.append(group)
                if sum(t.num_rows for t in pending) >= GROUP_ROWS:
                    writer.write_table(_joined(pending, schema), row_group_size=1 << 30)
                    pending = []
            if pending:
                writer.write_table(_joined(pending, schema), row_group_size=1 << 30)

    _replace_into(path, write)


def _joined(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables).combine_chunks() if tables else schema.empty_table()


def _read_parquet(paths: Sequence[Path], schema: pa.Schema, columns: Sequence[str] | None,
                  where: pc.Expression | None) -> pa.Table:
    if not paths:
        return schema.empty_table().select(list(columns or schema.names))
    dataset = ds.dataset([str(p) for p in paths], schema=schema, format="parquet")
    return dataset.to_table(columns=list(columns) if columns else None, filter=where,
                            use_threads=False)


# -- snapshot of the tables -----------------------------------------------------------------------

@dataclass
class Snapshot:
    """What the tables hold now, and what they lack compared with the records."""

    segments: dict[str, Segment]
    owners: pd.DataFrame
    """One row per live run: run_key, segment, stamp, status, family, torch/lossbench_version."""
    keep: dict[str, set[str] | None]
    """Per segment: None when every row of it is live, else the keys whose rows are."""
    pending: list[str]
    """Record keys whose rows the tables lack (new, rewritten, or in an unreadable segment)."""
    broken: dict[str, str]
    """Segments whose index cannot be read: name -> why."""
    indexes: dict[str, _Index]


@dataclass
class Extra:
    """Rows of pending records read into memory (the folder could not be written)."""

    runs: pa.Table
    curves: pa.Table
    index: pa.Table


class Tables:
    """The tables of one output folder (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.root
        self.runs_dir = self.root / "runs.parquet"
        self.curves_dir = self.root / "curves.parquet"
        self.index_dir = self.runs_dir / "_index"
        self.lock_path = self.root / ".tables.lock"
        self._cache_key = os.path.abspath(self.index_dir)
        self._index_cache = _INDEXES.setdefault(self._cache_key, {})
        self.last_keys: set[str] = set()

    # -- reading the index ------------------------------------------------------------------------

    def _legacy(self) -> bool:
        """A folder written by an older lossbench: single-file runs.parquet / runs.csv."""
        return self.runs_dir.is_file() or (
            not self.runs_dir.exists() and (self.root / "runs.csv").is_file())

    def _segment_names(self) -> dict[str, Segment]:
        if not self.index_dir.is_dir():
            return {}
        out = {}
        for entry in os.scandir(self.index_dir):
            if entry.name.endswith(".parquet") and not entry.name.startswith((".", "_")):
                seg = Segment.parse(entry.name[: -len(".parquet")])
                if seg is not None:
                    out[seg.name] = seg
        return out

    def snapshot(self, listed: bool = True) -> Snapshot:
        """The committed segments, their live runs and (``listed``) the pending records. The
        same segments and the same records listing give the same snapshot (reused: callers
        never change one)."""
        segments = self._segment_names()
        records = self.store.listing() if listed else None
        last = _SNAPSHOTS.get(self._cache_key)
        if last is not None and last[0] == set(segments) and last[1] is records and (
                records is not None or not listed):
            return last[2]
        snap = self._snapshot(segments, records)
        _SNAPSHOTS[self._cache_key] = (set(segments), records, snap)
        return snap

    def _snapshot(self, segments: dict[str, Segment], records: dict[str, int] | None
                  ) -> Snapshot:
        cache = self._index_cache
        for name in [n for n in cache if n not in segments]:
            cache.pop(name, None)
        broken: dict[str, str] = {}
        indexes: dict[str, _Index] = {}
        for name in segments:
            entry = cache.get(name)
            if entry is None:
                try:
                    table = pq.read_table(self.index_dir / f"{name}.parquet", use_threads=False)
                    combos = json.loads((table.schema.metadata or {})[CATALOGUE_KEY])
                    entry = cache[name] = _Index(
                        table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA),
                        {tuple(c) for c in combos})
                except FileNotFoundError:  # merged away since the listing
                    continue
                except (*TABLE_ERRORS, KeyError) as err:
                    broken[name] = f"{type(err).__name__}: {_first_line(err)}"
                    continue
            indexes[name] = entry
        names = sorted(indexes, key=lambda n: segments[n])
        tables = [indexes[n].table for n in names]
        index = (pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()).to_pandas()
        index["segment"] = np.repeat(np.array(names, dtype=object),
                                     [t.num_rows for t in tables]).astype(str)
        # segments are in seq order: the last copy of a run is its owner
        owners = index.drop_duplicates("run_key", keep="last")
        pending: list[str] = []
        if records is not None:
            live = [records.get(key) == stamp for key, stamp in
                    zip(owners["run_key"].tolist(), owners["stamp"].tolist(), strict=True)]
            owners = owners[np.array(live, dtype=bool)]
            pending = sorted(records.keys() - set(owners["run_key"].tolist()))
        rows_per_segment = index.groupby("segment").size()
        live_per_segment = owners.groupby("segment").size()
        keep: dict[str, set[str] | None] = {}
        for name in names:
            live = int(live_per_segment.get(name, 0))
            if live == int(rows_per_segment.get(name, 0)):
                keep[name] = None
            else:
                keep[name] = set(owners.loc[owners["segment"] == name, "run_key"].tolist())
        return Snapshot({n: segments[n] for n in names}, owners.reset_index(drop=True), keep,
                        pending, broken, indexes)

    # -- writing ----------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, timeout: float | None = None) -> Iterator[None]:
        """Writers one at a time (the kernel drops the lock of a killed process)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            deadline = time.monotonic() + (LOCK_TIMEOUT_S if timeout is None else timeout)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TablesBusy(f"another lossbench process is writing the tables of "
                                         f"{self.root}") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def _prepare(self) -> None:
        """Folders of the segmented layout; a legacy single-file table is replaced (its runs are
        rebuilt from their records) unless it holds runs that have no record."""
        if self._legacy():
            listing = self.store.listing()
            keys = set() if listing is None else set(listing)
            for name in ("runs.parquet", "runs.csv", "curves.parquet"):
                path = self.root / name
                if not path.is_file():
                    continue
                if name != "curves.parquet":
                    orphans = _legacy_keys(path) - keys
                    if orphans:
                        raise UserError(
                            f"'{path}' holds {len(orphans)} runs that have no record in "
                            f"{self.store.records_dir}; move it out of the folder to write "
                            "tables there")
                path.unlink()
        if self.curves_dir.is_file():
            self.curves_dir.unlink()
        for folder in (self.index_dir, self.curves_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def _new_segment(self, runs: int, after: Iterable[Segment]) -> Segment:
        seq = max([time.time_ns(), *(s.seq + 1 for s in after)])
        return Segment(seq, runs, secrets.token_hex(4))

    def _paths(self, name: str) -> tuple[Path, Path, Path]:
        return (self.runs_dir / f"{name}.parquet", self.curves_dir / f"{name}.parquet",
                self.index_dir / f"{name}.parquet")

    def _commit(self, seg: Segment, runs: Iterable[pa.Table], curves: Iterable[pa.Table],
                index: pa.Table) -> None:
        runs_path, curves_path, index_path = self._paths(seg.name)
        combos: set[Combo] = set()

        def noted(groups: Iterable[pa.Table]) -> Iterator[pa.Table]:
            for group in groups:
                combos.update(_combos(group))
                yield group

        _write_grouped(runs_path, RUN_SCHEMA, noted(runs))
        _write_grouped(curves_path, CURVE_SCHEMA, curves)
        meta = {CATALOGUE_KEY: json.dumps(sorted(combos, key=str))}
        # the index is written last: the commit point
        _replace_into(index_path, lambda tmp: pq.write_table(
            index.replace_schema_metadata(meta), tmp))
        self._index_cache[seg.name] = _Index(index, combos)

    def _remove(self, names: Iterable[str]) -> None:
        for name in names:
            runs_path, curves_path, index_path = self._paths(name)
            for path in (index_path, runs_path, curves_path):  # index first: uncommit
                path.unlink(missing_ok=True)
            self._index_cache.pop(name, None)

    def _write_rows(self, rows: _Rows, known: Iterable[Segment]) -> Segment:
        seg = self._new_segment(len(rows.curve_runs), known)
        self._commit(seg, _metric_groups(rows.runs_table()),
                     _metric_groups(rows.curves_table(), presorted=True), rows.index_table())
        return seg

    def _add_pending(self, snap: Snapshot) -> tuple[int, list[tuple[Path, str]]]:
        """Rows of the pending records, CHUNK_RUNS records per segment."""
        known = list(snap.segments.values())
        added = 0
        unreadable: list[tuple[Path, str]] = []
        for start in range(0, len(snap.pending), CHUNK_RUNS):
            rows = self._rows_of_keys(snap.pending[start: start + CHUNK_RUNS], unreadable)
            if rows.curve_runs:
                known.append(self._write_rows(rows, known))
                added += len(rows.curve_runs)
        return added, unreadable

    def _rows_of_keys(self, keys: Iterable[str], unreadable: list[tuple[Path, str]]) -> _Rows:
        rows = _Rows()
        for key in keys:
            record, why, stamp = self.store.load(key)
            if record is None:
                if why != "missing":
                    unreadable.append((self.store.path(key), why))
                continue
            try:
                rows.add(record, stamp)
            except (KeyError, TypeError, ValueError, AttributeError, pa.ArrowException) as err:
                unreadable.append((self.store.path(key), f"a field has an unusable value "
                                                         f"({type(err).__name__}: {err})"))
        return rows

    def _rewrite(self, snap: Snapshot, names: Sequence[str]) -> Segment | None:
        """Merge segments ``names`` into one holding only their live rows; remove them."""
        keep = {n: snap.keep[n] for n in names}
        live = snap.owners[snap.owners["segment"].isin(names)]
        seg = None
        if len(live):
            seg = self._new_segment(len(live), snap.segments.values())
            index = pa.Table.from_pandas(live[INDEX_SCHEMA.names], schema=INDEX_SCHEMA,
                                         preserve_index=False)
            self._commit(seg, self._merged(self.runs_dir, RUN_SCHEMA, keep),
                         self._merged(self.curves_dir, CURVE_SCHEMA, keep), index)
        self._remove(names)
        return seg

    def _merge(self, snap: Snapshot, names: Sequence[str]) -> None:
        """``_rewrite``; segments that turn out unreadable are dropped instead (their runs are
        pending again: the next reader or ``sync`` adds them from their records)."""
        try:
            self._rewrite(snap, names)
        except TABLE_ERRORS:
            self._remove(names)

    def _merged(self, folder: Path, schema: pa.Schema,
                keep: Mapping[str, set[str] | None]) -> Iterator[pa.Table]:
        """The live rows of segments ``keep`` in ``folder``, one table per metric: memory stays
        at one metric of the merged segments, not all of them."""
        paths = {name: folder / f"{name}.parquet" for name in keep}
        metrics: set[str | None] = set()
        for path in paths.values():
            metrics |= _metrics_in(path)
        for metric in sorted(metrics, key=lambda m: (m is None, m or "")):
            where = (pc.field("metric").is_null() if metric is None
                     else pc.field("metric") == metric)
            parts = [_read_parquet([path], schema, None, _with_keys(where, keep[name]))
                     for name, path in paths.items()]
            table = pa.concat_tables(parts)
            if table.num_rows:
                yield table

    def _collect(self, snap: Snapshot) -> None:
        """Drop unreadable segments, rewrite those holding dead rows, merge full tiers, remove
        files no index refers to (left by a killed writer)."""
        self._remove(snap.broken)
        dirty = [n for n, k in snap.keep.items() if k is not None]
        for name in dirty:
            self._merge(snap, [name])
        if dirty:
            snap = self.snapshot(listed=False)
        while True:
            tiers: dict[int, list[Segment]] = {}
            for seg in snap.segments.values():
                if seg.runs < FULL_RUNS:
                    tiers.setdefault(seg.tier, []).append(seg)
            ready = [sorted(group)[:FANOUT] for group in tiers.values() if len(group) >= FANOUT]
            if not ready:
                break
            self._merge(snap, [s.name for s in ready[0]])
            snap = self.snapshot(listed=False)
        committed = set(snap.segments) | set(snap.broken)
        for folder in (self.runs_dir, self.curves_dir, self.index_dir):
            for entry in os.scandir(folder):
                stem = entry.name.removesuffix(".parquet")
                if entry.is_file() and (entry.name.startswith(".tmp-") or (
                        Segment.parse(stem) is not None and stem not in committed)):
                    Path(entry.path).unlink(missing_ok=True)

    def sync(self, rebuild: bool = False, timeout: float | None = None) -> SyncReport:
        """Add the rows of every pending record (``rebuild``: of every record, then drop the
        old segments); merge and clean up. Returns what was done."""
        with self._locked(timeout):
            self._prepare()
            snap = self.snapshot()
            old = list(snap.segments) + list(snap.broken)
            if rebuild:
                listing = self.store.listing()
                if listing is None:
                    raise UserError(f"{self.root} has no records/ folder to rebuild the tables "
                                    "from")
                snap = replace(snap, pending=sorted(listing))
            added, unreadable = self._add_pending(snap)
            if rebuild:
                self._remove(old)
            self._collect(self.snapshot())
        return SyncReport(added, unreadable, len(snap.broken))

    def add(self, records: Sequence[Mapping[str, Any]], timeout: float | None = None) -> None:
        """Rows of records just written by ``Store.write`` (no listing of the records folder)."""
        with self._locked(timeout):
            if self._legacy() or not self.index_dir.is_dir():
                self._prepare()
                snap = self.snapshot()
                self._add_pending(snap)
                self._collect(self.snapshot(listed=False))
                return
            snap = self.snapshot(listed=False)
            owned = dict(zip(snap.owners["run_key"].tolist(), snap.owners["stamp"].tolist(),
                             strict=True))
            rows = _Rows()
            for rec in records:
                key = str(rec["run_key"])
                stamp = file_stamp(self.store.path(key).stat())
                if owned.get(key) != stamp:
                    rows.add(rec, stamp)
            if rows.curve_runs:
                self._write_rows(rows, snap.segments.values())
            self._collect(self.snapshot(listed=False))

    # -- reading ----------------------------------------------------------------------------------

    def current(self) -> tuple[Snapshot, Extra | None]:
        """A snapshot with nothing pending: pending records are added first (under the lock),
        or read into memory where the folder cannot be written or another writer is busy."""
        snap = self.snapshot() if not self._legacy() else None
        if snap is not None and not snap.pending and not snap.broken:
            return snap, None
        if snap is not None and snap.broken and not self.store.records_dir.is_dir():
            name, why = next(iter(snap.broken.items()))
            raise UserError(f"table file '{self.index_dir / name}.parquet' is unreadable ({why}) "
                            f"and {self.root} has no records to rebuild it from")
        try:
            self.store.unreadable = self.sync(timeout=READER_WAIT_S).unreadable
            snap = self.snapshot()
        except (OSError, TablesBusy, UserError):
            if snap is None:  # a legacy folder that cannot be converted: every record in memory
                snap = _empty_snapshot(sorted(self.store.listing() or {}))
        if not snap.pending:
            return snap, None
        unreadable: list[tuple[Path, str]] = []
        rows = self._rows_of_keys(snap.pending, unreadable)
        self.store.unreadable = unreadable
        return snap, Extra(rows.runs_table(), rows.curves_table(), rows.index_table())

    def _legacy_file(self, kind: str) -> tuple[bool, Path | None]:
        """Whether the single-file tables of an older lossbench are read as they are (they hold
        exactly the runs of the records, or there are no records), and the file of ``kind``
        (None: there is none and no records to build it from)."""
        if not self._legacy():
            return False, None
        runs_file = next(p for p in (self.runs_dir, self.root / "runs.csv") if p.is_file())
        listing = self.store.listing()
        if listing is not None and _legacy_keys(runs_file) != set(listing):
            return False, None
        path = runs_file if kind == "runs" else self.curves_dir
        if path.is_file():
            return True, path
        return (False, None) if listing is not None and len(listing) else (True, None)

    def finished(self) -> dict[str, dict[str, Any]]:
        """Finished runs (ok or diverged): key -> {status, versions: {torch, lossbench}}, read
        from the index -- no record is parsed except pending ones."""
        readable, legacy = self._legacy_file("runs")
        if readable:
            columns = ["run_key", "status", "torch_version", "lossbench_version"]
            index = (read_table_file(legacy, RUN_SCHEMA, columns) if legacy is not None
                     else INDEX_SCHEMA.empty_table().select(columns)).to_pandas()
        else:
            snap, extra = self.current()
            frames = [snap.owners[INDEX_SCHEMA.names]]
            if extra is not None:
                frames.append(extra.index.to_pandas())
            index = pd.concat(frames, ignore_index=True)
        index = index[index["status"].isin(list(FINISHED))].drop_duplicates("run_key")
        keys, *facts = (index[c].tolist() for c in
                        ("run_key", "status", "torch_version", "lossbench_version"))
        shared: dict[tuple[Any, ...], dict[str, Any]] = {}  # few distinct: one dict each
        for fact in set(zip(*facts, strict=True)):
            status, torch, lossbench = fact
            shared[fact] = {"status": status, "versions": {"torch": torch, "lossbench": lossbench}}
        return {key: shared[fact] for key, fact in zip(keys, zip(*facts, strict=True),
                                                        strict=True)}

    def read(self, kind: str, metrics: Iterable[str] | None = None,
             keys: Iterable[str] | None = None, columns: Sequence[str] | None = None
             ) -> pa.Table:
        """Live rows of ``kind`` (``runs`` / ``curves``) of these metrics (plus the rows without
        a metric, which failed runs have), of these keys, with these columns. Sets
        ``self.last_keys``: every live run key (of ``keys``) the read saw."""
        folder, schema = ((self.runs_dir, RUN_SCHEMA) if kind == "runs"
                          else (self.curves_dir, CURVE_SCHEMA))
        wanted = None if keys is None else set(keys)
        where = _where(metrics, wanted)
        readable, legacy = self._legacy_file(kind)
        if readable:
            table = read_table_file(legacy, schema) if legacy is not None else (
                schema.empty_table())
            seen = set(table.column("run_key").to_pylist())
            self.last_keys = seen if wanted is None else seen & wanted
            table = table.filter(where) if where is not None else table
            return table.select(list(columns)) if columns else table
        for _ in range(READ_RETRIES):
            snap, extra = self.current()
            try:
                table = self._read_segments(snap, folder, schema, where, columns)
            except TABLE_ERRORS:  # merged away meanwhile (read again), or broken (repair)
                self._repair(snap, folder)
                continue
            live = set(snap.owners["run_key"].tolist())
            if extra is not None:
                more = getattr(extra, kind)
                more = more.filter(where) if where is not None else more
                table = pa.concat_tables([table, more.select(table.column_names)])
                live |= set(extra.index.column("run_key").to_pylist())
            self.last_keys = live & wanted if wanted is not None else live
            return table
        raise UserError(f"the tables of {self.root} kept changing or stayed unreadable while "
                        "being read; retry, or run `lossbench tables --rebuild`")

    def _read_segments(self, snap: Snapshot, folder: Path, schema: pa.Schema,
                       where: pc.Expression | None, columns: Sequence[str] | None) -> pa.Table:
        clean = [folder / f"{n}.parquet" for n, k in snap.keep.items() if k is None]
        parts = [_read_parquet(clean, schema, columns, where)]
        for name, keys in snap.keep.items():
            if keys:
                parts.append(_read_parquet([folder / f"{name}.parquet"], schema, columns,
                                           _with_keys(where, keys)))
        return pa.concat_tables(parts)

    def _repair(self, snap: Snapshot, folder: Path) -> None:
        """Find segment files that are unreadable, or missing while their index is there (a
        writer removes the index first); drop those segments when records can rebuild their
        rows, else stop with the file's name."""
        bad = []
        for name in snap.keep:
            path = folder / f"{name}.parquet"
            try:
                pq.ParquetFile(path).read()
            except FileNotFoundError as err:
                if (self.index_dir / f"{name}.parquet").is_file():
                    bad.append((name, path, f"missing ({err.strerror})"))
            except TABLE_ERRORS as err:
                bad.append((name, path, f"{type(err).__name__}: {_first_line(err)}"))
        if not bad:
            return
        name, path, why = bad[0]
        if not self.store.records_dir.is_dir():
            raise UserError(f"table file '{path}' is unreadable ({why}) and {self.root} has no "
                            "records to rebuild it from")
        try:
            with self._locked(READER_WAIT_S):
                self._remove(n for n, _, _ in bad)
        except (OSError, TablesBusy):
            raise UserError(f"table file '{path}' is unreadable ({why}) and cannot be replaced "
                            f"here; run `lossbench tables {self.root} --rebuild` where the folder "
                            "is writable") from None

    def runs_frame(self, metrics: Iterable[str] | None = None,
                   keys: Iterable[str] | None = None,
                   columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The tidy runs table (RUN_COLUMNS, or ``columns``). With ``metrics``, every run still
        has a row: a run with none of them keeps one row without a metric (as a failed run
        has)."""
        if columns is not None:
            columns = list(dict.fromkeys(["run_key", *columns, "metric", "value"]))
        table = self.read("runs", metrics, keys, columns)
        if metrics is not None:
            missing = self.last_keys - set(pc.unique(table.column("run_key")).to_pylist())
            if missing:
                extra = self.read("runs", None, missing, columns)
                first = pc.index_in(pc.unique(extra.column("run_key")), extra.column("run_key"))
                extra = extra.take(first)
                extra = extra.set_column(extra.schema.get_field_index("metric"), "metric",
                                         pa.nulls(extra.num_rows, pa.string()))
                extra = extra.set_column(extra.schema.get_field_index("value"), "value",
                                         pa.nulls(extra.num_rows, pa.float64()))
                table = pa.concat_tables([table, extra])
        return table.to_pandas()

    def curves_frame(self, metrics: Iterable[str] | None = None,
                     keys: Iterable[str] | None = None) -> pd.DataFrame:
        return self.read("curves", metrics, keys).to_pandas()

    def catalogue(self) -> pd.DataFrame:
        """Distinct (family, status, metric) of the runs: which metrics there are. Each segment
        notes its own when written; only segments holding dead rows are read."""
        columns = ["family", "status", "metric"]
        if self._legacy():
            return self.read("runs", columns=columns).group_by(columns).aggregate([]).to_pandas()
        for _ in range(READ_RETRIES):
            snap, extra = self.current()
            combos = {c for n, k in snap.keep.items() if k is None
                      for c in snap.indexes[n].combos}
            tables = [extra.runs] if extra is not None else []
            try:
                tables += [_read_parquet([self.runs_dir / f"{n}.parquet"], RUN_SCHEMA, columns,
                                         _with_keys(None, k)) for n, k in snap.keep.items() if k]
            except TABLE_ERRORS:
                self._repair(snap, self.runs_dir)
                continue
            for table in tables:
                combos.update(_combos(table))
            return pd.DataFrame(sorted(combos, key=str), columns=columns)
        raise UserError(f"the tables of {self.root} kept changing or stayed unreadable while "
                        "being read; retry, or run `lossbench tables --rebuild`")

    def export_csv(self, path: Path) -> int:
        """Every live run row in one CSV file (the tidy runs table); returns the row count."""
        table = self.read("runs")
        frame = table.to_pandas()
        _replace_into(path, lambda tmp: frame.to_csv(tmp, index=False))
        return len(frame)

    def export_parquet(self, path: Path) -> int:
        """Every live run row in one parquet file (what a report reads as a results folder's
        single-file table); returns the row count."""
        table = self.read("runs")
        _replace_into(path, lambda tmp: pq.write_table(table, tmp))
        return table.num_rows


@dataclass
class SyncReport:
    added: int
    unreadable: list[tuple[Path, str]]
    dropped: int
    """Unreadable segments dropped (their runs re-added from records)."""


Combo = tuple[str | None, str | None, str | None]
"""(family, status, metric) of some run rows."""
CATALOGUE_KEY = b"lossbench.catalogue"


@dataclass
class _Index:
    """One segment's index and its catalogue (the distinct (family, status, metric) of its
    rows), kept for as long as the segment exists."""

    table: pa.Table
    combos: set[Combo]


_INDEXES: dict[str, dict[str, _Index]] = {}
"""Per index folder, the indexes read so far: segment files never change, so a process reads
each one once."""
_SNAPSHOTS: dict[str, tuple[set[str], dict[str, int] | None, Snapshot]] = {}
"""Per index folder, the last snapshot, with the segments and the records listing it is of."""


def _combos(table: pa.Table) -> set[Combo]:
    columns = ["family", "status", "metric"]
    distinct = table.select(columns).group_by(columns).aggregate([])
    return set(zip(*(distinct.column(c).to_pylist() for c in columns), strict=True))


def _empty_snapshot(pending: list[str]) -> Snapshot:
    return Snapshot({}, pd.DataFrame(columns=[*INDEX_SCHEMA.names, "segment"]), {}, pending, {},
                    {})


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else ""


def _where(metrics: Iterable[str] | None, keys: Iterable[str] | None) -> pc.Expression | None:
    where = None
    if metrics is not None:
        where = pc.field("metric").isin(sorted(set(metrics))) | pc.field("metric").is_null()
    return _with_keys(where, keys)


def _with_keys(where: pc.Expression | None, keys: Iterable[str] | None) -> pc.Expression | None:
    if keys is None:
        return where
    in_keys = pc.field("run_key").isin(sorted(set(keys)))
    return in_keys if where is None else where & in_keys


def _metrics_in(path: Path) -> set[str | None]:
    """The metrics of a segment file, from row-group statistics where a group holds one."""
    file = pq.ParquetFile(path)
    column = file.schema_arrow.get_field_index("metric")
    found: set[str | None] = set()
    for group in range(file.num_row_groups):
        stats = file.metadata.row_group(group).column(column).statistics
        if stats is not None and stats.has_min_max and stats.min == stats.max and (
                stats.null_count == 0):
            found.add(stats.min)
        else:
            values = file.read_row_group(group, columns=["metric"]).column("metric")
            found |= set(pc.unique(values).to_pylist())
    return found


def _legacy_keys(path: Path) -> set[str]:
    try:
        return set(read_table_file(path, RUN_SCHEMA, ["run_key"]).column("run_key").to_pylist())
    except UserError:
        return set()  # unreadable: nothing in it to keep


def read_table_file(path: Path, schema: pa.Schema, columns: Sequence[str] | None = None
                    ) -> pa.Table:
    """A single-file table (.parquet or .csv) as ``schema``; a one-line error naming the file
    when it cannot be read or lacks columns."""
    names = list(columns or schema.names)
    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path, usecols=lambda c: c in names, dtype=str,
                                keep_default_na=False)
        else:
            frame = None
            table = pq.read_table(path, columns=[c for c in names if c in _columns_of(path)])
    except (*TABLE_ERRORS, pd.errors.ParserError, pd.errors.EmptyDataError,
            UnicodeDecodeError) as err:
        raise UserError(f"table file '{path}' is unreadable ({type(err).__name__}: "
                        f"{_first_line(err)})") from None
    present = list(frame.columns) if frame is not None else table.column_names
    missing = [c for c in names if c not in present and c not in OPTIONAL_RUN_COLUMNS]
    if missing:
        what = "runs" if "status" in schema.names else "curves"
        raise UserError(f"'{path}' is not a lossbench {what} table: missing columns "
                        f"{', '.join(missing)}")
    absent = [c for c in names if c not in present]
    if frame is not None:
        frame = frame.assign(**{c: "" for c in absent})
        table = pa.Table.from_pandas(frame[names].replace({"": None}), preserve_index=False)
    else:
        for c in absent:
            table = table.append_column(c, pa.array([""] * table.num_rows, pa.string()))
    fields = pa.schema([schema.field(c) for c in names])
    try:
        return table.select(names).cast(fields)
    except TABLE_ERRORS as err:
        raise UserError(f"table file '{path}' has a column of the wrong type ("
                        f"{_first_line(err)})") from None


def _columns_of(path: Path) -> list[str]:
    return pq.read_schema(path).names
