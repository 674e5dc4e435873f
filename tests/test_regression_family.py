"""Regression family: UCI loader on tiny fixtures in the authors' layout, the California cache,
splits and standardisation, metrics against scipy, task specs, and end-to-end CLI runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.sources import SOURCES
from lossbench.data.uci import UCI_FOLDERS, random_split
from lossbench.errors import UserError
from lossbench.families.regression import (
    check_spec,
    final_metrics,
    prepare_data,
    regression_metrics,
    validation_split,
)
from lossbench.spec import BUDGETS, resolve_task, task_names

runner = CliRunner()


def write_uci(root: Path, folder: str = "yacht", rows: int = 80, splits: int = 2,
              seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A tiny dataset in ``UCI_Datasets/<folder>/data/``: 3 features, the target in the middle
    column (so the target index really is read), split files written with ``%d`` as the
    authors' ``split_data_train_test.py`` does."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0]
    y = 100.0 + 20.0 * x[:, 0] + rng.normal(size=rows)
    data = np.column_stack([x[:, 0], x[:, 1], y, x[:, 2]])
    d = root / "UCI_Datasets" / folder / "data"
    d.mkdir(parents=True)
    np.savetxt(d / "data.txt", data)
    np.savetxt(d / "index_features.txt", [0, 1, 3], fmt="%d")
    np.savetxt(d / "index_target.txt", [2], fmt="%d")
    np.savetxt(d / "n_splits.txt", [splits], fmt="%d")
    trains = []
    for k in range(splits):
        order = rng.permutation(rows)
        cut = round(rows * 0.9)
        np.savetxt(d / f"index_train_{k}.txt", order[:cut], fmt="%d")
        np.savetxt(d / f"index_test_{k}.txt", order[cut:], fmt="%d")
        trains.append(order[:cut])
    return data, trains


def uci_spec(root: Path, name: str = "yacht", budget: str = "smoke") -> dict:
    return resolve_task(f"uci-{name}", budget, [f"data.dir={root}"])


# ---------------------------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------------------------


def test_random_split_is_a_seeded_90_10_partition() -> None:
    train, test = random_split(101, 0.1, 3)
    assert len(train) == 91 and len(test) == 10
    assert sorted(np.concatenate([train, test])) == list(range(101))
    np.testing.assert_array_equal(random_split(101, 0.1, 3)[1], test)
    assert not np.array_equal(random_split(101, 0.1, 4)[1], test)


@pytest.mark.parametrize("depth", ["UCI_Datasets", "dataset", "data"])
def test_uci_reads_the_authors_layout_from_any_depth(tmp_path: Path, depth: str) -> None:
    data, trains = write_uci(tmp_path)
    root = {"UCI_Datasets": tmp_path / "UCI_Datasets",
            "dataset": tmp_path / "UCI_Datasets" / "yacht",
            "data": tmp_path / "UCI_Datasets" / "yacht" / "data"}[depth]
    raw = SOURCES.get("uci").build({"name": "yacht", "dir": str(root)}, split=1)
    np.testing.assert_allclose(raw.y_train, data[trains[1], 2])
    np.testing.assert_allclose(raw.x_train, data[trains[1]][:, [0, 1, 3]], rtol=1e-6)
    assert raw.x_train.shape == (72, 3) and raw.x_test.shape == (8, 3)
    assert raw.num_classes == 0 and raw.kind == "tabular" and raw.meta["n_splits"] == 2


def test_uci_uses_the_authors_folder_names(tmp_path: Path) -> None:
    write_uci(tmp_path, folder=UCI_FOLDERS["naval"])
    raw = SOURCES.get("uci").build({"name": "naval", "dir": str(tmp_path)}, split=0)
    assert raw.meta["dataset"] == "naval"


def test_uci_split_out_of_range_names_the_seed(tmp_path: Path) -> None:
    write_uci(tmp_path)
    with pytest.raises(UserError, match=r"split 2 out of range.*2 splits.*seed"):
        SOURCES.get("uci").build({"name": "yacht", "dir": str(tmp_path)}, split=2)


def test_uci_rejects_indices_outside_the_data(tmp_path: Path) -> None:
    write_uci(tmp_path)
    np.savetxt(tmp_path / "UCI_Datasets/yacht/data/index_test_0.txt", [0, 500], fmt="%d")
    with pytest.raises(UserError, match="outside"):
        SOURCES.get("uci").build({"name": "yacht", "dir": str(tmp_path)}, split=0)


def test_uci_missing_is_one_line_saying_where_to_put_the_files(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        SOURCES.get("uci").build({"name": "boston", "dir": str(tmp_path)}, split=0)
    message = str(err.value)
    assert "\n" not in message
    assert "bostonHousing/data" in message and "data.dir" in message


def test_unknown_uci_name_is_a_user_error() -> None:
    with pytest.raises(UserError, match="accepted: boston"):
        SOURCES.get("uci").resolve({"name": "mnist"})


def test_california_reads_the_scikit_learn_cache_and_never_downloads(tmp_path: Path) -> None:
    # scikit-learn's cache: a joblib dump of [target x 1e5, MedInc, HouseAge, rooms, bedrooms,
    # population, households, latitude, longitude].
    rng = np.random.default_rng(0)
    table = rng.uniform(1.0, 10.0, size=(50, 9))
    joblib.dump(table, tmp_path / "cal_housing_py3.pkz", compress=6)
    raw = SOURCES.get("sklearn-california").build({"dir": str(tmp_path)}, split=0)
    assert raw.x_train.shape == (45, 8) and raw.x_test.shape == (5, 8)
    np.testing.assert_allclose(np.sort(np.concatenate([raw.y_train, raw.y_test])),
                               np.sort(table[:, 0] / 1e5))
    with pytest.raises(UserError, match=r"data\.dir"):
        SOURCES.get("sklearn-california").build({"dir": str(tmp_path / "none")}, split=0)


def test_diabetes_is_bundled() -> None:
    raw = SOURCES.get("sklearn-diabetes").build({}, split=0)
    assert raw.x_train.shape == (398, 10) and raw.x_test.shape == (44, 10)
    assert raw.y_train.dtype == np.float64


# ---------------------------------------------------------------------------------------------
# Validation part and standardisation.
# ---------------------------------------------------------------------------------------------


def test_validation_split_is_disjoint_fixed_per_split_and_varies_across_splits() -> None:
    fit, val = validation_split(100, 0.1, 0, 3)
    assert len(val) == 10 and not np.isin(val, fit).any() and len(fit) + len(val) == 100
    np.testing.assert_array_equal(validation_split(100, 0.1, 0, 3)[1], val)
    assert not np.array_equal(validation_split(100, 0.1, 0, 4)[1], val)


def test_standardisation_uses_the_fitting_part_only(tmp_path: Path) -> None:
    data, trains = write_uci(tmp_path)
    spec = uci_spec(tmp_path)
    d = prepare_data(spec, 1, torch.device("cpu"))
    fit, val = validation_split(len(trains[1]), 0.1, 0, 1)
    y_fit = data[trains[1][fit], 2]
    assert d.y_mean == pytest.approx(y_fit.mean()) and d.y_std == pytest.approx(y_fit.std())
    torch.testing.assert_close(d.y_train.double(), torch.tensor((y_fit - y_fit.mean())
                                                                / y_fit.std()), rtol=0, atol=1e-6)
    torch.testing.assert_close(d.y_val, torch.tensor(data[trains[1][val], 2]))
    assert d.x_train.mean(dim=0).abs().max() < 1e-5
    torch.testing.assert_close(d.x_train.std(dim=0, unbiased=False), torch.ones(3))
    # Test targets stay in original units and never enter the statistics.
    assert d.y_test.dtype == torch.float64 and len(d.y_test) == 8


# ---------------------------------------------------------------------------------------------
# Metrics (original units) against scipy.
# ---------------------------------------------------------------------------------------------


def test_metrics_in_original_units_match_scipy() -> None:
    rng = np.random.default_rng(1)
    mean_s, var_s = rng.normal(size=30), rng.uniform(0.2, 2.0, size=30)
    shift, scale = 40.0, 7.5
    y = shift + scale * (mean_s + rng.normal(size=30))
    pred = {"mean": torch.tensor(mean_s, dtype=torch.float32),
            "var": torch.tensor(var_s, dtype=torch.float32)}
    got = regression_metrics(pred, torch.tensor(y), shift, scale, 0.8, None)
    mu, sd = shift + scale * mean_s, scale * np.sqrt(var_s)
    lo, hi = norm.ppf(0.1, mu, sd), norm.ppf(0.9, mu, sd)
    coverage = 100 * np.mean((y >= lo) & (y <= hi))
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((mu - y) ** 2)), rel=1e-6)
    assert got["mae"] == pytest.approx(np.mean(np.abs(mu - y)), rel=1e-6)
    assert got["nll"] == pytest.approx(-np.mean(norm.logpdf(y, mu, sd)), rel=1e-6)
    assert got["coverage"] == pytest.approx(coverage)
    assert got["width"] == pytest.approx(np.mean(hi - lo), rel=1e-6)
    assert got["coverage_error"] == pytest.approx(abs(coverage - 80.0))


def test_explicit_interval_and_point_only_predictions() -> None:
    y = torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    pred = {"mean": torch.tensor([0.0, 0.0, 0.0, 0.0]), "lower": torch.full((4,), -1.0),
            "upper": torch.full((4,), 1.0)}
    got = regression_metrics(pred, y, 2.0, 1.5, 0.9, 0.5)  # interval [0.5, 3.5] in original units
    assert got["coverage"] == pytest.approx(75.0) and got["width"] == pytest.approx(3.0)
    assert got["coverage_error"] == pytest.approx(25.0) and "nll" not in got
    point = regression_metrics({"mean": torch.zeros(4)}, y, 2.0, 1.5, 0.9, None)
    assert set(point) == {"rmse", "mae"}


def test_final_metrics_pick_the_best_validation_epoch() -> None:
    curves = {"train_loss": [3.0, 2.0, 1.0], "val_rmse": [5.0, 2.0, 4.0],
              "test_rmse": [6.0, 3.0, 4.5], "test_nll": [9.0, 8.0, 7.0]}
    m = final_metrics(curves)
    assert m["test_rmse"] == 4.5 and m["test_rmse@best_val"] == 3.0
    assert m["test_nll@best_val"] == 8.0 and m["best_epoch"] == 2.0
    assert m["best_val_rmse"] == 2.0 and m["val_rmse"] == 4.0


# ---------------------------------------------------------------------------------------------
# Task specs.
# ---------------------------------------------------------------------------------------------

UCI_TASKS = [f"uci-{n}" for n in UCI_FOLDERS]


def test_every_regression_task_resolves_at_every_budget(tmp_path: Path) -> None:
    for name, folder in UCI_FOLDERS.items():  # tiny stand-ins: the check looks for the files
        write_uci(tmp_path, folder=folder, seed=len(name))
    for task in [*UCI_TASKS, "diabetes", "california"]:
        assert task in task_names()
        for budget in BUDGETS:
            overrides = [f"data.dir={tmp_path}"] if task.startswith("uci-") else []
            spec = resolve_task(task, budget, overrides)
            assert spec["family"] == "regression"
            check_spec(spec)
            assert spec["model"]["name"] == "mlp" and spec["model"]["depth"] == 1


@pytest.mark.parametrize("task", UCI_TASKS)
def test_uci_tasks_follow_the_protocol(task: str) -> None:
    spec = resolve_task(task, "paper")
    protein = task == "uci-protein"
    assert spec["data"] == {"source": "uci", "name": task.removeprefix("uci-")}
    assert spec["seeds"] == list(range(5 if protein else 20))
    assert spec["model"]["hidden"] == (100 if protein else 50)
    # Gal & Ghahramani's code: n_epochs.txt (40; protein 20) x 10, batch 128.
    assert spec["train"]["epochs"] == (200 if protein else 400)
    assert spec["train"]["batch_size"] == 128
    assert resolve_task(task, "quick")["train"]["epochs"] == 40


def test_bad_spec_values_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"split\.val_fraction"):
        check_spec(resolve_task("diabetes", "smoke", ["split.val_fraction=1.5"]))
    with pytest.raises(UserError, match=r"unknown key.*eval\.bins"):
        check_spec(resolve_task("diabetes", "smoke", ["eval.bins=3"]))


# ---------------------------------------------------------------------------------------------
# End to end.
# ---------------------------------------------------------------------------------------------


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]


def test_diabetes_smoke_runs_every_regression_loss(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--loss", "all", "--task", "diabetes", "--budget",
                                 "smoke", "--seeds", "0", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    recs = {r["config"]["loss"]: r for r in records(out)}
    assert set(recs) == {"mse", "l1", "huber", "logcosh", "gauss-nll", "pinball", "hl-gauss",
                         "cs-div"}
    for name, rec in recs.items():
        assert rec["status"] == "ok", rec.get("reason")
        m = rec["metrics"]
        assert math.isfinite(m["test_rmse@best_val"]) and m["test_rmse"] > 0
        assert ("test_nll@best_val" in m) == (name in ("gauss-nll", "hl-gauss"))
        has_interval = name in ("gauss-nll", "hl-gauss", "pinball")
        assert ("test_coverage@best_val" in m) == has_interval
        if has_interval:
            assert 0.0 <= m["test_coverage"] <= 100.0 and m["test_width"] > 0
            assert rec["info"]["interval_level"] == pytest.approx(0.9)
        assert len(rec["curves"]["val_rmse"]) == 3 and rec["info"]["split"] == 0
    table = pd.read_parquet(out / "runs.parquet")  # a folder of segments, read as one table
    assert {"test_rmse@best_val", "test_coverage@best_val"} <= set(table["metric"])


def test_uci_task_runs_from_a_local_folder_with_seed_as_split(tmp_path: Path) -> None:
    write_uci(tmp_path)
    out = tmp_path / "out"
    args = ["run", "--loss", "gauss-nll:beta=0.5", "--loss", "pinball:quantiles=0.1/0.5/0.9",
            "--task", "uci-yacht", "--budget", "smoke", "--seeds", "0,1", "--device", "cpu",
            "--set", f"data.dir={tmp_path}", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    recs = records(out)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert {r["info"]["split"] for r in recs} == {0, 1}
    levels = {r["config"]["loss"]: r["info"]["interval_level"] for r in recs}
    assert levels["pinball"] == pytest.approx(0.8) and levels["gauss-nll"] == pytest.approx(0.9)


def test_offline_without_data_is_a_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--loss", "mse", "--task", "uci-boston", "--budget",
                                 "smoke", "--device", "cpu", "--set", f"data.dir={tmp_path}",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any("UCI 'boston' not found" in line and "data.dir" in line for line in lines)
    assert "Traceback" not in result.output


def test_classification_losses_are_refused_on_regression_tasks() -> None:
    result = runner.invoke(app, ["run", "--loss", "ce", "--task", "diabetes", "--budget",
                                 "smoke", "--out", "/nonexistent"])
    assert result.exit_code == 2 and "consumes logits" in result.output
