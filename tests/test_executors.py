"""Executors: a process pool and Ray give the same records as in-process runs; resume works
across executors because the driver alone writes the store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6)


def packed_vs_single(tmp_path: Path, grid: list[str], pack: int, curves: tuple[str, ...] = (),
                     rel: float = 1e-4, abs_: float = 1e-6) -> list[dict]:
    """Run ``grid`` one by one and with ``--pack``; every packed record's curves (all, or those
    named) must equal its single run's. Returns the packed records."""
    single, packed = tmp_path / "single", tmp_path / "packed"
    assert runner.invoke(app, [*grid, "--out", str(single)]).exit_code == 0
    result = runner.invoke(app, [*grid, "--out", str(packed), "--pack", str(pack)])
    assert result.exit_code == 0, result.output
    expected = {r["run_key"]: r["curves"] for r in Store(single).records()}
    records = Store(packed).records()
    assert {r["run_key"] for r in records} == set(expected)
    for rec in records:
        for name in curves or rec["curves"]:
            assert rec["curves"][name] == pytest.approx(expected[rec["run_key"]][name], rel=rel,
                                                        abs=abs_), name
    return records


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
                                 "--workers", "2", "--pack", "2"])
    assert result.exit_code == 0, result.output
    assert "2 already finished, 2 to run" in result.output
    assert_same(metrics_by_key(tmp_path), in_process)
    assert sorted(r.get("packed", 1) for r in Store(tmp_path).records()) == [1, 1, 2, 2]


def test_bad_executor_options(tmp_path: Path) -> None:
    result = runner.invoke(app, [*GRID, "--out", str(tmp_path), "--executor", "slurm"])
    assert result.exit_code == 2
    assert "unknown executor 'slurm'; accepted: local, ray" in result.output
    result = runner.invoke(app, [*GRID, "--out", str(tmp_path), "--workers", "0"])
    assert result.exit_code == 2 and "--workers must be an integer >= 1 or 'auto'" in result.output


def test_packed_runs_give_the_same_records(tmp_path: Path) -> None:
    grid = ["run", "--loss", "ce", "--loss", "aldr", "--loss", "gce:q=0.5", "--task",
            "digits-noisy", "--budget", "smoke", "--device", "cpu", "--seeds", "0,1"]
    records = packed_vs_single(tmp_path, grid, 6, abs_=1e-4)
    assert {r.get("packed") for r in records} == {6}
    assert_same(metrics_by_key(tmp_path / "packed"), metrics_by_key(tmp_path / "single"))


def test_packed_retrieval_runs_give_the_same_records(tmp_path: Path) -> None:
    """Embedding losses, a proxy loss (own parameters at 100x lr) and a logits loss through the
    cosine head, packed over P x m batches: the same records as one by one."""
    grid = ["run", "--loss", "ms", "--loss", "proxy-anchor", "--loss", "ce", "--task",
            "digits-retrieval", "--budget", "smoke", "--device", "cpu", "--seeds", "0,1"]
    records = packed_vs_single(tmp_path, grid, 6, ("train_loss", "test_map@r", "val_map@r"),
                               abs_=1e-5)
    assert {r.get("packed") for r in records} == {6}


@pytest.mark.parametrize("mode", ["episodic", "standard"])
def test_packed_fewshot_runs_give_the_same_records(tmp_path: Path, mode: str) -> None:
    """Prototype logits losses, an embedding loss and a few-shot loss in episodic mode; in
    standard mode the group mixes logits and embedding losses, so it must fall back."""
    losses = ["ce", "ldr", "ms", "proto-triplet"] if mode == "episodic" else ["ce", "ms"]
    grid = ["run", *[a for loss in losses for a in ("--loss", loss)], "--task",
            "digits-fewshot", "--budget", "smoke", "--device", "cpu", "--seeds", "0,1",
            "--set", f"fewshot.mode={mode}"]
    records = packed_vs_single(tmp_path, grid, 8, abs_=1e-4)
    assert {r.get("packed") for r in records} == ({8} if mode == "episodic" else {None})


def test_packed_regression_groups_by_split_and_head(tmp_path: Path) -> None:
    """Packs form per split (the seed) and head size: mse, huber and cs-div (one output) pack
    per split, gauss-nll (two) and pinball (three) run alone; the records equal one by one."""
    grid = ["run", "--loss", "mse", "--loss", "huber", "--loss", "cs-div", "--loss",
            "gauss-nll", "--loss", "pinball", "--task", "diabetes", "--budget", "smoke",
            "--device", "cpu", "--seeds", "0,1"]
    records = packed_vs_single(tmp_path, grid, 8)
    by_loss = {(r["config"]["loss"], r.get("packed")) for r in records}
    assert by_loss == {("mse", 3), ("huber", 3), ("cs-div", 3), ("gauss-nll", None),
                       ("pinball", None)}


def test_packed_image_runs_with_batchnorm_and_augmentation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cifar10-noisy smoke (small CNN with BatchNorm, on-device crop+flip) on a native-format
    fixture: packed records equal the one-by-one records. Compared on the continuous curves
    (training loss, test NLL): on 20 near-random test images, float-level differences reorder
    near-tied scores, which moves rank metrics (AUROC, adaptive ECE) by whole steps. vmap turns
    the members' convolutions into one grouped convolution, whose float summation order differs
    (~1e-6); at the task's lr, max-pool near-ties amplify that to ~1e-3 within an epoch, so the
    test trains at a small lr, where augmentation draws still change every loss value."""
    from lossbench.data import locate
    from tests.test_cifar_sources import write_cifar10

    monkeypatch.setattr(locate, "SHARED_DATA", tmp_path / "no-shared-data")
    folder = write_cifar10(tmp_path / "data")
    grid = ["run", "--loss", "ce", "--loss", "sce", "--task", "cifar10-noisy", "--budget",
            "smoke", "--device", "cpu", "--seeds", "0,1", "--set", f"data.dir={folder}",
            "--set", "train.batch_size=16", "--set", "train.epochs=2", "--set", "train.lr=0.001"]
    records = packed_vs_single(tmp_path, grid, 4, ("train_loss", "test_nll"), abs_=0.0)
    assert {r.get("packed") for r in records} == {4}


def test_groups_out_of_memory_are_halved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                         ) -> None:
    """A packed group that does not fit is split and retried; no run is lost or failed."""
    from lossbench.engine import executors

    real = executors.PACKED_RUNNERS["classification"]
    sizes: list[int] = []

    def small_device(ctxs):  # type: ignore[no-untyped-def]
        sizes.append(len(ctxs))
        if len(ctxs) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(ctxs)

    monkeypatch.setitem(executors.PACKED_RUNNERS, "classification", small_device)
    grid = ["run", "--loss", "ce", "--loss", "gce", "--task", "digits-noisy", "--budget", "smoke",
            "--device", "cpu", "--seeds", "0-2", "--pack", "6", "--out", str(tmp_path)]
    result = runner.invoke(app, grid)
    assert result.exit_code == 0, result.output
    assert sizes == [6, 3, 2, 3, 2]  # 6 -> 3 + 3; each 3 -> 1 (runs alone) + 2
    records = Store(tmp_path).records()
    assert len(records) == 6 and {r["status"] for r in records} == {"ok"}
    assert sorted(r.get("packed", 1) for r in records) == [1, 1, 2, 2, 2, 2]


def test_pack_auto_and_bad_values(tmp_path: Path) -> None:
    from lossbench.engine.executors import pack_size

    assert pack_size("auto", "cpu") == 1  # packing measured slower on CPUs
    assert pack_size("auto", "cuda:1") == 16  # read from the name: Ray workers may have the GPU
    assert pack_size("3", "cpu") == 3
    result = runner.invoke(app, [*GRID, "--out", str(tmp_path), "--pack", "auto"])
    assert result.exit_code == 0, result.output
    assert all("packed" not in r for r in Store(tmp_path).records())
    for bad in ("0", "many", "-2"):
        result = runner.invoke(app, [*GRID, "--out", str(tmp_path), "--pack", bad])
        assert result.exit_code == 2
        assert f"--pack must be an integer >= 1 or 'auto', got '{bad}'" in result.output


def test_unpackable_groups_fall_back_to_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lossbench.engine import executors, packed

    calls = []
    real = executors.run_one
    monkeypatch.setattr(executors, "run_one", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(packed, "packable", lambda model: False)  # as with dropout
    grid = ["run", "--loss", "ce", "--task", "digits-noisy", "--budget", "smoke", "--device",
            "cpu", "--seeds", "0,1", "--pack", "2", "--out", str(tmp_path)]
    result = runner.invoke(app, grid)
    assert result.exit_code == 0, result.output
    assert len(calls) == 2
    assert {r["status"] for r in Store(tmp_path).records()} == {"ok"}


def test_auto_packs_tiny_mlps_on_cpu_and_kfold_runs_per_fold() -> None:
    from lossbench.engine.executors import pack_groups, pack_size
    from lossbench.engine.grid import expand

    assert pack_size("auto", "cpu", {"name": "mlp", "hidden_rule": "min-in-out"}) == 32
    assert pack_size("auto", "cpu", {"name": "mlp", "hidden": 512}) == 1
    assert pack_size("auto", "cpu", {"name": "strided-cnn"}) == 1
    configs = expand(["ce", "gce", "ldr"], ["digits-noisy"], [0, 1], "smoke",
                     ["split.kfold=5", "model.hidden=32"])
    groups = pack_groups(configs, "auto", "cpu")
    assert [sorted({c.seed for c in g}) for g in groups] == [[0], [1]]  # one fold per group
    assert [len(g) for g in groups] == [3, 3]
    plain = expand(["ce", "gce", "ldr"], ["digits-noisy"], [0, 1], "smoke")
    assert [len(g) for g in pack_groups(plain, "auto", "cpu")] == [1] * 6  # 512 wide: alone
    assert [len(g) for g in pack_groups(plain, "4", "cpu")] == [4, 2]
