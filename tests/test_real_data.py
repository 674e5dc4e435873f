"""The real data sets in ../shared/data: the loaders' output on the real files, the recorded
Statlog splits, and the smoke budgets of the real-data tasks end to end. Every test skips with a
reason when the files are absent (a checkout without ../shared/data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.locate import SHARED_DATA
from lossbench.data.sources import SOURCES

runner = CliRunner()


def needs(folder: str) -> Path:
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"../shared/data/{folder} is absent")
    return path


def test_fashion_mnist_is_the_published_set() -> None:
    needs("fashion-mnist")
    raw = SOURCES.get("fashion-mnist").build({})
    assert raw.x_train.shape == (60000, 1, 28, 28) and raw.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(raw.y_train).tolist() == [6000] * 10
    assert np.bincount(raw.y_test).tolist() == [1000] * 10


def test_letter_rebuilt_from_the_uci_rows_equals_the_shared_reconstruction(
        tmp_path: Path) -> None:
    folder = needs("letter")
    shared = SOURCES.get("letter").build({})
    assert shared.meta["train_from"] == "letter_ldr_train_reconstructed.npz"
    for name in ("letter_ldr_test.npz", "letter_uci_order.csv"):  # what `data get` can fetch
        shutil.copy(folder / name, tmp_path / name)
    rebuilt = SOURCES.get("letter").build({"dir": str(tmp_path)})
    assert rebuilt.meta["train_from"] == "letter_uci_order.csv minus letter_ldr_test.npz"
    np.testing.assert_array_equal(rebuilt.y_train, shared.y_train)
    np.testing.assert_array_equal(rebuilt.x_train, shared.x_train)
    assert shared.x_train.shape == (18000, 16) and len(np.unique(shared.y_test)) == 26


def test_vowel_is_48_and_42_rows_per_class() -> None:
    needs("vowel")
    raw = SOURCES.get("vowel").build({})
    assert np.bincount(raw.y_train).tolist() == [48] * 11
    assert np.bincount(raw.y_test).tolist() == [42] * 11


STATLOG_SPLITS = {
    "satimage": ("1b06525ce4fda824", 4435, 2000),
    "shuttle": ("15c1d774ba1e977c", 43500, 14500),
    "dna": ("fc2dbbcd470462b1", 2000, 1186),
    "vehicle": ("0c7f3d0b96c12714", 677, 169),
    "glass": ("629d8d25f2cd861a", 171, 43),
}
"""The recorded splits (split_seed 0): sha256[:16] of the test rows, train and test sizes."""


@pytest.mark.parametrize("name", list(STATLOG_SPLITS))
def test_statlog_splits_are_the_recorded_ones(name: str) -> None:
    needs("statlog")
    raw = SOURCES.get(f"statlog-{name}").build({})
    assert (raw.meta["split_hash"], len(raw.y_train), len(raw.y_test)) == STATLOG_SPLITS[name]


def run_smoke(tmp_path: Path, task: str, loss: str = "ce") -> dict:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--loss", loss, "--task", task, "--budget", "smoke",
                                 "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert record["status"] == "ok", record.get("reason")
    return record


def test_fashion_mnist_noisy_smoke(tmp_path: Path) -> None:
    needs("fashion-mnist")
    record = run_smoke(tmp_path, "fashion-mnist-noisy")
    assert record["info"]["num_train"] == 512
    assert record["info"]["noise"]["kind"] == "symmetric"
    assert 0.3 < record["info"]["noise"]["realised_rate"] < 0.5


def test_fashion_mnist_ssl_smoke_scores_the_real_test_images(tmp_path: Path) -> None:
    needs("fashion-mnist")
    record = run_smoke(tmp_path, "fashion-mnist-ssl", "isogclr")
    info, metrics = record["info"], record["metrics"]
    assert (info["num_train"], info["num_val"], info["num_test"]) == (512, 128, 256)
    assert info["labels_used_in_training"] is False and info["train_classes"] == 10
    assert metrics["test_knn_acc"] > 30 and metrics["test_probe_acc"] > 30  # chance: 10


def test_letter_noisy_smoke_records_both_noise_rates(tmp_path: Path) -> None:
    needs("letter")
    record = run_smoke(tmp_path, "letter-noisy", "ldr")
    noise = record["info"]["noise"]
    assert noise["kind"] == "uniform" and noise["requested_rate"] == 0.6
    assert abs(noise["realised_rate"] - 0.6 * 25 / 26) < 0.02  # over all 18,000 labels
    assert record["info"]["num_train"] == 256


def test_uci_boston_smoke_reads_the_shared_splits(tmp_path: Path) -> None:
    needs("UCI_Datasets")
    record = run_smoke(tmp_path, "uci-boston", "mse")
    assert record["info"]["split"] == 0 and np.isfinite(record["metrics"]["test_rmse"])


def test_vowel_and_statlog_tasks_run_their_smoke_budget(tmp_path: Path) -> None:
    needs("vowel")
    needs("statlog")
    tasks = ["vowel-noisy", *(f"{name}-noisy" for name in STATLOG_SPLITS)]
    out = tmp_path / "out"
    args = ["run", "--loss", "ce", "--budget", "smoke", "--device", "cpu", "--out", str(out)]
    result = runner.invoke(app, args + [a for t in tasks for a in ("--task", t)])
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert sorted(r["config"]["task"] for r in records) == sorted(tasks)
    assert all(r["status"] == "ok" for r in records)
    assert all(r["info"]["noise"]["kind"] == "uniform" for r in records)
