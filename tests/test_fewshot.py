"""Few-shot family: fixed evaluation episodes, the episode sampler, nearest-prototype accuracy and
its CI, the published class splits, Omniglot / mini-ImageNet / CIFAR-FS loaders on tiny fixtures
in their native formats, spec checks, and end-to-end CLI runs at the smoke budget."""

from __future__ import annotations

import csv
import math
import pickle
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data import fewshot_sources as fss
from lossbench.data import locate
from lossbench.data.episodes import (
    dirichlet_counts,
    draw_episodes,
    episode_accuracy,
    episode_batches,
    episode_sampler,
    mean_ci95,
)
from lossbench.data.noise import CIFAR100_COARSE_OF, CIFAR100_FINE_NAMES
from lossbench.data.sources import SOURCES, RawSplits
from lossbench.engine.grid import expand
from lossbench.engine.store import Store
from lossbench.errors import UserError
from lossbench.families.fewshot import check_loss, class_split
from lossbench.spec import resolve_task

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """Tiny models run fastest on one thread; two threads on a shared two-core machine can be
    20x slower (OpenMP oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# ---------------------------------------------------------------------------------------------
# Episodes.
# ---------------------------------------------------------------------------------------------


def test_eval_episodes_are_fixed_by_their_own_seed_and_setting() -> None:
    labels = np.repeat(np.arange(10, 20), 12)
    torch.manual_seed(123)
    np.random.seed(7)
    a = draw_episodes(labels, 5, 1, 4, 30, seed=0, split="test")
    torch.manual_seed(999)
    np.random.seed(1)
    b = draw_episodes(labels, 5, 1, 4, 30, seed=0, split="test")
    assert a.digest == b.digest and np.array_equal(a.query, b.query)
    assert draw_episodes(labels, 5, 1, 4, 30, seed=1, split="test").digest != a.digest
    assert draw_episodes(labels, 5, 1, 4, 30, seed=0, split="val").digest != a.digest
    assert a.support.shape == (30, 5, 1) and a.query.shape == (30, 20)
    assert a.query_alpha is None and np.array_equal(a.query_labels[0], np.repeat(range(5), 4))
    for e in range(30):
        classes = labels[a.support[e, :, 0]]
        assert len(set(classes)) == 5
        for w in range(5):
            rows = np.concatenate([a.support[e, w], a.query[e, a.query_labels[e] == w]])
            assert len(set(rows)) == 5 and set(labels[rows]) == {classes[w]}


def test_eval_episode_mistakes_are_user_errors() -> None:
    labels = np.repeat(np.arange(3), 6)
    with pytest.raises(UserError, match="5-way episodes need 5 test classes; there are 3"):
        draw_episodes(labels, 5, 1, 2, 4, 0, "test")
    with pytest.raises(UserError, match="smallest test class has 6"):
        draw_episodes(labels, 3, 5, 2, 4, 0, "test")


def old_draw(labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int, seed: int,
             split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The balanced draw and digest as they were before imbalanced episodes existed."""
    import hashlib

    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    rng = np.random.default_rng([seed, {"val": 1, "test": 2}[split], ways, shots, queries])
    rows = np.empty((episodes, ways, shots + queries), dtype=np.int64)
    for e in range(episodes):
        for w, c in enumerate(rng.choice(len(classes), ways, replace=False)):
            rows[e, w] = rng.choice(members[c], shots + queries, replace=False)
    support, query = rows[:, :, :shots], rows[:, :, shots:]
    h = hashlib.sha256(np.ascontiguousarray(support, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(query, dtype=np.int64).tobytes())
    return support, query, h.hexdigest()[:16]


def old_accuracy(emb: torch.Tensor, support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The nearest-prototype accuracy as it was computed before inference methods existed."""
    ways, queries = query.shape[1:]
    truth = torch.arange(ways).repeat_interleave(queries)
    prototypes = emb[torch.as_tensor(support)].mean(dim=2)
    q = emb[torch.as_tensor(query).flatten(1)]
    pred = torch.cdist(q, prototypes).argmin(dim=2)
    return ((pred == truth).float().mean(dim=1) * 100.0).numpy()


@pytest.mark.parametrize(("ways", "shots", "queries", "split"),
                         [(5, 1, 15, "test"), (3, 5, 4, "val"), (2, 3, 1, "test")])
def test_balanced_episodes_digests_and_accuracy_are_unchanged(ways: int, shots: int,
                                                              queries: int, split: str) -> None:
    """Balanced stays the default and draws, hashes and scores exactly as before: existing
    episodes, digests and numbers do not move."""
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(9), 25))
    emb = torch.as_tensor(rng.normal(size=(9, 6))[labels] + rng.normal(size=(225, 6)),
                          dtype=torch.float32)
    new = draw_episodes(labels, ways, shots, queries, 40, 3, split)
    support, query, digest = old_draw(labels, ways, shots, queries, 40, 3, split)
    assert np.array_equal(new.support, support)
    assert np.array_equal(new.query, query.reshape(40, -1)) and new.digest == digest
    assert np.array_equal(episode_accuracy(emb, new, chunk=7), old_accuracy(emb, support, query))


def convert_prob_to_samples(prob: np.ndarray, q_shot: int) -> np.ndarray:
    """Veilleux et al.'s rounding of Dirichlet proportions to counts, transcribed as published
    (oveilleux/Realistic_Transductive_Few_Shot, src/datasets/sampler.py), one task."""
    prob = prob * q_shot
    while sum(np.round(prob)) != q_shot:
        idx, closest = 0, abs(math.modf(prob[0])[0] - 0.5)
        for j in range(1, len(prob)):
            if abs(math.modf(prob[j])[0] - 0.5) < closest:
                idx, closest = j, abs(math.modf(prob[j])[0] - 0.5)
        too_many = sum(np.round(prob)) > q_shot
        prob[idx] = np.floor(prob[idx]) if too_many else np.ceil(prob[idx])
    return np.round(prob).astype(int)


def test_dirichlet_counts_are_the_realistic_benchmark_rounding() -> None:
    rng = np.random.default_rng(0)
    for alpha, ways, total in ((0.5, 5, 75), (2.0, 5, 75), (2.0, 3, 45), (10.0, 10, 150)):
        for _ in range(300):
            p = rng.dirichlet(np.full(ways, alpha))
            got = dirichlet_counts(p, total)
            assert got.sum() == total and got.min() >= 0
            assert np.array_equal(got, convert_prob_to_samples(p, total))


def test_imbalanced_episodes_are_fixed_dirichlet_draws_recorded_in_the_digest() -> None:
    labels = np.repeat(np.arange(10, 18), 60)
    a = draw_episodes(labels, 5, 2, 15, 400, seed=0, split="test", query_alpha=2.0)
    again = draw_episodes(labels, 5, 2, 15, 400, seed=0, split="test", query_alpha=2.0)
    assert a.digest == again.digest and np.array_equal(a.query, again.query)
    balanced = draw_episodes(labels, 5, 2, 15, 400, seed=0, split="test")
    other = draw_episodes(labels, 5, 2, 15, 400, seed=0, split="test", query_alpha=3.0)
    assert len({a.digest, balanced.digest, other.digest}) == 3
    assert a.query.shape == (400, 75) and a.support.shape == (400, 5, 2)
    counts = np.stack([np.bincount(a.query_labels[e], minlength=5) for e in range(400)])
    assert len({tuple(c) for c in counts}) > 300  # proportions vary by episode
    for e in range(400):
        classes = labels[a.support[e, :, 0]]
        assert len(set(classes)) == 5 and len(set(a.query[e]) | set(a.support[e].flat)) == 85
        assert np.array_equal(labels[a.query[e]], classes[a.query_labels[e]])
        assert np.array_equal(labels[a.support[e]], np.repeat(classes[:, None], 2, axis=1))
    share = counts / 75
    assert np.abs(share.mean(0) - 0.2).max() < 0.02  # symmetric Dirichlet: 1/W on average

    def largest_share(alpha: float) -> float:
        eps = draw_episodes(labels, 5, 2, 15, 400, seed=0, split="test", query_alpha=alpha)
        return float(np.mean([np.bincount(q, minlength=5).max() / 75
                              for q in eps.query_labels]))

    assert largest_share(0.5) > largest_share(2.0) > largest_share(50.0) > 0.2


def test_imbalanced_episodes_too_big_for_a_class_are_a_user_error() -> None:
    labels = np.repeat(np.arange(5), 8)
    with pytest.raises(UserError, match=r"Dirichlet\(2.0\) draws all asked a class"):
        draw_episodes(labels, 5, 1, 7, 5, seed=0, split="test", query_alpha=2.0)
    with pytest.raises(UserError, match="concentration must be > 0"):
        draw_episodes(labels, 5, 1, 2, 5, seed=0, split="test", query_alpha=0.0)


def test_episode_sampler_lays_out_support_then_queries() -> None:
    labels = torch.as_tensor(np.repeat(np.arange(6), [9, 9, 9, 9, 9, 3]))
    sampler = episode_sampler(ways=4, shots=2, queries=3, episodes=7)
    out = list(sampler(labels, 999, torch.Generator().manual_seed(0)))
    again = list(sampler(labels, 999, torch.Generator().manual_seed(0)))
    assert len(out) == 7 and all(torch.equal(a, b) for a, b in zip(out, again, strict=True))
    for batch in out:
        assert len(batch) == 4 * (2 + 3)
        support = labels[batch[:8]].view(4, 2)
        query = labels[batch[8:]].view(4, 3)
        assert (support == support[:, :1]).all() and (query == support[:, :1]).all()
        assert len(set(support[:, 0].tolist())) == 4
        for w in range(4):
            ids = torch.cat([batch[:8].view(4, 2)[w], batch[8:].view(4, 3)[w]])
            if int(support[w, 0]) != 5:  # class 5 has 3 examples: drawn with replacement
                assert len(set(ids.tolist())) == 5
    with pytest.raises(UserError, match="exceeds the 6 base classes"):
        next(episode_batches(labels, 1, torch.Generator(), ways=7, shots=1, queries=1,
                             episodes=1))


def test_accuracy_is_the_nearest_prototype_rule_and_ci_the_normal_formula() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 10)
    emb = torch.as_tensor(rng.normal(size=(6, 4))[labels] + rng.normal(size=(60, 4)) * 1.2)
    eps = draw_episodes(labels, 4, 3, 5, 25, seed=3, split="test")
    got = episode_accuracy(emb.float(), eps, chunk=7)
    for e in range(25):
        protos = [emb[eps.support[e, w]].mean(0) for w in range(4)]
        hits = [int(np.argmin([float(((emb[q] - p) ** 2).sum()) for p in protos])) == w
                for q, w in zip(eps.query[e], eps.query_labels[e], strict=True)]
        assert got[e] == pytest.approx(100 * np.mean(hits), abs=1e-4)
    mean, ci = mean_ci95(got)
    assert mean == pytest.approx(np.mean(got))
    assert ci == pytest.approx(1.96 * np.sqrt(np.sum((got - got.mean()) ** 2) / 24) / 5)


# ---------------------------------------------------------------------------------------------
# Class splits.
# ---------------------------------------------------------------------------------------------


def cifar_raw() -> RawSplits:
    y = np.arange(100)
    return RawSplits(np.zeros((100, 1)), y, np.zeros((0, 1)), y[:0], 100, "image")


def test_cifar_fs_split_is_64_16_20_named_cifar100_classes() -> None:
    for name in fss.CIFAR_FS_VAL + fss.CIFAR_FS_TEST:
        assert name in CIFAR100_FINE_NAMES
    groups = class_split(cifar_raw(), fss.SplitConfig(scheme="cifar-fs"), "cifar100")
    assert (len(groups.base), len(groups.val), len(groups.novel)) == (64, 16, 20)
    assert {CIFAR100_FINE_NAMES[i] for i in groups.novel} == set(fss.CIFAR_FS_TEST)


def test_fc100_split_keeps_superclasses_whole_12_4_4() -> None:
    groups = class_split(cifar_raw(), fss.SplitConfig(scheme="fc100"), "cifar100")
    coarse = [set(CIFAR100_COARSE_OF[g].tolist()) for g in (groups.base, groups.val, groups.novel)]
    assert [len(g) for g in (groups.base, groups.val, groups.novel)] == [60, 20, 20]
    assert [len(c) for c in coarse] == [12, 4, 4]
    assert coarse[1] == {8, 11, 13, 16} and coarse[2] == {0, 7, 12, 14}  # TADAM's coarse ids


def test_explicit_split_is_checked() -> None:
    raw = RawSplits(np.zeros((10, 1)), np.arange(10), np.zeros((0, 1)), np.zeros(0), 10, "tabular")
    for split, match in ((fss.SplitConfig(base=(0, 1), val=(1, 2), novel=(3,)), "overlap"),
                         (fss.SplitConfig(base=(0,), val=(2,), novel=(12,)), "not classes"),
                         (fss.SplitConfig(base=(0,), val=(), novel=(3,)), "val classes")):
        with pytest.raises(UserError, match=match):
            class_split(raw, split, "sklearn-digits")
    with pytest.raises(UserError, match="needs a source with its own few-shot"):
        class_split(raw, fss.SplitConfig(scheme="source"), "sklearn-digits")
    with pytest.raises(UserError, match="splits CIFAR-100"):
        class_split(raw, fss.SplitConfig(scheme="cifar-fs"), "sklearn-digits")


# ---------------------------------------------------------------------------------------------
# Loaders on native-format fixtures.
# ---------------------------------------------------------------------------------------------


def write_png(path: Path, seed: int, size: int = 12, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def make_omniglot(root: Path, per_char: int = 7) -> Path:
    """``root/images_background`` (4 alphabets x 3 chars) and ``images_evaluation`` (2 x 4)."""
    seed = 0
    for part, alphabets, chars in (("images_background", 4, 3), ("images_evaluation", 2, 4)):
        for a in range(alphabets):
            for c in range(1, chars + 1):
                for i in range(per_char):
                    seed += 1
                    write_png(root / part / f"{part[7:10]}_{a}" / f"character{c:02d}" /
                              f"{c:04d}_{i:02d}.png", seed)
    return root


def test_omniglot_fixture_splits_alphabets(tmp_path: Path) -> None:
    make_omniglot(tmp_path / "python")
    raw = SOURCES.get("omniglot").build({"dir": str(tmp_path), "image_size": 10,
                                          "val_alphabets": 1})
    assert raw.x_train.shape == ((12 + 8) * 7, 1, 10, 10) and raw.x_test.shape[0] == 0
    groups = raw.meta["fewshot_classes"]
    names = raw.meta["class_names"]
    assert (len(groups["base"]), len(groups["val"]), len(groups["novel"])) == (9, 3, 8)
    assert all(names[i].startswith("eva_") for i in groups["novel"])
    held = raw.meta["val_alphabets"]
    assert len(held) == 1 and all(names[i].startswith(held[0]) for i in groups["val"])


def make_mini_csv(root: Path, classes: dict[str, list[str]], per_class: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    seed = 0
    for part, wnids in classes.items():
        with (root / f"{part}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["filename", "label"])
            for wnid in wnids:
                for i in range(per_class):
                    seed += 1
                    name = f"{wnid}{i:08d}.jpg"
                    write_png(root / "images" / name, seed, mode="RGB")
                    writer.writerow([name, wnid])
    return root


MINI = {"train": ["n01532829", "n01558993", "n01704323"],
        "val": ["n01855672", "n02091244"], "test": ["n01930112", "n01981276"]}


def test_mini_imagenet_csv_and_folder_layouts(tmp_path: Path) -> None:
    make_mini_csv(tmp_path / "a" / "mini-imagenet", MINI)
    raw = SOURCES.get("mini-imagenet").build({"dir": str(tmp_path / "a"), "image_size": 8})
    names, groups = raw.meta["class_names"], raw.meta["fewshot_classes"]
    assert raw.x_train.shape == (21, 3, 8, 8)
    assert [names[i] for i in groups["novel"]] == MINI["test"]
    assert [names[i] for i in groups["val"]] == MINI["val"]
    for part, wnids in MINI.items():  # class folders, one shared with another split
        for wnid in [*wnids, "n01532829"]:
            write_png(tmp_path / "b" / part / wnid / "x.png", 1, mode="RGB")
    with pytest.raises(UserError, match="share classes"):
        SOURCES.get("mini-imagenet").build({"dir": str(tmp_path / "b")})


def test_mini_imagenet_hf_is_resplit_by_wordnet_id(monkeypatch: Any) -> None:
    wnids = MINI["train"] + MINI["val"] + MINI["test"]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=wnids)})
    rng = np.random.default_rng(0)

    def part(labels: list[int]) -> datasets.Dataset:
        images = [Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)) for _ in labels]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    calls = []

    def fake_load(hf_id: str, cache_dir: Any = None) -> datasets.DatasetDict:
        calls.append(hf_id)
        # A classification-style layout: every split holds every class.
        return datasets.DatasetDict({"train": part(list(range(7)) * 2),
                                     "validation": part(list(range(7)))})

    monkeypatch.setattr(locate, "SHARED_DATA", Path("/nonexistent"))
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    raw = SOURCES.get("mini-imagenet").build({"image_size": 8})
    assert calls == ["timm/mini-imagenet"] and raw.x_train.shape == (21, 3, 8, 8)
    names, groups = raw.meta["class_names"], raw.meta["fewshot_classes"]
    assert {names[i] for i in groups["base"]} == set(MINI["train"])
    assert {names[i] for i in groups["novel"]} == set(MINI["test"])
    assert np.bincount(raw.y_train).tolist() == [3] * 7


def test_missing_data_is_one_line_user_error(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(locate, "SHARED_DATA", tmp_path / "nothing")

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"Omniglot not found: pass --set data\.dir=") as err:
        SOURCES.get("omniglot").build({})
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"mini-ImageNet not found: pass --set data\.dir=") as err:
        SOURCES.get("mini-imagenet").build({})
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="holds no images_background"):
        SOURCES.get("omniglot").build({"dir": str(tmp_path)})


# ---------------------------------------------------------------------------------------------
# Spec checks.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "match"), [
    ("eval.ways=[5]", "eval.ways=5 exceeds the 3 novel classes"),
    ("fewshot.mode=meta", "fewshot.mode got 'meta'; accepted: episodic, standard"),
    ("fewshot.train_ways=6", "train_ways=6 exceeds the 5 base classes"),
    ("split.scheme=random", "unknown class split scheme 'random'"),
    ("eval.norm=l1", "eval.norm got 'l1'"),
    ("eval.test_episodes=1", "must be >= 2"),
    ("split.scheme=cifar-fs", "apply to split.scheme"),
    ('eval.inference=["kmeans"]', "unknown inference method 'kmeans'"),
    ('eval.inference=["tim:lr=-1"]', "tim: lr must be > 0"),
    ('eval.inference=["tim", "tim"]', "lists a method twice"),
    ("eval.query_dirichlet=[0.0]", "must be > 0"),
    ("eval.query_dirichlet=[2, 2.0]", "repeats a concentration"),
])
def test_spec_mistakes_are_user_errors(override: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        expand(["ce"], ["digits-fewshot"], [0], "smoke", [override])


def test_every_loss_kind_is_accepted_and_fewshot_losses_need_episodes() -> None:
    names = {c.loss for c in expand(["all"], ["digits-fewshot"], [0], "smoke")}
    assert {"ce", "ldr", "triplet", "ms", "proto-triplet", "icnn"} <= names
    assert check_loss("ce", "standard") == "logits"
    with pytest.raises(UserError, match=r"consumes fewshot, which needs fewshot\.mode"):
        check_loss("icnn", "standard")


def test_fewshot_tasks_resolve_at_every_budget() -> None:
    for task in ("digits-fewshot", "cifar-fs", "fc100", "omniglot", "mini-imagenet"):
        for budget in ("smoke", "quick", "paper"):
            spec = resolve_task(task, budget)
            assert spec["family"] == "fewshot"
        assert len(expand(["ce"], [task], [0], "paper")) == 1
    assert resolve_task("digits-fewshot", "paper")["eval"]["test_episodes"] == 2000
    assert resolve_task("cifar-fs", "quick")["eval"]["test_episodes"] >= 600


# ---------------------------------------------------------------------------------------------
# End to end.
# ---------------------------------------------------------------------------------------------


def run_cli(out: Path, *args: str) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["run", "--budget", "smoke", "--device", "cpu", "--out", str(out),
                                 *args])
    assert result.exit_code == 0, result.output
    records = Store(out).records()
    assert {r["status"] for r in records} == {"ok"}, [r.get("reason") for r in records]
    return records


def test_digits_runs_every_kind_and_mode_on_the_same_test_episodes(tmp_path: Path) -> None:
    out = tmp_path / "res"
    losses = ["ce", "ldr", "aldr", "proto-triplet", "icnn:on=support", "triplet"]
    run_cli(out, "--task", "digits-fewshot", "--seeds", "0",
            *[a for loss in losses for a in ("--loss", loss)])
    run_cli(out, "--task", "digits-fewshot", "--seeds", "1", "--loss", "ce")
    run_cli(out, "--task", "digits-fewshot", "--seeds", "0", "--loss", "ce", "--loss", "triplet",
            "--set", "fewshot.mode=standard")
    records = Store(out).records()
    assert len(records) == 9
    digests = {json_key(r["info"]["test_episodes"]) for r in records}
    assert len(digests) == 1  # every loss, seed and mode: the same test episodes
    for rec in records:
        m, info = rec["metrics"], rec["info"]
        assert info["base_classes"] == 5 and info["novel_classes"] == 3
        assert info["val_ways"] == {"3w1s": 2, "3w5s": 2}
        for key in ("3w1s", "3w5s"):
            assert 0 <= m[f"test_acc_{key}"] <= 100 and 0 < m[f"test_ci95_{key}"] < 30
            best = int(m[f"best_epoch_{key}"]) - 1
            assert m[f"test_acc_{key}@best_val"] == rec["curves"][f"test_acc_{key}"][best]
            assert m[f"best_val_acc_{key}"] == max(rec["curves"][f"val_acc_{key}"])
    standard = [r for r in records if r["info"]["mode"] == "standard"]
    assert {r["info"]["loss_kind"] for r in standard} == {"logits", "embeddings"}
    seeds = {r["config"]["seed"]: r["metrics"]["test_acc_3w1s"] for r in records
             if r["config"]["loss"] == "ce" and r["info"]["mode"] == "episodic"}
    assert seeds[0] != seeds[1]  # different training, same episodes
    runs = pd.read_parquet(out / "runs.parquet")
    assert {"test_acc_3w1s", "test_ci95_3w5s", "test_acc_3w5s@best_val"} <= set(runs["metric"])


INFERENCE_ALL = ('eval.inference=["prototype", "prototype:norm=l2", "soft-kmeans", "paddle", '
                 '"tim:iterations=30", "laplacianshot"]')


def test_every_inference_method_on_balanced_and_imbalanced_queries(tmp_path: Path) -> None:
    """One run scores every method on the same fixed balanced and Dirichlet test episodes; the
    prototype numbers are those of a run without them. Packed, the embeddings agree to float
    tolerance (tests/test_packed.py), so a method's accuracy may differ by a query flipped near
    a tie: at most 3 of the 300 test queries (1 point)."""
    plain = run_cli(tmp_path / "plain", "--task", "digits-fewshot", "--seeds", "0,1",
                    "--loss", "ce")
    extra = run_cli(tmp_path / "extra", "--task", "digits-fewshot", "--seeds", "0,1",
                    "--loss", "ce", "--set", INFERENCE_ALL, "--set", "eval.query_dirichlet=[2]")
    packed = run_cli(tmp_path / "packed", "--task", "digits-fewshot", "--seeds", "0,1",
                     "--loss", "ce", "--set", INFERENCE_ALL, "--set",
                     "eval.query_dirichlet=[2]", "--pack", "2")
    labels = ["", "_prototype:norm=l2", "_soft-kmeans", "_paddle", "_tim:iterations=30",
              "_laplacianshot"]
    for before, after, both in zip(sorted(plain, key=seed_of), sorted(extra, key=seed_of),
                                   sorted(packed, key=seed_of), strict=True):
        m = after["metrics"]
        assert {k: m[k] for k in before["metrics"]} == before["metrics"]
        assert after["info"]["test_episodes"] == before["info"]["test_episodes"]
        assert set(after["info"]["imbalanced_test_episodes"]) == {"3w1s_dir2", "3w5s_dir2"}
        for key in ("3w1s", "3w5s"):
            for tag in ("", "_dir2"):
                for label in labels:
                    name = f"{key}{tag}{label}"
                    for metric in (f"test_acc_{name}", f"test_acc_{name}@best_val"):
                        assert 0 <= m[metric] <= 100, metric
                        assert m[f"test_ci95_{name}"] > 0
                    assert both["info"]["packed"] == 2
                    for metric in (f"test_acc_{name}", f"test_acc_{name}@best_val"):
                        assert abs(both["metrics"][metric] - m[metric]) <= 1.0 + 1e-4, metric
            best = int(m[f"best_epoch_{key}"])
            if best == len(after["curves"]["train_loss"]):  # best epoch = last: same scores
                assert m[f"test_acc_{key}_dir2_tim:iterations=30@best_val"] == m[
                    f"test_acc_{key}_dir2_tim:iterations=30"]
        assert "test_acc_3w1s_paddle" not in before["metrics"]


def seed_of(record: dict[str, Any]) -> int:
    return int(record["config"]["seed"])


def json_key(value: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(value.items()))


def write_cifar100(root: Path, train_per_class: int = 5, test_per_class: int = 2) -> Path:
    """``root/cifar-100-python`` with every class, in the published pickle format."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, per in (("train", train_per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(100), per)
        with (folder / name).open("wb") as fh:
            pickle.dump({b"filenames": [b"x.png"] * len(fine), b"batch_label": name.encode(),
                         b"fine_labels": fine.tolist(),
                         b"coarse_labels": CIFAR100_COARSE_OF[fine].tolist(),
                         b"data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)},
                        fh, protocol=2)
    return folder


def test_cifar_fs_fixture_runs_end_to_end(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    records = run_cli(tmp_path / "res", "--task", "cifar-fs", "--seeds", "0", "--loss", "ce",
                      "--loss", "proto-triplet", "--set", f"data.dir={tmp_path}")
    for rec in records:
        info = rec["info"]
        assert (info["base_classes"], info["val_classes"], info["novel_classes"]) == (64, 16, 20)
        assert (info["num_base"], info["num_novel"]) == (64 * 7, 20 * 7)
        assert all(math.isfinite(v) for v in rec["metrics"].values())
        assert {"test_acc_5w1s", "test_acc_5w5s", "test_ci95_5w5s"} <= set(rec["metrics"])


def test_omniglot_fixture_runs_end_to_end(tmp_path: Path) -> None:
    make_omniglot(tmp_path)
    (rec,) = run_cli(tmp_path / "res", "--task", "omniglot", "--seeds", "0", "--loss", "icnn",
                     "--set", f"data.dir={tmp_path}", "--set", "data.val_alphabets=1")
    assert rec["info"]["novel_classes"] == 8 and "test_acc_2w5s" in rec["metrics"]


def test_cli_missing_dataset_and_wrong_mode_are_one_line(tmp_path: Path, monkeypatch: Any
                                                         ) -> None:
    monkeypatch.setattr(locate, "SHARED_DATA", tmp_path / "nothing")
    result = runner.invoke(app, ["run", "--loss", "ce", "--task", "omniglot", "--budget",
                                 "smoke", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Omniglot not found" in result.output
    result = runner.invoke(app, ["run", "--loss", "icnn", "--task", "digits-fewshot", "--budget",
                                 "smoke", "--device", "cpu", "--out", str(tmp_path), "--set",
                                 "fewshot.mode=standard"])
    assert result.exit_code == 2 and "needs fewshot.mode" in result.output
    assert "Traceback" not in result.output


def test_fewshot_loss_with_standard_mode_fails_before_the_grid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from lossbench.cli import app

    result = CliRunner().invoke(app, [
        "run", "--loss", "icnn", "--task", "digits-fewshot", "--budget", "smoke", "--seeds", "0",
        "--set", "fewshot.mode=standard", "--device", "cpu", "--out", str(tmp_path),
    ])
    assert result.exit_code == 2
    assert "needs fewshot.mode" in result.output
    assert "runs in the grid" not in result.output  # refused before any run started
