"""End-to-end: `lossbench run/list/show` on the offline digits tasks at the smoke budget."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.engine import executors
from lossbench.engine.store import Store

runner = CliRunner()
SMOKE = ["--task", "digits-noisy", "--budget", "smoke", "--device", "cpu"]


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_list_losses_and_tasks() -> None:
    code, out = invoke("list", "losses")
    assert code == 0
    for name in ("ce", "ldr", "aldr", "gce", "sce", "nce+rce"):
        assert name in out
    code, out = invoke("list", "tasks")
    assert code == 0 and "digits-noisy" in out and "cifar100-noisy" in out


def test_run_writes_records_tables_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "res"
    code, text = invoke("run", "--loss", "ce", "--loss", "gce:q=0.7", *SMOKE, "--seeds", "0,1",
                        "--out", str(out))
    assert code == 0, text
    assert "4 to run" in text and "results (classification)" in text
    records = Store(out).records()
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    rec = records[0]
    assert rec["config"]["spec"]["train"]["epochs"] == 3
    assert rec["versions"]["torch"] and rec["git_commit"] and rec["device"].startswith("cpu")
    assert rec["info"]["noise"]["kind"] == "symmetric"
    assert 0.3 < rec["info"]["noise"]["realised_rate"] < 0.5
    curves = rec["curves"]
    assert len(curves["train_loss"]) == 3 and curves["val_epoch"] == [1, 2, 3]
    assert curves["test_epoch"][-1] == 3 and len(curves["test_top1"]) == len(curves["test_epoch"])
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(runs["metric"]) >= {"test_top1", "test_top1@best_val", "test_ece"}
    assert len(runs) == 4 * runs["metric"].nunique()

    code, text = invoke("run", "--loss", "ce", "--loss", "gce:q=0.7", *SMOKE, "--seeds", "0,1",
                        "--out", str(out))
    assert code == 0 and "4 already finished, 0 to run" in text
    code, text = invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0", "--out", str(out),
                        "--force")
    assert code == 0 and "1 to run" in text

    code, text = invoke("show", rec["run_key"][:8], "--out", str(out))
    assert code == 0 and rec["run_key"] in text and "test_top1" in text


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    values = []
    for name in ("a", "b"):
        code, text = invoke("run", "--loss", "aldr", *SMOKE, "--seeds", "3",
                            "--out", str(tmp_path / name))
        assert code == 0, text
        values.append(Store(tmp_path / name).records()[0]["metrics"])
    assert values[0] == values[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loss", "nope"], "unknown loss 'nope'; accepted:"),
        (["--loss", "gce:q=2"], "gce: q must be"),
        (["--loss", "gce:qq=1"], "unknown parameter 'qq'"),
        (["--loss", "ce", "--task", "nope"], "unknown task 'nope'"),
        (["--loss", "ce", "--seeds", "a"], "bad --seeds 'a'"),
        (["--loss", "ce", "--set", "noise.kind=gaussian"], "unknown noise model 'gaussian'"),
        (["--loss", "ce", "--set", "noise.rate=1.5"], "1.5"),
        (["--loss", "ce", "--budget", "huge"], "unknown budget 'huge'"),
    ],
)
def test_user_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    base = ["run", "--out", str(tmp_path), "--device", "cpu", "--budget", "smoke", "--seeds", "0"]
    if "--task" not in args:
        base += ["--task", "digits-noisy"]
    code, text = invoke(*base, *args)
    assert code == 2
    assert message in text
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1  # the error line alone, before any header


def test_interrupt_keeps_finished_runs_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = executors.run_one
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(executors, "run_one", flaky)
    code, text = invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0,1,2", "--out", str(tmp_path))
    assert code == 130 and "resume" in text
    assert len(Store(tmp_path).records()) == 1
    monkeypatch.setattr(executors, "run_one", real)
    code, text = invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0,1,2", "--out", str(tmp_path))
    assert code == 0 and "1 already finished, 2 to run" in text


def test_divergence_ends_the_run_not_the_grid(tmp_path: Path) -> None:
    code, text = invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0,1", "--out", str(tmp_path),
                        "--set", "train.lr=1e30", "--set", "train.momentum=0.0")
    assert code == 0, text
    records = Store(tmp_path).records()
    assert len(records) == 2 and {r["status"] for r in records} == {"diverged"}
    assert "non-finite" in records[0]["reason"]
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    assert set(runs["status"]) == {"diverged"}


def test_show_json_and_unknown_key(tmp_path: Path) -> None:
    invoke("run", "--loss", "ce", *SMOKE, "--seeds", "0", "--out", str(tmp_path))
    key = Store(tmp_path).records()[0]["run_key"]
    code, text = invoke("show", key, "--out", str(tmp_path), "--json")
    assert code == 0 and json.loads(text)["run_key"] == key
    code, text = invoke("show", "zzzz", "--out", str(tmp_path))
    assert code == 2 and "no run with key 'zzzz'" in text
