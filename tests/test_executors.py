"""Executors: a process pool and Ray give the same records as in-process runs; resume works
across executors because the driver alone writes the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.engine.store import Store

runner = CliRunner()
GRID = ["run", "--loss", "ce", "--loss", "gce", "--task", "digits-noisy", "--budget", "smoke",
        "--device", "cpu", "--seeds", "0,1"]


def metrics_by_key(out: Path) -> dict[str, dict[str, float]]:
    return {r["run_key"]: r["metrics"] for r in Store(out).records()}


def assert_same(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-6)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    out = tmp_path_factory.mktemp("local")
    result = runner.invoke(app, [*GRID, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return metrics_by_key(out)


def test_process_pool_matches_in_process(tmp_path: Path, in_process: dict) -> None:
    result = runner.invoke(app, [*GRID, "--out", str(tmp_path), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert_same(metrics_by_key(tmp_path), in_process)


def test_ray_matches_in_process_and_resumes_local_work(tmp_path: Path, in_process: dict) -> None:
    pytest.importorskip("ray")
    first = runner.invoke(app, [*GRID[:-1], "0", "--out", str(tmp_path)])  # seed 0 locally
    assert first.exit_code == 0, first.output
    result = runner.invoke(app, [*GRID, "--out", str(tmp_path), "--executor", "ray",
                                 "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "2 already finished, 2 to run" in result.output
    assert_same(metrics_by_key(tmp_path), in_process)


def test_bad_executor_options(tmp_path: Path) -> None:
    result = runner.invoke(app, [*GRID, "--out", str(tmp_path), "--executor", "slurm"])
    assert result.exit_code == 2
    assert "unknown executor 'slurm'; accepted: local, ray" in result.output
    result = runner.invoke(app, [*GRID, "--out", str(tmp_path), "--workers", "0"])
    assert result.exit_code == 2 and "--workers must be >= 1" in result.output
