"""Loading results for reports; also the fake-record builder the other report tests import."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lossbench.engine.store import Store, tidy_runs
from lossbench.errors import UserError
from lossbench.report.load import load_curves, load_runs, method_labels


def fake_record(task: str, loss: str, seed: int, metrics: Mapping[str, float], *,
                params: Mapping[str, Any] | None = None, status: str = "ok",
                noise_rate: float = 0.4, family: str = "classification",
                budget: str = "smoke", epochs: int = 3) -> dict[str, Any]:
    """A run record shaped like the executors' (config, status, metrics, curves, provenance)."""
    config = {"task": task, "family": family, "budget": budget, "loss": loss,
              "loss_params": dict(params or {}), "seed": seed, "noise_rate": noise_rate}
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    ok = status == "ok"
    curves = {m: [v * (e + 1) / epochs for e in range(epochs)] for m, v in metrics.items()}
    return {
        "run_key": key, "config": config, "status": status,
        "reason": "" if ok else "loss is nan", "metrics": dict(metrics) if ok else {},
        "curves": {**curves, "train_loss": [2.0 / (e + 1) for e in range(epochs)]} if ok else {},
        "info": {"noise": {"kind": "symmetric", "requested_rate": noise_rate,
                           "realised_rate": noise_rate}},
        "wall_s": 1.0, "device": "cpu:x86_64", "git_commit": "abc123",
        "versions": {"lossbench": "0.1.0", "torch": "2.13.0"},
        "finished_at": f"2026-01-{seed + 1:02d}T00:00:00+00:00",
    }


def fake_records(table: Mapping[tuple[str, str], Sequence[float | None]], *,
                 metric: str = "test_top1", **kwargs: Any) -> list[dict[str, Any]]:
    """Records from ``{(task, loss spec): [value per seed]}``; a None value is a diverged run.

    A loss spec is ``name`` or ``name:k=v`` (as on the CLI).
    """
    records = []
    for (task, spec), values in table.items():
        loss, _, text = spec.partition(":")
        params = dict(p.split("=") for p in text.split(",")) if text else {}
        for seed, value in enumerate(values):
            status = "ok" if value is not None else "diverged"
            records.append(fake_record(task, loss, seed, {metric: value or 0.0},
                                       params=params, status=status, **kwargs))
    return records


def fake_runs(table: Mapping[tuple[str, str], Sequence[float | None]], **kwargs: Any
              ) -> pd.DataFrame:
    """A loaded runs table (with ``method``) built through the store's real ``tidy_runs``."""
    runs = tidy_runs(fake_records(table, **kwargs)).assign(source="mem")
    return runs.assign(method=method_labels(runs))


def write_results(folder: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    store = Store(folder)
    for rec in records:
        store.write(rec)
    store.write_tables()
    return folder


def test_load_parquet_csv_and_records_agree(tmp_path: Path) -> None:
    records = fake_records({("t", "ce"): [70.0, 71.0], ("t", "gce:q=0.7"): [72.0, None]})
    folder = write_results(tmp_path / "res", records)
    Store(folder).tables.export_csv(folder / "runs.csv")
    from_parquet = load_runs([folder])
    from_csv = load_runs([folder / "runs.csv"])
    shutil.rmtree(folder / "runs.parquet")  # the tables are a cache: rebuilt from the records
    from_records = load_runs([folder])
    cols = ["run_key", "loss", "loss_params", "seed", "status", "metric", "value"]
    for other in (from_csv, from_records):
        pd.testing.assert_frame_equal(
            from_parquet[cols].sort_values(cols).reset_index(drop=True),
            other[cols].sort_values(cols).reset_index(drop=True), check_dtype=False)
    assert from_csv.loc[from_csv["loss"] == "ce", "loss_params"].eq("").all()
    assert set(from_parquet["method"]) == {"ce", "gce"}
    diverged = from_parquet[from_parquet["status"] == "diverged"]
    assert len(diverged) == 1 and diverged["metric"].isna().all()


def test_method_labels_show_params_only_when_a_loss_has_several() -> None:
    runs = fake_runs({("t", "ce"): [1.0], ("t", "gce:q=0.7"): [1.0], ("t", "gce:q=0.5"): [1.0],
                      ("t", "sce:a=1"): [1.0], ("t", "mae"): [1.0],
                      ("t", "mae:reduce=small-loss"): [1.0]})
    assert sorted(set(runs["method"])) == ["ce", "gce:q=0.5", "gce:q=0.7", "mae",
                                           "mae:reduce=small-loss", "sce"]


def test_several_sources_concatenate_and_deduplicate(tmp_path: Path) -> None:
    a = fake_records({("t", "ce"): [70.0, 71.0]})
    b = fake_records({("u", "ce"): [60.0]})
    write_results(tmp_path / "a", a)
    write_results(tmp_path / "b", [*b, a[0]])  # the same run copied into b
    runs = load_runs([tmp_path / "a", tmp_path / "b"])
    assert runs["run_key"].nunique() == 3
    assert len(runs) == 3  # one metric per run, the shared run counted once


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nope", "does not exist"),
        (lambda p: p, "no runs in"),
        (lambda p: (p / "x.txt").write_text("a") and p / "x.txt", "expected a results folder"),
        (lambda p: pd.DataFrame({"a": [1]}).to_csv(p / "t.csv") or p / "t.csv",
         "not a lossbench runs table: missing columns run_key"),
    ],
)
def test_bad_paths_are_one_line_errors(tmp_path: Path, make: Any, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        load_runs([make(tmp_path)])
    assert "\n" not in str(err.value)


def test_load_curves_from_table_or_records(tmp_path: Path) -> None:
    folder = write_results(tmp_path / "r", fake_records({("t", "ce"): [70.0, 71.0]}))
    curves = load_curves([folder])
    assert set(curves["metric"]) == {"test_top1", "train_loss"} and curves["epoch"].max() == 3
    shutil.rmtree(folder / "curves.parquet")  # the segments' index is left: rebuilt from records
    assert len(load_curves([folder])) == len(curves)
    assert load_curves([tmp_path / "r" / "runs.csv"]).shape[0] == len(curves)


def test_run_summary_keeps_settings_of_one_task_apart() -> None:
    from lossbench.report.summary import summarise

    runs = pd.concat([
        fake_runs({("t", "ce"): [70.0, 72.0]}).assign(spec_key="a", noise_kind="uniform",
                                                       noise_rate=0.6),
        fake_runs({("t", "ce"): [90.0, 92.0]}).assign(
            spec_key="b", noise_kind="none", noise_rate=0.0),
    ]).reset_index(drop=True)
    runs["run_key"] = runs["run_key"] + runs["spec_key"]
    table = summarise(runs, ["test_top1"]).set_index("setting")
    assert table.loc["uniform 0.6", "test_top1_mean"] == 71.0
    assert table.loc["clean", "test_top1_mean"] == 91.0
    one = summarise(runs[runs["spec_key"] == "a"], ["test_top1"])
    assert list(one["setting"]) == [""]  # a task with one setting needs no label
