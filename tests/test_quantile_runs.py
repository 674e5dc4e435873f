"""Quantile runs end to end: a pinball run scores its quantiles and saves them beside its record;
``lossbench aggregate`` combines such runs (Fakoor et al., JMLR 2023) into records of their own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lossbench import aggregate as agg
from lossbench.cli import app
from lossbench.engine.arrays import read_arrays
from lossbench.engine.store import Store
from lossbench.quantiles import pinball, quantile_scores, wis
from lossbench.report.load import load_runs

runner = CliRunner()
SMOKE = ["--task", "diabetes", "--budget", "smoke", "--device", "cpu"]


def run(out: Path, *args: str) -> None:
    result = runner.invoke(app, ["run", *SMOKE, "--out", str(out), *args])
    assert result.exit_code == 0, result.output


def by_loss(out: Path) -> dict[str, dict]:
    return {r["config"]["loss"]: r for r in Store(out).records()}


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two folders of pinball runs (two model widths), splits 0 and 1."""
    root = tmp_path_factory.mktemp("members")
    for name, hidden in (("narrow", 16), ("wide", 48)):
        run(root / name, "--loss", "pinball", "--seeds", "0,1", "--set",
            f"model.hidden={hidden}")
    return root / "narrow", root / "wide"


def test_pinball_run_scores_and_saves_its_quantiles(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(out, "--loss", "pinball", "--loss", "mse", "--seeds", "0")
    recs = by_loss(out)
    files = sorted(p.name for p in (out / "records").iterdir())
    key = recs["pinball"]["run_key"]
    assert files == sorted([f"{key}.json", f"{key}.npz", f"{recs['mse']['run_key']}.json"])
    arrays = read_arrays(out / "records" / f"{key}.npz")
    assert arrays is not None and "arrays" not in recs["pinball"]
    levels = tuple(arrays["levels"])
    assert levels == (0.05, 0.5, 0.95) and recs["pinball"]["info"]["quantile_levels"] == [
        0.05, 0.5, 0.95]
    shift, scale = float(arrays["y_mean"]), float(arrays["y_std"])
    m = recs["pinball"]["metrics"]
    for checkpoint, suffix in (("last", ""), ("best", "@best_val")):
        q_test = arrays[f"test_{checkpoint}"].astype(np.float64) * scale + shift
        q_val = arrays[f"val_{checkpoint}"].astype(np.float64) * scale + shift
        expected = quantile_scores(levels, q_val, arrays["y_val"], q_test, arrays["y_test"])
        for name, value in expected.metrics.items():
            assert m[f"test_{name}{suffix}"] == pytest.approx(value, rel=1e-12), name
        assert m[f"test_wis{suffix}"] == pytest.approx(
            wis(np.sort(q_test, axis=1), arrays["y_test"], levels).mean())
        assert m[f"test_wis{suffix}"] <= m[f"test_wis_raw{suffix}"] + 1e-12
    assert int(arrays["best_epoch"]) == m["best_epoch"]
    assert "conformal_exact" in recs["pinball"]["info"]
    assert not any(k.startswith("test_wis") for k in recs["mse"]["metrics"])


def test_packed_quantile_runs_save_what_single_runs_save(tmp_path: Path) -> None:
    grid = ["--loss", "pinball", "--loss", "pinball:quantiles=0.1/0.5/0.9", "--seeds", "0"]
    run(tmp_path / "single", *grid)
    run(tmp_path / "packed", *grid, "--pack", "2")
    single, packed = Store(tmp_path / "single"), Store(tmp_path / "packed")
    for rec in packed.records():
        assert rec["packed"] == 2
        twin = single.read(rec["run_key"])
        assert twin is not None
        assert rec["metrics"] == pytest.approx(twin["metrics"], rel=1e-4, abs=1e-5)
        a = read_arrays(packed.records_dir / f"{rec['run_key']}.npz")
        b = read_arrays(single.records_dir / f"{rec['run_key']}.npz")
        assert a is not None and b is not None and a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_aggregate_of_one_run_scores_like_the_run(members: tuple[Path, Path]) -> None:
    """A one-member mean is the member itself: every score it shares with the member's record
    must agree (the aggregate is scored like a run), except the ``_raw`` and ``_isotonic`` ones:
    members enter sorted, so the aggregate's raw quantiles are the member's sorted ones."""
    found, without = agg.load_members(Store(members[0]))
    assert without == 0 and len(found) == 2
    member = found[0]
    record = agg.aggregate([member], "mean")
    theirs = member.record["metrics"]
    shared = {k for k in set(record["metrics"]) & set(theirs)
              if not k.split("@")[0].endswith(("_raw", "_isotonic"))}
    assert {"test_wis", "test_wis@best_val", "test_rmse", "test_coverage", "val_rmse",
            "test_qcov_0.5_conformal"} <= shared
    for name in shared:
        assert record["metrics"][name] == pytest.approx(theirs[name], rel=1e-5, abs=1e-6), name
    assert record["metrics"]["test_wis_raw"] == pytest.approx(theirs["test_wis"], rel=1e-9)


def test_weighted_fit_is_the_validation_optimum() -> None:
    """Two members: the LP's weight matches a fine grid search over the simplex, and the fitted
    combination is at least as good on validation as every member and their mean."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    q = np.stack([y + rng.normal(size=300) * 0.5 + 0.3, y + rng.normal(size=300) * 0.8 - 0.2])
    for tau in (0.1, 0.5, 0.9):
        w = agg.fit_level_weights(q, y, tau)
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0)

        def loss(a: float, tau: float = tau) -> float:
            return float(pinball((a * q[0] + (1 - a) * q[1])[:, None], y, (tau,)).sum())

        grid = min(loss(a) for a in np.linspace(0, 1, 2001))
        assert loss(float(w[0])) <= grid + 1e-9
        assert loss(float(w[0])) <= min(loss(1.0), loss(0.0), loss(0.5)) + 1e-9


def test_aggregate_cli(members: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "agg"
    args = ["aggregate", *map(str, members), "--method", "median,weighted", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = Store(out).records()
    assert len(records) == 4  # 2 splits x 2 methods
    for rec in records:
        cfg = rec["config"]
        assert cfg["loss"] == "aggregate" and cfg["task"] == "diabetes"
        assert len(rec["members"]) == 2 and cfg["loss_params"]["members"] == 2
        assert math.isfinite(rec["metrics"]["test_wis@best_val"])
        if cfg["loss_params"]["method"] == "weighted":
            weights = rec["info"]["weights"]["last"]
            assert set(weights) == {"0.05", "0.5", "0.95"}
            for per_level in weights.values():
                assert sum(per_level.values()) == pytest.approx(1.0)
            assert rec["info"]["conformal_exact"] is False
    keys = sorted(r["run_key"] for r in records)
    assert runner.invoke(app, args).exit_code == 0  # the same members: the same keys
    assert sorted(Store(out).run_keys()) == keys
    table = load_runs([out])  # the tidy tables (runs.csv is written only on --export)
    rows = table[(table["loss"] == "aggregate") & (table["metric"] == "test_wis")]
    assert set(rows["loss_params"]) == {"members=2,method=median", "members=2,method=weighted"}
    report = runner.invoke(app, ["compare", *map(str, members), str(out), "--metric",
                                 "test_wis", "--format", "json"])
    assert report.exit_code == 0, report.output
    assert {"aggregate:members=2,method=median", "pinball"} <= {
        row["method"] for row in json.loads(report.output)}


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "vote"], "unknown --method 'vote'; accepted: median, mean, weighted"),
    (["--method", ""], "--method is empty"),
])
def test_aggregate_bad_methods(members: tuple[Path, Path], args: list[str], message: str
                               ) -> None:
    result = runner.invoke(app, ["aggregate", str(members[0]), *args])
    assert result.exit_code == 2 and message in result.output


def test_aggregate_needs_quantile_runs_and_two_members(tmp_path: Path) -> None:
    result = runner.invoke(app, ["aggregate", str(tmp_path)])
    assert result.exit_code == 2 and "holds no run records" in result.output
    run(tmp_path / "mse", "--loss", "mse", "--seeds", "0")
    result = runner.invoke(app, ["aggregate", str(tmp_path / "mse")])
    assert result.exit_code == 2 and "no finished quantile-loss runs" in result.output
    run(tmp_path / "one", "--loss", "pinball", "--seeds", "0")
    result = runner.invoke(app, ["aggregate", str(tmp_path / "one")])
    assert result.exit_code == 2 and "no two on the same task, split and levels" in (
        " ".join(result.output.split()))
