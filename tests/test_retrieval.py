"""Retrieval family: kNN metrics vs brute force, the P x K sampler, CUB/Cars/SOP loaders on tiny
fixtures in their native layouts, the split rules, the logits adapter, and end-to-end runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data import locate
from lossbench.data.samplers import pk_batches, pk_sampler
from lossbench.data.sources import SOURCES, RawSplits
from lossbench.engine.grid import expand
from lossbench.engine.store import Store
from lossbench.errors import UserError
from lossbench.families.retrieval import (
    CosineHeadLoss,
    SplitConfig,
    class_split,
    prepare_data,
    validation_split,
)
from lossbench.losses import LOSSES
from lossbench.metrics_retrieval import retrieval_metrics
from lossbench.spec import resolve_task

runner = CliRunner()

# ---------------------------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------------------------


def brute_force(emb: np.ndarray, y: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """One query at a time: sort every other item by cosine, score the ranked relevance list."""
    from sklearn.metrics import roc_auc_score

    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    per: dict[str, list[float]] = {}
    pair_scores, pair_same = [], []
    for i in range(len(y)):
        others = [j for j in range(len(y)) if j != i]
        scores = [float(z[i] @ z[j]) for j in others]
        pair_scores += scores
        pair_same += [bool(y[j] == y[i]) for j in others]
        ranked = [others[j] for j in np.argsort(scores, kind="stable")[::-1]]
        rel = [bool(y[j] == y[i]) for j in ranked]
        r = sum(rel)
        if r == 0:
            continue
        for k in ks:
            per.setdefault(f"recall@{k}", []).append(float(any(rel[:k])))
        per.setdefault("precision@1", []).append(float(rel[0]))
        per.setdefault("r_precision", []).append(sum(rel[:r]) / r)
        hits, ap = 0, 0.0
        for rank, hit in enumerate(rel[:r], start=1):
            if hit:
                hits += 1
                ap += hits / rank
        per.setdefault("map@r", []).append(ap / r)
    out = {k: 100 * float(np.mean(v)) for k, v in per.items()}
    out["auc"] = 100 * float(roc_auc_score(pair_same, pair_scores))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_brute_force_and_do_not_depend_on_chunking(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.repeat(np.arange(6), rng.integers(2, 9, 6)), [6]])  # 6: a singleton
    centres = rng.normal(size=(7, 6))
    emb = centres[y] + 1.2 * rng.normal(size=(len(y), 6))
    ks = (1, 2, 4, 8)
    want = brute_force(emb, y, ks)
    for chunk in (7, 50, 10**6):
        got = retrieval_metrics(torch.tensor(emb), torch.tensor(y), ks, chunk_elements=chunk)
        for name, value in want.items():
            assert got[name] == pytest.approx(value, abs=1e-9), (name, chunk)


def test_metrics_of_perfect_and_random_embeddings() -> None:
    y = torch.arange(5).repeat_interleave(4)
    perfect = retrieval_metrics(torch.eye(5)[y] + 0.01 * torch.randn(20, 5), y)
    assert all(v == pytest.approx(100.0) for v in perfect.values())
    g = torch.Generator().manual_seed(0)
    y = torch.arange(50).repeat_interleave(40)
    noise = retrieval_metrics(torch.randn(2000, 32, generator=g), y)
    assert abs(noise["auc"] - 50) < 2 and noise["map@r"] < 5 and noise["recall@1"] < 10


def test_metrics_need_a_class_with_two_items() -> None:
    with pytest.raises(UserError, match="at least two items"):
        retrieval_metrics(torch.randn(3, 4), torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------------------------
# P x K sampler.
# ---------------------------------------------------------------------------------------------


def test_pk_batches_have_p_classes_of_m_examples_and_cover_the_data() -> None:
    labels = torch.arange(10).repeat_interleave(12)[torch.randperm(120)]
    batches = list(pk_batches(labels, 20, torch.Generator().manual_seed(0), m=4))
    assert len(batches) == 120 // 20
    for idx in batches:
        classes, counts = torch.unique(labels[idx], return_counts=True)
        assert len(classes) == 5 and torch.all(counts == 4) and len(set(idx.tolist())) == 20
    seen = torch.bincount(torch.cat([b for _ in range(20) for b in pk_batches(
        labels, 20, torch.Generator().manual_seed(_), m=4)]), minlength=120)
    assert seen.min() > 0.5 * seen.float().mean()
    again = list(pk_batches(labels, 20, torch.Generator().manual_seed(0), m=4))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_pk_batches_small_classes_and_few_classes() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    (idx,) = list(pk_batches(labels, 6, torch.Generator().manual_seed(0), m=3))
    assert len(idx) == 6  # P = 2 of the 3 classes
    for c in torch.unique(labels[idx]):
        assert int((labels[idx] == c).sum()) == 3
    (idx,) = list(pk_batches(labels, 40, torch.Generator().manual_seed(0), m=2))
    assert len(idx) == 6  # P capped at the number of classes
    with pytest.raises(ValueError, match=">= 2"):
        pk_sampler(1)


# ---------------------------------------------------------------------------------------------
# Native-layout fixtures.
# ---------------------------------------------------------------------------------------------


def _image(path: Path, seed: int, size: tuple[int, int] = (20, 14)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)


def make_cub(root: Path, classes: int = 8, per_class: int = 4) -> Path:
    folder = root / "CUB_200_2011"
    images, labels = [], []
    for i in range(classes * per_class):
        cls = i // per_class + 1
        rel = f"{cls:03d}.Bird_{cls}/Bird_{cls}_{i}.jpg"
        _image(folder / "images" / rel, i)
        images.append(f"{i + 1} {rel}")
        labels.append(f"{i + 1} {cls}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return folder


def make_cars(root: Path, classes: int = 6, per_class: int = 3) -> Path:
    from scipy.io import savemat

    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("class", "O"), ("test", "O")]
    rows = []
    for i in range(classes * per_class):
        rel = f"car_ims/{i + 1:06d}.jpg"
        _image(root / rel, 100 + i, (16, 24))
        rows.append((rel, 1, i % classes + 1, i % 2))  # the test flag is ignored by the protocol
    savemat(str(root / "cars_annos.mat"), {"annotations": np.array([rows], dtype=dtype)})
    return root


def make_sop(root: Path) -> Path:
    folder = root / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path"
    lines = {"Ebay_train.txt": [header], "Ebay_test.txt": [header]}
    image_id = 0
    for cls, count, split in ((1, 2, "train"), (2, 3, "train"), (3, 2, "train"),
                              (4, 2, "test"), (5, 4, "test")):
        for k in range(count):
            image_id += 1
            rel = f"bicycle_final/{cls}_{k}.JPG"
            _image(folder / rel, 200 + image_id)
            lines[f"Ebay_{split}.txt"].append(f"{image_id} {cls} 1 {rel}")
    for name, rows in lines.items():
        (folder / name).write_text("\n".join(rows) + "\n")
    return folder


def test_cub_fixture_loads_with_the_standard_class_split(tmp_path: Path) -> None:
    make_cub(tmp_path)
    for where in (tmp_path, tmp_path / "CUB_200_2011"):
        raw = SOURCES.get("cub200").build({"dir": str(where), "image_size": 12})
        assert raw.x_train.shape == (16, 3, 12, 12) and raw.x_train.dtype == np.uint8
        assert raw.x_test.shape == (16, 3, 12, 12) and raw.kind == "image"
        assert raw.num_classes == 4 and sorted(set(raw.y_train)) == [0, 1, 2, 3]
        assert sorted(set(raw.y_test)) == [0, 1, 2, 3] and raw.meta["class_disjoint"]
    # The first training image is image id 1, bird class 1, resized and centre-cropped.
    from PIL import Image, ImageOps

    with Image.open(next((tmp_path / "CUB_200_2011/images/001.Bird_1").glob("*_0.jpg"))) as im:
        want = np.asarray(ImageOps.fit(im.convert("RGB"), (12, 12),
                                       Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(raw.x_train[0], want)


def test_cars_fixture_splits_classes_by_id(tmp_path: Path) -> None:
    make_cars(tmp_path)
    raw = SOURCES.get("cars196").build({"dir": str(tmp_path), "image_size": 10})
    assert raw.num_classes == 3 and len(raw.x_train) == 9 and len(raw.x_test) == 9
    assert raw.x_train.shape[1:] == (3, 10, 10)


def test_sop_fixture_uses_the_ebay_files(tmp_path: Path) -> None:
    make_sop(tmp_path)
    raw = SOURCES.get("sop").build({"dir": str(tmp_path), "image_size": 8})
    assert raw.num_classes == 3 and len(raw.x_train) == 7 and len(raw.x_test) == 6
    assert sorted(np.bincount(raw.y_test).tolist()) == [2, 4]


def test_missing_data_is_one_line_user_error(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(locate, "SHARED_DATA", tmp_path / "nothing")
    with pytest.raises(UserError, match=r"CUB-200-2011 not found: pass --set data.dir=") as err:
        SOURCES.get("cub200").build({})
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="native layout"):
        SOURCES.get("sop").build({"dir": str(tmp_path)})
    folder = make_cub(tmp_path / "c", classes=2, per_class=2)
    next((folder / "images").rglob("*.jpg")).unlink()
    with pytest.raises(UserError, match="missing"):
        SOURCES.get("cub200").build({"dir": str(folder)})


# ---------------------------------------------------------------------------------------------
# Splits and the adapter.
# ---------------------------------------------------------------------------------------------


def test_digits_split_keeps_test_classes_out_of_training_and_validation() -> None:
    spec = resolve_task("digits-retrieval", "smoke")
    split = SplitConfig(train_classes=(0, 1, 2, 3, 4), val_by="example", val_fraction=0.2)
    data = prepare_data(spec, split, torch.device("cpu"))
    assert set(data.y_train.tolist()) == {0, 1, 2, 3, 4}
    assert set(data.y_val.tolist()) <= {0, 1, 2, 3, 4}
    assert set(data.y_test.tolist()) == {5, 6, 7, 8, 9}
    assert data.info["num_train"] + data.info["num_val"] + data.info["num_test"] == 1797


def test_class_validation_split_holds_out_whole_training_classes() -> None:
    y = np.repeat(np.arange(8), 5)
    train, val = validation_split(y, SplitConfig(val_by="class", val_fraction=0.25))
    assert len(set(y[val])) == 2 and not set(y[val]) & set(y[train])
    with pytest.raises(UserError, match="too few"):
        validation_split(np.repeat(np.arange(2), 5), SplitConfig(val_by="class"))


def test_class_split_rules() -> None:
    raw = RawSplits(np.zeros((4, 2)), np.array([0, 1, 0, 1]), np.zeros((2, 2)), np.array([0, 1]),
                    2, "tabular", {"class_disjoint": True})
    with pytest.raises(UserError, match="has its own class split"):
        class_split(raw, SplitConfig(train_classes=(0,)), "x")
    raw.meta = {}
    with pytest.raises(UserError, match=r"set split\.train_classes"):
        class_split(raw, SplitConfig(), "x")
    with pytest.raises(UserError, match=r"lists \[7\]"):
        class_split(raw, SplitConfig(train_classes=(0, 7)), "x")


def test_cosine_head_with_ce_is_norm_softmax() -> None:
    e = torch.randn(10, 6, dtype=torch.float64)
    y = torch.arange(5).repeat(2)
    ce = LOSSES.get("ce").build({})
    head = CosineHeadLoss(ce, 6, 5, scale=16.0).double()
    ns = LOSSES.get("norm-softmax").build({"temperature": 1 / 16}, num_classes=5,
                                          embedding_dim=6).double()
    ns.weight.data.copy_(head.weight.data)
    torch.testing.assert_close(head(e, y), ns(e, y))
    assert head.weight in set(head.parameters())


@pytest.mark.parametrize("override,match", [
    ("train.batch_size=30", "multiple of retrieval.samples_per_class"),
    ("retrieval.embeding_dim=8", "unknown key.*retrieval.embeding_dim"),
    ("split.val_by=random", "split.val_by"),
    ("eval.recall_at=[0]", "eval.recall_at"),
])
def test_spec_mistakes_are_user_errors(override: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        expand(["ms"], ["digits-retrieval"], [0], "smoke", [override])


def test_logits_and_embedding_losses_are_accepted_others_are_not() -> None:
    configs = expand(["ms", "ldr", "arcface"], ["digits-retrieval"], [0], "smoke")
    assert [c.loss for c in configs] == ["ms", "ldr", "arcface"]
    with pytest.raises(UserError, match="consumes embeddings"):
        expand(["ms"], ["digits"], [0], "smoke")


# ---------------------------------------------------------------------------------------------
# End to end.
# ---------------------------------------------------------------------------------------------


def test_cli_runs_embedding_and_logits_losses_on_digits(tmp_path: Path) -> None:
    out = tmp_path / "res"
    result = runner.invoke(app, ["run", "--loss", "ms", "--loss", "ldr", "--task",
                                 "digits-retrieval", "--budget", "smoke", "--seeds", "0",
                                 "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "results (retrieval)" in result.output
    records = Store(out).records()
    assert {r["status"] for r in records} == {"ok"} and len(records) == 2
    for rec in records:
        m = rec["metrics"]
        assert 0 <= m["test_map@r"] <= m["test_r_precision"] + 1e-9 <= 100
        assert m["test_recall@1"] <= m["test_recall@2"] <= m["test_recall@8"]
        assert m["test_recall@1"] == m["test_precision@1"]
        assert 1 <= m["best_epoch"] <= 2 and len(rec["curves"]["val_map@r"]) == 2
        best = int(m["best_epoch"]) - 1
        assert m["test_map@r@best_val"] == rec["curves"]["test_map@r"][best]
        assert rec["info"]["test_classes"] == 5 and rec["info"]["train_classes"] == 5
    runs = pd.read_parquet(out / "runs.parquet")
    assert {"test_recall@1", "test_map@r", "test_auc"} <= set(runs["metric"])


def test_cub_fixture_trains_end_to_end_with_class_validation(tmp_path: Path) -> None:
    make_cub(tmp_path)
    out = tmp_path / "res"
    result = runner.invoke(app, ["run", "--loss", "proxy-anchor", "--task", "cub200",
                                 "--budget", "smoke", "--seeds", "0", "--device", "cpu",
                                 "--out", str(out), "--set", f"data.dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    (rec,) = Store(out).records()
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["info"]
    assert info["train_classes"] == 3 and info["val_classes"] == 1 and info["test_classes"] == 4
    assert all(math.isfinite(v) for v in rec["metrics"].values())


def test_cli_missing_dataset_is_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(locate, "SHARED_DATA", tmp_path / "nothing")
    result = runner.invoke(app, ["run", "--loss", "ms", "--task", "sop", "--budget", "smoke",
                                 "--seeds", "0", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Stanford Online Products not found" in result.output
    assert "Traceback" not in result.output


def test_cub_fixture_packed_runs_equal_single_runs(tmp_path: Path) -> None:
    """Images stay uint8 on the device; each member's batches are cropped with its own
    generator and standardised by the view, as in its single run."""
    make_cub(tmp_path)
    grid = ["run", "--loss", "ms", "--loss", "ce", "--task", "cub200", "--budget", "smoke",
            "--seeds", "0,1", "--device", "cpu", "--set", f"data.dir={tmp_path}",
            "--set", "train.epochs=2", "--set", "train.lr=0.001"]
    single, packed = tmp_path / "single", tmp_path / "packed"
    assert runner.invoke(app, [*grid, "--out", str(single)]).exit_code == 0
    result = runner.invoke(app, [*grid, "--out", str(packed), "--pack", "4"])
    assert result.exit_code == 0, result.output
    expected = {r["run_key"]: r["curves"]["train_loss"] for r in Store(single).records()}
    records = Store(packed).records()
    assert {r.get("packed") for r in records} == {4} and len(records) == 4
    for rec in records:
        assert rec["curves"]["train_loss"] == pytest.approx(expected[rec["run_key"]], rel=1e-4)
