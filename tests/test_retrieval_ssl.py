"""The self-supervised retrieval mode (families/retrieval_ssl.py) on a tiny Fashion-MNIST-like
fixture: labels never reach the loss, losses are checked before the grid, runs are deterministic,
packed runs equal single runs; kNN / linear probe (metrics_frozen.py) and the SSL views
(data/augment.py) against direct formulas."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_native_sources import write_mnist_like
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.augment import colour_jitter, resized_crop_flip
from lossbench.engine.grid import expand
from lossbench.engine.store import Store
from lossbench.errors import UserError
from lossbench.losses.contrastive import SogCLR
from lossbench.metrics_frozen import knn_accuracy, linear_probe

runner = CliRunner()


def fixture(tmp_path: Path) -> list[str]:
    """A 10-class MNIST-like folder (240 train, 80 test images) and the smoke grid's options."""
    write_mnist_like(tmp_path / "fm", n_train=240, n_test=80)
    return ["--task", "fashion-mnist-ssl", "--budget", "smoke", "--device", "cpu",
            "--set", f"data.dir={tmp_path / 'fm'}", "--set", "split.val_fraction=0.2",
            "--set", "train.batch_size=32", "--set", "eval.probe_iters=5"]


def run(args: list[str], out: Path) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["run", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return sorted(Store(out).records(), key=lambda r: (r["config"]["loss"], r["config"]["seed"]))


def test_three_losses_train_without_labels_and_record_their_state(tmp_path: Path) -> None:
    records = run(["--loss", "infonce", "--loss", "sogclr", "--loss", "isogclr",
                   *fixture(tmp_path), "--set", "train.epochs=2"], tmp_path / "out")
    assert [r["config"]["loss"] for r in records] == ["infonce", "isogclr", "sogclr"]
    for rec in records:
        assert rec["status"] == "ok", rec.get("reason")
        m, info = rec["metrics"], rec["info"]
        assert all(math.isfinite(v) for v in m.values())
        assert 0 <= m["test_knn_acc"] <= 100 and 0 <= m["test_probe_acc"] <= 100
        assert {"test_recall@1", "test_map@r", "test_auc", "val_knn_acc"} <= set(m)
        assert info["labels_used_in_training"] is False
        assert info["num_train"] + info["num_val"] == 240 and info["num_test"] == 80
        assert len(rec["curves"]["train_loss"]) == 2
    state = {r["config"]["loss"]: r["info"]["example_state_by_class"] for r in records}
    assert state["infonce"] == {}
    assert set(state["sogclr"]) == {"class", "count", "u"}
    iso = state["isogclr"]
    assert sum(iso["count"]) == records[1]["info"]["num_train"] and len(iso["class"]) == 10
    assert all(0.05 <= v <= 1.0 for v in iso["tau"]["mean"])
    assert iso["tau"]["mean"] != [iso["tau"]["mean"][0]] * 10  # tau_i moved by the second epoch


def test_the_loss_sees_image_ids_twice_never_labels(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    forward = SogCLR.forward

    def spy(self: SogCLR, output: torch.Tensor, target: torch.Tensor, *,
            index: torch.Tensor | None = None) -> torch.Tensor:
        seen.append((target.clone(), None if index is None else index.clone()))
        return forward(self, output, target, index=index)

    monkeypatch.setattr(SogCLR, "forward", spy)
    (rec,) = run(["--loss", "sogclr", *fixture(tmp_path)], tmp_path / "out")
    n = rec["info"]["num_train"]
    assert len(seen) == math.ceil(n / 32)
    covered = []
    for target, index in seen:
        assert index is not None and torch.equal(target, index)
        b = len(target) // 2
        assert torch.equal(target[:b], target[b:]) and len(target[:b].unique()) == b
        covered.append(target[:b])
    assert sorted(torch.cat(covered).tolist()) == list(range(n))  # ids, one epoch's cover


def test_runs_are_deterministic_and_packed_runs_equal_single_runs(tmp_path: Path) -> None:
    grid = ["--loss", "sogclr", "--loss", "isogclr:eta=0.5", "--seeds", "0,1",
            *fixture(tmp_path), "--set", "train.epochs=2"]
    single = run(grid, tmp_path / "single")
    again = run(grid, tmp_path / "again")
    packed = run([*grid, "--pack", "4"], tmp_path / "packed")
    assert [r["metrics"] for r in single] == [r["metrics"] for r in again]
    assert [r["info"] for r in single] == [r["info"] for r in again]
    assert {r["info"].get("packed") for r in packed} == {4}
    for s, p in zip(single, packed, strict=True):
        assert s["run_key"] == p["run_key"]
        assert p["curves"]["train_loss"] == pytest.approx(s["curves"]["train_loss"], rel=1e-4)
        s_tau = s["info"]["example_state_by_class"].get("tau", {}).get("mean", [])
        p_tau = p["info"]["example_state_by_class"].get("tau", {}).get("mean", [])
        assert p_tau == pytest.approx(s_tau, rel=1e-4, abs=1e-6)
        assert p["metrics"]["test_knn_acc"] == pytest.approx(s["metrics"]["test_knn_acc"],
                                                             abs=100 / 80 + 1e-9)


@pytest.fixture(scope="module")
def fm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Fashion-MNIST-format files, so planning (which checks the data is there) never needs the
    real set: CI runs without ../shared/data."""
    folder = tmp_path_factory.mktemp("fm")
    write_mnist_like(folder, n_train=60, n_test=20)
    return f"data.dir={folder}"


@pytest.mark.parametrize("loss,override,match", [
    ("ms", None, r"loss 'ms' does not train in retrieval.mode = \"self-supervised\".*infonce"),
    ("sogclr", "ssl.crop_scale=0", "ssl.crop_scale must be in"),
    ("sogclr", "ssl.head_dimm=3", "unknown key.*ssl.head_dimm"),
    ("sogclr", "retrieval.mode=unsupervised", "retrieval.mode"),
    ("sogclr", "eval.knn_k=0", "eval.knn_k must be >= 1"),
])
def test_spec_and_loss_mistakes_are_user_errors(loss: str, override: str | None, match: str,
                                                fm_dir: str) -> None:
    with pytest.raises(UserError, match=match):
        expand([loss], ["fashion-mnist-ssl"], [0], "smoke",
               [fm_dir, *([override] if override else [])])


def test_imbalance_is_refused_in_supervised_mode(fm_dir: str) -> None:
    with pytest.raises(UserError, match=r"\[imbalance\] is supported in retrieval.mode"):
        expand(["ms"], ["fashion-mnist-ssl-lt"], [0], "smoke",
               [fm_dir, "retrieval.mode=supervised", "train.batch_size=64"])


@pytest.mark.parametrize("task", ["fashion-mnist-ssl", "fashion-mnist-ssl-lt", "cifar10-ssl",
                                  "cifar100-ssl", "cifar10-ssl-lt", "cifar100-ssl-lt"])
@pytest.mark.parametrize("budget", ["smoke", "quick", "paper"])
def test_ssl_tasks_resolve_at_every_budget(task: str, budget: str, fm_dir: str) -> None:
    overrides = [fm_dir] if task.startswith("fashion") else []
    configs = expand(["infonce", "sogclr", "isogclr"], [task], [0], budget, overrides)
    assert len(configs) == 3


def test_long_tailed_fixture_records_tau_by_class(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "fm", n_train=600, n_test=80)
    records = run(["--loss", "isogclr", "--task", "fashion-mnist-ssl-lt", "--budget", "smoke",
                   "--device", "cpu", "--set", f"data.dir={tmp_path / 'fm'}",
                   "--set", "train.batch_size=16", "--set", "eval.probe_iters=5",
                   "--set", "imbalance.ratio=10"], tmp_path / "out")
    (rec,) = records
    assert rec["status"] == "ok", rec.get("reason")
    counts = rec["info"]["example_state_by_class"]["count"]
    assert counts[0] > counts[-1] and counts == sorted(counts, reverse=True)
    assert rec["info"]["imbalance"]["profile"] == "exp"


# --------------------------------------------------------------------------------------------
# kNN and the linear probe.
# --------------------------------------------------------------------------------------------


def test_knn_matches_a_brute_force_vote() -> None:
    g = torch.Generator().manual_seed(0)
    ref, query = torch.randn(50, 6, generator=g), torch.randn(30, 6, generator=g)
    ref_y = torch.randint(0, 4, (50,), generator=g)
    query_y = torch.randint(0, 4, (30,), generator=g)
    k, t = 7, 0.1
    hits = 0
    for q, y in zip(query, query_y, strict=True):
        s = torch.nn.functional.cosine_similarity(ref, q[None], dim=1).double()
        top = s.argsort(descending=True)[:k]
        votes = np.zeros(4)
        for j in top.tolist():
            votes[int(ref_y[j])] += math.exp(float(s[j]) / t)
        hits += int(votes.argmax() == int(y))
    expected = 100.0 * hits / 30
    for block in (7, 1024):
        assert knn_accuracy(ref, ref_y, query, query_y, k=k, temperature=t,
                            block=block) == pytest.approx(expected)


def test_linear_probe_separates_separable_classes_and_never_reads_test_labels() -> None:
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(3, 8, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 3
        return centres[y] + 0.3 * torch.randn(n, 8, generator=g), y

    (xt, yt), (xv, yv), (xe, ye) = draw(60), draw(30), draw(30)
    result = linear_probe(xt, yt, xv, yv, xe, ye, l2=(1e-3, 1e-1), iters=50)
    assert result.test_acc == 100.0 and result.val_acc == 100.0
    shuffled = linear_probe(xt, yt, xv, yv, xe, ye[torch.randperm(30, generator=g)],
                            l2=(1e-3, 1e-1), iters=50)
    assert (shuffled.l2, shuffled.val_acc) == (result.l2, result.val_acc)


# --------------------------------------------------------------------------------------------
# Views.
# --------------------------------------------------------------------------------------------


def test_full_crop_is_the_image_or_its_mirror_and_draws_follow_the_generator() -> None:
    x = torch.rand(6, 1, 12, 12) * 255
    out = resized_crop_flip(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0),
                            ratio=(1.0, 1.0))
    for a, b in zip(out, x, strict=True):
        assert torch.allclose(a, b, atol=1e-3) or torch.allclose(a, b.flip(-1), atol=1e-3)
    one = resized_crop_flip(x, torch.Generator().manual_seed(3))
    two = resized_crop_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(one, two) and not torch.equal(one, x)


def test_colour_jitter_stays_in_range_and_greys_rgb() -> None:
    x = torch.rand(8, 3, 5, 5) * 255
    out = colour_jitter(x, torch.Generator().manual_seed(0), strength=0.4, p=1.0, grey_p=1.0)
    assert out.min() >= 0 and out.max() <= 255
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    same = colour_jitter(x, torch.Generator().manual_seed(0), strength=0.4, p=0.0, grey_p=0.0)
    assert torch.allclose(same, x, atol=1e-3)  # p = 0: unchanged (up to rounding)


def test_state_losses_also_train_with_labels_in_supervised_mode(tmp_path: Path) -> None:
    """In P x m batches the rows of a class are positives of each other (the labelled
    generalisation); the per-example state is keyed by the trainer's example ids as well."""
    records = run(["--loss", "sogclr", "--loss", "isogclr", "--task", "digits-retrieval",
                   "--budget", "smoke", "--seeds", "0", "--device", "cpu"], tmp_path / "out")
    for rec in records:
        assert rec["status"] == "ok", rec.get("reason")
        assert all(math.isfinite(v) for v in rec["metrics"].values())


def test_held_out_classes_are_the_retrieval_set(tmp_path: Path) -> None:
    """With split.train_classes, training (and kNN / probe) use those classes only; Recall@K and
    MAP@R rank the test images of the other classes, never seen in training."""
    (rec,) = run(["--loss", "infonce", *fixture(tmp_path),
                  "--set", "split.train_classes=[0,1,2,3,4,5,6]"], tmp_path / "out")
    info = rec["info"]
    assert rec["status"] == "ok", rec.get("reason")
    assert info["retrieval_set"] == "held-out classes" and info["train_classes"] == 7
    assert info["num_retrieval"] == 24 and info["num_test"] == 56  # 80 test images, 8 per class
    assert info["num_train"] + info["num_val"] == 168
    assert all(math.isfinite(v) for v in rec["metrics"].values())
