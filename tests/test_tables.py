"""The tidy tables as a cache of the records: kept up to date run by run, never stale, never half
written, rebuilt or refused with the file's name when a table file is broken."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_report_load import fake_record, fake_records
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.engine import store as store_module
from lossbench.engine import tables as tables_module
from lossbench.engine.grid import expand, run_key
from lossbench.engine.store import RUN_COLUMNS, Store, tidy_curves, tidy_runs
from lossbench.errors import UserError
from lossbench.report.load import load_curves, load_runs

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def records(n: int, task: str = "t", **kwargs: Any) -> list[dict[str, Any]]:
    """``n`` runs (two metrics, failed and diverged ones among them) of one task."""
    out = []
    for seed in range(n):
        status = "failed" if seed % 7 == 3 else "diverged" if seed % 7 == 5 else "ok"
        rec = fake_record(task, "ce", seed, {"test_top1": 60.0 + seed, "test_ece": 1.0 + seed},
                          status=status, **kwargs)
        out.append(rec)
    return out


def as_a_new_process() -> None:
    """Forget what this process read of the tables (each index is read once per process)."""
    tables_module._INDEXES.clear()
    tables_module._SNAPSHOTS.clear()
    store_module._LISTINGS.clear()


def sorted_frame(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.sort_values(by, na_position="first").reset_index(drop=True)


def same_rows(a: pd.DataFrame, b: pd.DataFrame, by: list[str]) -> None:
    pd.testing.assert_frame_equal(sorted_frame(a, by), sorted_frame(b, by), check_dtype=False)


RUN_ORDER = ["run_key", "metric"]
CURVE_ORDER = ["run_key", "metric", "epoch"]


def test_incremental_adds_equal_a_full_rebuild(tmp_path: Path) -> None:
    recs = records(40)
    store = Store(tmp_path / "a")
    for rec in recs:
        store.save(rec)  # one segment per run, merged in tiers as they come
    segments = store.tables.snapshot().segments
    assert 1 < len(segments) <= 2 * (tables_module.FANOUT - 1)
    rebuilt = Store(tmp_path / "b")
    for rec in recs:
        rebuilt.write(rec)
    assert rebuilt.write_tables(rebuild=True).added == 40
    for store_ in (store, rebuilt):
        same_rows(store_.tables.runs_frame(), tidy_runs(recs), RUN_ORDER)
        same_rows(store_.tables.curves_frame(), tidy_curves(recs), CURVE_ORDER)
    # the tables are plain parquet datasets too
    same_rows(pd.read_parquet(store.root / "runs.parquet"), tidy_runs(recs), RUN_ORDER)
    same_rows(pd.read_parquet(store.root / "curves.parquet"), tidy_curves(recs), CURVE_ORDER)


def test_a_kill_between_record_and_rows_loses_nothing(tmp_path: Path) -> None:
    recs = records(10)
    store = Store(tmp_path)
    for rec in recs[:6]:
        store.save(rec)
    for rec in recs[6:]:
        store.write(rec)  # killed (-9, OOM, SIGTERM) before its rows were added
    runs = load_runs([tmp_path])
    assert set(runs["run_key"]) == {r["run_key"] for r in recs}
    assert set(Store(tmp_path).finished()) == {r["run_key"] for r in recs
                                                if r["status"] in ("ok", "diverged")}
    assert not Store(tmp_path).tables.snapshot().pending  # the reader added them


def test_a_rewritten_record_replaces_its_rows(tmp_path: Path) -> None:
    store = Store(tmp_path)
    old = fake_record("t", "ce", 0, {"test_top1": 50.0})
    store.save(old)
    store.save(fake_record("t", "ce", 1, {"test_top1": 51.0}))
    new = {**old, "metrics": {"test_top1": 99.0, "test_nll": 0.5}}
    store.save(new)  # --force
    runs = store.tables.runs_frame()
    mine = runs[runs["run_key"] == old["run_key"]]
    assert sorted(mine["metric"]) == ["test_nll", "test_top1"]
    assert mine.set_index("metric")["value"].to_dict() == {"test_top1": 99.0, "test_nll": 0.5}
    # rewritten again but killed before the rows: the reader still shows the record's numbers
    store.write({**old, "metrics": {"test_top1": 12.0}})
    runs = load_runs([tmp_path])
    assert runs.loc[runs["run_key"] == old["run_key"], "value"].tolist() == [12.0]
    # changed in place (same inode) and deleted: the tables follow the records
    path = store.path(old["run_key"])
    path.write_text(json.dumps({**old, "metrics": {"test_top1": 13.0}}))
    runs = load_runs([tmp_path])
    assert runs.loc[runs["run_key"] == old["run_key"], "value"].tolist() == [13.0]
    path.unlink()
    assert set(load_runs([tmp_path])["run_key"]) == {fake_record("t", "ce", 1, {})["run_key"]}


def test_a_reader_parses_no_record_when_the_tables_are_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    for rec in records(8):
        store.save(rec)

    def no_parsing(self: Store, key: str) -> None:
        raise AssertionError(f"record {key} parsed")

    monkeypatch.setattr(Store, "load", no_parsing)
    assert len(Store(tmp_path).finished()) == 7
    runs = load_runs([tmp_path], {"test_ece"})
    assert runs["run_key"].nunique() == 8  # every run has a row; failed ones without a metric
    assert set(runs["metric"].dropna()) == {"test_ece"}
    assert runs["metric"].isna().sum() == 2  # the failed and the diverged run


def test_a_run_without_the_asked_metric_keeps_a_row(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save(fake_record("t", "ce", 0, {"test_top1": 1.0}))
    store.save(fake_record("t", "ce", 1, {"test_nll": 2.0}))
    runs = store.tables.runs_frame({"test_top1"})
    assert len(runs) == 2 and runs["metric"].isna().sum() == 1


def test_unwritable_or_busy_folder_is_read_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recs = records(6)
    store = Store(tmp_path)
    for rec in recs[:3]:
        store.save(rec)
    for rec in recs[3:]:
        store.write(rec)

    def read_only(self: Any, rebuild: bool = False, timeout: float | None = None) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tables_module.Tables, "sync", read_only)
    runs = load_runs([tmp_path])
    assert runs["run_key"].nunique() == 6
    assert len(Store(tmp_path).tables.snapshot().pending) == 3  # nothing was written
    monkeypatch.undo()
    # another writer holds the lock: a reader does not wait for it
    monkeypatch.setattr(tables_module, "READER_WAIT_S", 0.2)
    holder = Store(tmp_path).tables
    with holder._locked():
        started = time.monotonic()
        assert load_runs([tmp_path])["run_key"].nunique() == 6
        assert time.monotonic() - started < 5


WRITER = """
import sys, time
from lossbench.engine.store import Store
store = Store(sys.argv[1])
seed, stop = 1000, time.monotonic() + float(sys.argv[2])
while time.monotonic() < stop:  # new runs, and every segment replaced again and again
    config = {"task": "t", "family": "classification", "budget": "smoke", "loss": "ce",
              "loss_params": {}, "seed": seed}
    store.save({"run_key": f"{seed:016x}", "config": config, "status": "ok",
                "metrics": {"test_top1": 1.0, "test_ece": 2.0},
                "curves": {"test_top1": [1.0, 2.0, 3.0]}, "finished_at": "2026-01-01"})
    store.write_tables(rebuild=True)
    seed += 1
"""


def test_a_reader_never_fails_while_a_writer_adds_and_merges(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for rec in records(20):
        store.save(rec)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "2"], env=env)
    reads = seen = 0
    try:
        while writer.poll() is None:
            runs = Store(tmp_path).tables.runs_frame()
            reads += 1
            per_run = runs.groupby("run_key").size()
            assert len(per_run) >= max(seen, 20)  # no run lost while segments are replaced
            assert (per_run == runs.groupby("run_key")["metric"].nunique(dropna=False)).all()
            seen = len(per_run)
    finally:
        assert writer.wait(60) == 0
    assert reads > 3 and seen > 20


def test_broken_table_files_are_rebuilt_from_records(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for rec in records(12):
        store.save(rec)
    snap = store.tables.snapshot()
    first, *_ = snap.segments
    (tmp_path / "runs.parquet" / f"{first}.parquet").write_bytes(b"not parquet")
    (tmp_path / "curves.parquet" / f"{first}.parquet").unlink()
    assert load_runs([tmp_path])["run_key"].nunique() == 12
    assert len(load_curves([tmp_path])) == len(tidy_curves(records(12)))
    last = list(Store(tmp_path).tables.snapshot().segments)[-1]
    (tmp_path / "runs.parquet" / "_index" / f"{last}.parquet").write_bytes(b"")
    as_a_new_process()
    assert load_runs([tmp_path])["run_key"].nunique() == 12


@pytest.mark.parametrize("broken", ["segment", "index", "legacy-parquet", "legacy-csv",
                                    "legacy-curves"])
def test_broken_table_files_without_records_are_one_line_errors(
    tmp_path: Path, broken: str
) -> None:
    recs = records(5)
    store = Store(tmp_path)
    if broken.startswith("legacy"):
        table = tidy_runs(recs)
        table.to_parquet(tmp_path / "runs.parquet")
        tidy_curves(recs).to_parquet(tmp_path / "curves.parquet")
        name = {"legacy-parquet": "runs.parquet", "legacy-csv": "runs.csv",
                "legacy-curves": "curves.parquet"}[broken]
        if broken == "legacy-csv":
            (tmp_path / "runs.parquet").unlink()
        (tmp_path / name).write_text("garbage,\n\x00\x01")
        path = tmp_path / name
    else:
        for rec in recs:
            store.save(rec)
        shutil.rmtree(tmp_path / "records")
        seg = next(iter(store.tables.snapshot().segments))
        folder = tmp_path / "runs.parquet" / ("_index" if broken == "index" else "")
        path = folder / f"{seg}.parquet"
        path.write_bytes(b"PAR1 truncated")
        as_a_new_process()
    if broken == "legacy-curves":
        with pytest.raises(UserError, match="unreadable") as err:
            load_curves([tmp_path])
    else:
        with pytest.raises(UserError, match=r"unreadable|not a lossbench") as err:
            load_runs([tmp_path])
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    args = ["plot", str(tmp_path), "--out", str(tmp_path / "plots")] if (
        broken == "legacy-curves") else ["compare", str(tmp_path)]
    code, text = invoke(*args)
    if "matplotlib" not in text:
        assert code == 2 and path.name in text and "Traceback" not in text, text


def test_a_broken_table_file_named_on_the_command_line(tmp_path: Path) -> None:
    for name in ("runs.csv", "runs.parquet"):
        path = tmp_path / name
        path.write_bytes(b"\x00\x01garbage" if name.endswith("parquet") else b"a,b\n1")
        code, text = invoke("compare", str(path))
        assert code == 2 and str(path) in text.replace("\n", ""), text


def old_results_folder(folder: Path, n: int) -> Path:
    """A folder in the layout lossbench wrote before segments: records plus single-file
    runs.parquet and curves.parquet."""
    store = Store(folder)
    for rec in records(n):
        store.write(rec)
    store.write_tables()
    runs, curves = load_runs([folder])[RUN_COLUMNS], load_curves([folder])
    for name in ("runs.parquet", "curves.parquet"):
        shutil.rmtree(folder / name)
    runs.to_parquet(folder / "runs.parquet", index=False)
    curves.to_parquet(folder / "curves.parquet", index=False)
    for lock in folder.glob(".tables*"):
        lock.unlink()
    return folder


def test_an_old_results_folder_is_read_as_it_is(tmp_path: Path) -> None:
    folder = old_results_folder(tmp_path / "old", 12)
    before = sorted(p.name for p in folder.iterdir())
    runs = load_runs([folder])
    assert runs["run_key"].nunique() == 12 and len(load_curves([folder])) > 0
    finished = sum(r["status"] in ("ok", "diverged") for r in records(12))
    assert len(Store(folder).finished()) == finished  # failed runs are not finished
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written
    # a record the old tables lack (a kill): caught up, the folder converted to segments
    rec = json.loads(next((folder / "records").glob("*.json")).read_text())
    rec = {**rec, "run_key": "0" * 16}
    Store(folder).write(rec)
    runs = load_runs([folder])
    assert runs["run_key"].nunique() == 13 and (folder / "runs.parquet").is_dir()


def test_tables_command_rebuilds_and_exports(tmp_path: Path) -> None:
    recs = records(9)
    store = Store(tmp_path)
    for rec in recs:
        store.write(rec)
    code, text = invoke("tables", str(tmp_path))
    assert code == 0 and "9 runs added from records" in text, text
    code, text = invoke("tables", str(tmp_path))
    assert code == 0 and "up to date" in text
    code, text = invoke("tables", str(tmp_path), "--rebuild", "--export")
    assert code == 0 and "rebuilt" in text and "runs.csv" in text, text
    exported = load_runs([tmp_path / "runs.csv"])
    same_rows(exported[RUN_COLUMNS], load_runs([tmp_path])[RUN_COLUMNS], RUN_ORDER)
    code, text = invoke("tables", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in text
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "t.json").write_text("{}")
    code, text = invoke("tables", str(tmp_path), "--publish", str(tmp_path / "pub"))
    assert code == 0 and "published" in text, text
    assert (tmp_path / "pub" / "runs.parquet").is_file()
    assert (tmp_path / "pub" / "tuning" / "t.json").is_file()
    same_rows(load_runs([tmp_path / "pub"])[RUN_COLUMNS], load_runs([tmp_path])[RUN_COLUMNS],
              RUN_ORDER)  # the compact copy reads as the folder does, without its records
    code, text = invoke("tables", str(tmp_path), "--publish", str(tmp_path))
    assert code == 2 and "another folder" in text
    (tmp_path / "a-file").write_text("x")
    code, text = invoke("tables", str(tmp_path), "--publish", str(tmp_path / "a-file"))
    assert code == 2 and "is a file, not a folder" in text and "Traceback" not in text


def test_segments_stay_few_and_files_are_never_half_written(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for rec in fake_records({("t", "ce"): [float(i) for i in range(40)]}):
        store.save(rec)
    snap = store.tables.snapshot()
    tiers = [s.tier for s in snap.segments.values()]
    assert all(tiers.count(t) < tables_module.FANOUT for t in set(tiers))
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    assert not leftovers
    names = {p.stem for p in (tmp_path / "runs.parquet").glob("*.parquet")}
    assert names == set(snap.segments) == {
        p.stem for p in (tmp_path / "curves.parquet").glob("*.parquet")}


def test_run_key_is_the_hash_of_the_whole_config() -> None:
    plugin = f"{REPO / 'examples' / 'my_loss.py'}:TemperedCE"
    configs = expand(["all", "gce:q=0.3", plugin], ["digits-noisy", "breast-cancer"], [0, 5],
                     "smoke", ["train.epochs=2"], "cpu", 2)
    assert len({c.key for c in configs}) == len(configs)
    for cfg in configs:  # the definition: the record's config, less where a plug-in lies
        config = cfg.as_dict()
        config.pop("task_file", None)
        if "loss_source" in config:
            config["loss_source"] = {k: config["loss_source"][k] for k in ("spec", "sha256")}
        assert cfg.key == run_key(config)
    assert any(c.loss_source for c in configs)


def test_record_folder_listing_sees_every_change(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rec = fake_record("t", "ce", 0, {"test_top1": 1.0})
    store.write(rec)
    first = store.listing()
    assert first is not None and list(first) == [rec["run_key"]]
    os.utime(store.records_dir, ns=(0, 0))  # an old folder: its listing is reused ...
    assert store.listing() is not None
    store.write(fake_record("t", "ce", 1, {"test_top1": 1.0}))  # ... until it changes
    listing = store.listing()
    assert listing is not None and len(listing) == 2


def test_a_no_op_resume_reads_the_tables_not_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = expand(["ce", "gce"], ["digits-noisy"], [0, 1], "smoke")
    store = Store(tmp_path)
    for i, cfg in enumerate(configs):
        store.save({"run_key": cfg.key, "config": asdict(cfg), "status": "ok",
                    "metrics": {"test_top1": 50.0 + i}, "curves": {},
                    "versions": {"torch": "0.0-other" if i == 0 else "2.13.0+cpu",
                                 "lossbench": "0.1.0"}})

    def no_parsing(self: Store, key: str) -> None:
        raise AssertionError(f"record {key} parsed")

    monkeypatch.setattr(Store, "load", no_parsing)
    code, text = invoke("run", "--loss", "ce", "--loss", "gce", "--task", "digits-noisy",
                        "--budget", "smoke", "--seeds", "0,1", "--device", "cpu", "--out",
                        str(tmp_path))
    assert code == 0 and "4 already finished, 0 to run" in text, text
    assert "1 finished run reused from the folder were made with torch 0.0-other" in text


def test_a_broken_segment_met_by_a_merge_does_not_stop_the_grid(tmp_path: Path) -> None:
    recs = records(tables_module.FANOUT)
    store = Store(tmp_path)
    for rec in recs[:-1]:
        store.save(rec)
    first = next(iter(store.tables.snapshot().segments))
    (tmp_path / "curves.parquet" / f"{first}.parquet").write_bytes(b"PAR1")
    store.save(recs[-1])  # its segment completes a tier: the merge meets the broken file
    assert store.tables_problem == ""
    assert load_runs([tmp_path])["run_key"].nunique() == len(recs)
    assert len(load_curves([tmp_path])) == len(tidy_curves(recs))


def test_a_busy_lock_does_not_slow_a_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SAVE_WAIT_S", 0.3)
    recs = records(4)
    store = Store(tmp_path)
    store.save(recs[0])
    with Store(tmp_path).tables._locked():  # a long catch-up in another process
        started = time.monotonic()
        for rec in recs[1:]:
            store.save(rec)
        assert time.monotonic() - started < 2  # waited once, then not at all
        assert "another lossbench process" in store.tables_problem
    store.save(fake_record("t", "ce", 99, {"test_top1": 1.0}))
    assert store.tables_problem == ""
    assert load_runs([tmp_path])["run_key"].nunique() == 5
