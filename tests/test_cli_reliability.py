"""What a CLI user can get wrong, or what can go wrong around a grid, never costs a traceback or
a finished run: bad options and spec keys, unwritable outputs, broken records, SIGTERM, a closed
stdout, and exit codes a CI job can trust."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lossbench import spec
from lossbench.cli import app
from lossbench.commands.run import resolve_workers
from lossbench.engine.store import Store
from lossbench.families import FAMILIES

runner = CliRunner()
SMOKE = ["--task", "digits-noisy", "--budget", "smoke", "--device", "cpu", "--set",
         "train.epochs=1"]
REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_importing_the_cli_loads_no_torch_or_pandas() -> None:
    code = ("import sys, lossbench.cli; heavy = {'torch', 'pandas', 'numpy'} & set(sys.modules);"
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=1", "unknown key(s) train.epoch; accepted: train.epochs"),
        ("train.lr=abc", "train.lr got 'abc'; expected a number"),
        ("train.momentum=abc", "train.momentum got 'abc'; expected a number"),
        ("train.epochs=2.5", "train.epochs got 2.5; expected an integer"),
        ("train.amp=1", "train.amp got 1; expected true or false"),
        ("train.milestones=[1.5]", "train.milestones got 1.5; expected an integer"),
        ("train.weight_decay=-1", "train.weight_decay must be >= 0"),
    ],
)
def test_set_typos_and_wrong_types_fail_before_the_grid(
    tmp_path: Path, override: str, message: str
) -> None:
    code, text = invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0", "--out", str(tmp_path),
                        "--set", override)
    assert code == 2 and message in text, text
    assert len(text.strip().splitlines()) == 1 and not (tmp_path / "records").exists()


def test_empty_or_descending_seeds(tmp_path: Path) -> None:
    code, text = invoke("run", "--loss", "ce", *SMOKE, "--seeds", "5-2", "--out", str(tmp_path))
    assert code == 2 and "empty range 5-2" in text


@pytest.mark.parametrize("kind", ["file", "readonly", "proc"])
def test_unwritable_out_fails_before_training(tmp_path: Path, kind: str) -> None:
    if kind == "file":
        out = tmp_path / "a-file"
        out.write_text("")
    elif kind == "readonly":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        out = tmp_path / "ro"
        out.mkdir(mode=0o500)
    else:
        out = Path("/proc/lossbench-results")
    code, text = invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0", "--out", str(out))
    assert code == 2 and "--out" in text and len(text.strip().splitlines()) == 1, text


@pytest.mark.parametrize("command", ["leaderboard", "gate", "plot"])
def test_report_outputs_are_checked(tmp_path: Path, command: str) -> None:
    results = tmp_path / "res"
    invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0", "--out", str(results))
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    option = {"leaderboard": "--out", "gate": "--write-baseline", "plot": "--out"}[command]
    target = blocker / "x.md" if command != "plot" else blocker
    code, text = invoke(command, str(results), option, str(target))
    if command == "plot" and "matplotlib" in text:
        pytest.skip("plots extra not installed")
    assert code == 2 and ("is a file" in text or "not writable" in text), text


def test_cuda_without_cuda_is_reported_first(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, text = invoke("run", "--loss", "ce", "--task", "digits-noisy", "--device", "cuda",
                        "--out", str(tmp_path))
    assert code == 2 and "CUDA is not available" in text
    assert len(text.strip().splitlines()) == 1


def _fail_seed(monkeypatch: pytest.MonkeyPatch, failing: set[int]) -> None:
    entry = FAMILIES.get("classification")
    real = entry.factory

    def flaky(ctx):  # type: ignore[no-untyped-def]
        if ctx.seed in failing:
            raise RuntimeError(f"boom {ctx.seed}")
        return real(ctx)

    monkeypatch.setitem(FAMILIES._entries, "classification", replace(entry, factory=flaky))


@pytest.mark.parametrize(("failing", "expected"), [({0, 1}, 1), ({1}, 3), (set(), 0)])
def test_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: set[int],
                    expected: int) -> None:
    _fail_seed(monkeypatch, failing)
    code, text = invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0,1", "--out", str(tmp_path))
    assert code == expected, text
    if failing:
        assert f"{len(failing)} of 2 runs failed" in text


def _records(out: Path) -> list[Path]:
    return sorted((out / "records").glob("*.json"))


def test_broken_records_are_named_skipped_and_rerun(tmp_path: Path) -> None:
    code, _ = invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0-4", "--out", str(tmp_path))
    assert code == 0
    paths = _records(tmp_path)
    good = json.loads(paths[0].read_text())
    paths[0].write_text(paths[0].read_text()[:50])  # truncated
    paths[1].write_text("")
    paths[2].write_text("{}")
    paths[3].write_text("[1, 2]")
    # A temp file left complete by a kill at fsync is never a record.
    (tmp_path / "records" / ".tmp-abc.json").write_text(json.dumps(good))
    store = Store(tmp_path)
    assert len(store.records()) == 1 and len(store.unreadable) == 4
    code, text = invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0-4", "--out", str(tmp_path))
    assert code == 0 and "4 to run" in text and "unreadable" in text, text
    assert len(Store(tmp_path).records()) == 5
    code, text = invoke("show", good["run_key"][:10], "--out", str(tmp_path))
    assert code == 0 and good["run_key"] in text


def test_records_are_readable_by_the_group(tmp_path: Path) -> None:
    invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0", "--out", str(tmp_path))
    mask = os.umask(0)
    os.umask(mask)
    assert _records(tmp_path)[0].stat().st_mode & 0o777 == 0o666 & ~mask


def test_runs_lists_keys_and_filters(tmp_path: Path) -> None:
    invoke("run", "--loss", "ce", "--loss", "gce", *SMOKE, "--seeds", "0,1", "--out",
           str(tmp_path))
    code, text = invoke("runs", str(tmp_path), "--loss", "gce")
    assert code == 0 and "2 runs" in text
    for rec in Store(tmp_path).records():
        assert (rec["run_key"] in text) == (rec["config"]["loss"] == "gce")
    code, text = invoke("runs", str(tmp_path), "--status", "failed")
    assert code == 2 and "no runs" in text


def test_threads_are_in_the_key_and_the_record(tmp_path: Path) -> None:
    for threads in ("1", "2"):
        invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0", "--threads", threads, "--out",
               str(tmp_path))
    records = Store(tmp_path).records()
    assert len(records) == 2
    assert sorted(r["torch_threads"] for r in records) == [1, 2]
    assert {r["config"]["threads"] for r in records} == {1, 2}


def test_workers_auto_never_exceeds_cores_or_groups() -> None:
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers("auto", 1, 1) == 1
    assert resolve_workers("auto", 1, 1000) == cores
    assert resolve_workers("auto", cores, 1000) == 1
    assert resolve_workers("3", 1, 1) == 3


def test_a_broken_task_file_is_named_and_hides_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken.toml").write_text("family = 'classification'\n[data\n")
    dirs = spec.tasks_dirs()
    monkeypatch.setattr(spec, "tasks_dirs", lambda: [*dirs, tmp_path])
    spec._task_files.cache_clear()
    try:
        code, text = invoke("list", "tasks")
        assert code == 0 and "digits-noisy" in text and "broken" in text
        code, text = invoke("run", "--loss", "ce", "--task", "broken", "--out", str(tmp_path))
        assert code == 2 and "broken.toml is not valid TOML" in text
    finally:
        spec._task_files.cache_clear()


def _cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = os.environ | {"LOSSBENCH_WORKERS": "1", "COLUMNS": "120"}
    return subprocess.Popen([sys.executable, "-m", "lossbench.cli", *args], cwd=REPO, env=env,
                            text=True, **kwargs)  # type: ignore[call-overload]


def test_sigterm_saves_finished_runs_and_resumes(tmp_path: Path) -> None:
    args = ["run", "--loss", "ce", *SMOKE, "--seeds", "0-39", "--out", str(tmp_path)]
    proc = _cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # a start-up of minutes on a loaded 2-core box
    while not _records(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "resume" in err, err
    done = len(_records(tmp_path))
    assert 1 <= done < 40
    code, text = invoke(*args)
    assert code == 0 and f"{done} already finished, {40 - done} to run" in text


def test_sigterm_stops_pool_workers_mid_run(tmp_path: Path) -> None:
    """With a process pool, SIGTERM does not wait for the runs in training (each would take
    minutes here, and their results are not saved anyway)."""
    args = ["run", "--loss", "ce", "--task", "digits-noisy", "--budget", "smoke", "--device",
            "cpu", "--set", "train.epochs=20000", "--seeds", "0,1", "--workers", "2",
            "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "lossbench.cli", *args], cwd=REPO,
                            env=os.environ | {"COLUMNS": "120"}, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(15)  # the workers have started training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "resume" in err, err
    assert not _records(tmp_path)


def test_a_closed_stdout_does_not_end_the_grid(tmp_path: Path) -> None:
    proc = _cli("run", "--loss", "ce", *SMOKE, "--seeds", "0-5", "--out", str(tmp_path),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # `lossbench run ... | head -1`
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert len(_records(tmp_path)) == 6


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [("mean", "abc", "column mean has a non-numeric value 'abc'"),
     ("n", "x", "column n has a non-numeric value 'x'"),
     ("noise_rate", "foo", "column noise_rate has a non-numeric value 'foo'"),
     ("std", "-1", "is negative"), ("n", "0", "not a count of seeds"),
     ("n", "2.5", "not a count of seeds")],
)
def test_bad_baseline_values_are_one_line(tmp_path: Path, column: str, value: str,
                                          message: str) -> None:
    results = tmp_path / "res"
    invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0,1", "--out", str(results))
    baseline = tmp_path / "base.csv"
    assert invoke("gate", str(results), "--write-baseline", str(baseline))[0] == 0
    import pandas as pd

    table = pd.read_csv(baseline, dtype=str)
    table.loc[0, column] = value
    table.to_csv(baseline, index=False)
    code, text = invoke("gate", str(results), "--baseline", str(baseline))
    assert code == 2 and message in text and len(text.strip().splitlines()) == 1, text


def test_runs_differing_only_by_a_set_value_are_refused_alike(tmp_path: Path) -> None:
    for epochs in ("1", "2"):
        invoke("run", "--loss", "ce", *SMOKE[:-2], "--set", f"train.epochs={epochs}", "--seeds",
               "0", "--out", str(tmp_path / "mixed"))
    invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0", "--out", str(tmp_path / "one"))
    assert invoke("gate", str(tmp_path / "one"), "--write-baseline", str(tmp_path / "b.csv")
                  )[0] == 0
    for args in (["compare"], ["gate", "--write-baseline", str(tmp_path / "w.csv")],
                 ["gate", "--baseline", str(tmp_path / "b.csv")]):
        code, text = invoke(args[0], str(tmp_path / "mixed"), *args[1:])
        assert code == 2 and "differ in config" in text, (args, text)
