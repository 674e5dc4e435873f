"""The run store: one JSON record per finished run, written atomically, plus the tidy tables.

Layout under an output folder::

    records/<run-key>.json   one per finished run (status ok / diverged / failed)
    records/<run-key>.npz    arrays a run keeps, where its family returns some (engine.arrays)
    runs.parquet, runs.csv   tidy: one row per run x final metric (columns in README)
    curves.parquet           tidy: one row per run x metric x epoch

A run whose record says ``ok`` or ``diverged`` is finished (divergence is a result: the same seed
diverges again); a ``failed`` run (a crash) is retried on the next invocation. ``--force`` re-runs
everything.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lossbench.engine.arrays import SUFFIX, write_arrays

FINISHED = frozenset({"ok", "diverged"})
RUN_COLUMNS = [
    "run_key", "task", "family", "budget", "loss", "loss_params", "seed", "status", "reason",
    "noise_kind", "noise_rate", "noise_realised", "metric", "value", "wall_s", "device",
    "git_commit", "lossbench_version", "torch_version", "finished_at",
]
CURVE_COLUMNS = ["run_key", "task", "loss", "loss_params", "seed", "metric", "epoch", "value"]


class Store:
    """Records of one output folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"

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
        record = {k: v for k, v in record.items() if k != "arrays"}
        fd, tmp = tempfile.mkstemp(dir=self.records_dir, prefix=".tmp-", suffix=".json")
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh, indent=1, sort_keys=True, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def run_keys(self) -> list[str]:
        """Keys of the record files (temp files of an unfinished write are never records)."""
        if not self.records_dir.is_dir():
            return []
        return sorted(p.stem for p in self.records_dir.glob("*.json")
                      if not p.name.startswith("."))

    def read(self, key: str) -> dict[str, Any] | None:
        """The record of ``key``; None when it is missing or unreadable (see ``check_record``)."""
        record, _ = _load(self.path(key))
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every readable record; unreadable ones are listed in ``self.unreadable`` (path,
        why) and count as not finished, so a resume re-runs them."""
        self.unreadable: list[tuple[Path, str]] = []
        out = []
        for key in self.run_keys():
            record, problem = _load(self.path(key))
            if record is None:
                self.unreadable.append((self.path(key), problem))
            else:
                out.append(record)
        return out

    def done_keys(self) -> set[str]:
        return {r["run_key"] for r in self.records() if r.get("status") in FINISHED}

    def write_tables(self) -> pd.DataFrame:
        """Rebuild the tidy tables from all records; returns the runs table."""
        records = self.records()
        runs = tidy_runs(records)
        curves = tidy_curves(records)
        self.root.mkdir(parents=True, exist_ok=True)
        runs.to_csv(self.root / "runs.csv", index=False)
        runs.to_parquet(self.root / "runs.parquet", index=False)
        curves.to_parquet(self.root / "curves.parquet", index=False)
        return runs


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


def _load(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(record, '') or (None, why it cannot be used)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    problem = check_record(record, path.stem)
    return (None, problem) if problem else (record, "")


def _params_text(params: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(params.items()))


def tidy_runs(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run x final metric; a run with no metrics (failed) keeps one row, metric=None."""
    rows: list[dict[str, Any]] = []
    for rec in records:
        cfg = rec["config"]
        # Diverged/failed runs have no noise report: fall back to the requested noise in the spec,
        # so they land in the right column of a noise sweep (realised rate unknown).
        requested = cfg.get("spec", {}).get("noise") or {}
        noise = (rec.get("info") or {}).get("noise") or {
            "kind": requested.get("kind", "none"),
            "requested_rate": requested.get("rate", 0.0),
            "realised_rate": float("nan"),
        }
        base = {
            "run_key": rec["run_key"], "task": cfg["task"], "family": cfg["family"],
            "budget": cfg["budget"], "loss": cfg["loss"],
            "loss_params": _params_text(cfg["loss_params"]), "seed": cfg["seed"],
            "status": rec["status"], "reason": rec.get("reason", ""),
            "noise_kind": noise.get("kind", "none"),
            "noise_rate": noise.get("requested_rate", 0.0),
            "noise_realised": noise.get("realised_rate", 0.0),
            "wall_s": rec.get("wall_s"), "device": rec.get("device"),
            "git_commit": rec.get("git_commit"),
            "lossbench_version": rec.get("versions", {}).get("lossbench"),
            "torch_version": rec.get("versions", {}).get("torch"),
            "finished_at": rec.get("finished_at"),
        }
        metrics = rec.get("metrics") or {None: None}
        rows += [base | {"metric": m, "value": v} for m, v in metrics.items()]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def curve_points(curves: Mapping[str, list[float]]) -> list[tuple[str, int, float]]:
    """(metric, 1-based epoch, value) of a record's curves. A curve ``<prefix>_...`` is measured
    at the epochs listed in the curve ``<prefix>_epoch`` when the record has one (a family that
    scores some epochs only, e.g. classification's ``val_epoch`` / ``test_epoch``), else once
    per epoch; the ``*_epoch`` lists themselves are not points."""
    points = []
    for metric, values in curves.items():
        if metric.endswith("_epoch") or not values:
            continue
        listed = curves.get(f"{metric.split('_', 1)[0]}_epoch")
        epochs = [int(e) for e in listed] if listed else range(1, len(values) + 1)
        points += [(metric, e, v) for e, v in zip(epochs, values, strict=False)]
    return points


def tidy_curves(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "run_key": rec["run_key"], "task": rec["config"]["task"], "loss": rec["config"]["loss"],
            "loss_params": _params_text(rec["config"]["loss_params"]),
            "seed": rec["config"]["seed"], "metric": metric, "epoch": epoch, "value": value,
        }
        for rec in records
        for metric, epoch, value in curve_points(rec.get("curves") or {})
    ]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)
