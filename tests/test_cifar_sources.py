"""CIFAR sources on tiny fixtures in the native formats; the HF path with a stubbed loader.

Nothing here downloads: ``datasets.load_dataset`` is replaced in every test, and the shared data
fallback is pointed at an empty folder.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from lossbench.data import locate
from lossbench.data.noise import CIFAR100_COARSE_OF, apply_noise
from lossbench.data.sources import SOURCES
from lossbench.errors import UserError

PER_BATCH = 20


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def _dump(path: Path, obj: dict[bytes, Any]) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)  # the CIFAR files are old (python 2) pickles


def write_cifar10(root: Path, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with 5 train batches and a test batch of PER_BATCH images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, PER_BATCH).tolist()
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels,
                              b"data": _images(rng, PER_BATCH),
                              b"filenames": [f"img_{i}.png".encode() for i in range(PER_BATCH)]})
    _dump(folder / "batches.meta", {b"label_names": [b"airplane"] * 10})
    return folder


def write_cifar100(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", 5 * PER_BATCH), ("test", PER_BATCH)):
        fine = rng.integers(0, 100, n)
        _dump(folder / name, {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                              b"fine_labels": fine.tolist(),
                              b"coarse_labels": CIFAR100_COARSE_OF[fine].tolist(),
                              b"data": _images(rng, n)})
    return folder


def batch(folder: Path, name: str) -> dict[bytes, Any]:
    with (folder / name).open("rb") as f:
        return pickle.load(f, encoding="bytes")  # the test's own fixture


def train_labels(folder: Path) -> np.ndarray:
    return np.concatenate([batch(folder, f"data_batch_{i}")[b"labels"] for i in range(1, 6)])


def load(source: str, **options: str) -> Any:
    return SOURCES.get(source).build(options)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No shared data, and a hub loader that fails loudly unless a test installs its own."""
    monkeypatch.setattr(locate, "SHARED_DATA", tmp_path / "no-shared-data")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("test tried to reach the Hugging Face hub")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


# --- native folders ---------------------------------------------------------------------------


@pytest.mark.parametrize("point_at", ["folder", "parent"])
def test_cifar10_native(tmp_path: Path, point_at: str) -> None:
    folder = write_cifar10(tmp_path)
    raw = load("cifar10", dir=str(folder if point_at == "folder" else tmp_path))
    assert raw.x_train.shape == (5 * PER_BATCH, 3, 32, 32) and raw.x_train.dtype == np.uint8
    assert raw.x_test.shape == (PER_BATCH, 3, 32, 32)
    assert raw.y_train.dtype == np.int64 and raw.num_classes == 10 and raw.kind == "image"
    assert np.array_equal(raw.y_train, train_labels(folder))
    b3 = batch(folder, "data_batch_3")
    assert np.array_equal(raw.x_train[2 * PER_BATCH + 1], b3[b"data"][1].reshape(3, 32, 32))
    assert np.array_equal(raw.y_test, batch(folder, "test_batch")[b"labels"])
    assert raw.meta["asym_map"] == "cifar10"


def test_cifar100_native_with_coarse_labels(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path)
    raw = load("cifar100", dir=str(tmp_path))
    train = batch(folder, "train")
    assert raw.num_classes == 100 and raw.x_train.shape == (5 * PER_BATCH, 3, 32, 32)
    assert np.array_equal(raw.y_train, train[b"fine_labels"])
    assert np.array_equal(raw.meta["coarse_train"], train[b"coarse_labels"])
    assert np.array_equal(raw.meta["coarse_test"], batch(folder, "test")[b"coarse_labels"])
    # the dataset's own coarse labels agree with the superclass flip map
    noisy, _ = apply_noise(raw.y_train, 100, "asym", {"rate": 0.5}, seed=0, meta=raw.meta)
    assert np.array_equal(CIFAR100_COARSE_OF[noisy], raw.meta["coarse_train"])


def test_shared_data_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared" / "data"
    folder = write_cifar10(shared / "cifar10")
    monkeypatch.setattr(locate, "SHARED_DATA", shared)
    raw = load("cifar10")
    assert raw.meta["origin"] == f"dir:{folder}"
    assert np.array_equal(raw.y_train, train_labels(folder))


def test_bad_dir_is_a_user_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=re.escape(f"data.dir={missing} is not a folder")) as err:
        load("cifar10", dir=str(missing))
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cifar-10-batches-py") as err:
        load("cifar10", dir=str(tmp_path / "empty"))
    assert "data_batch_1" in str(err.value) and "\n" not in str(err.value)


def test_refuses_pickles_with_code(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": print, b"labels": []}, f)
    with pytest.raises(UserError, match=r"refusing to load builtins\.print"):
        load("cifar10", dir=str(folder))


# --- Hugging Face -----------------------------------------------------------------------------


def hf_split(rng: np.random.Generator, n: int, columns: dict[str, np.ndarray]) -> datasets.Dataset:
    pixels = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    feats = {"img": datasets.Image()} | {k: datasets.Value("int64") for k in columns}
    ds = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p) for p in pixels]} | {k: v.tolist() for k, v in columns.items()},
        features=datasets.Features(feats),
    )
    return ds


def install_hub(monkeypatch: pytest.MonkeyPatch, dsd: datasets.DatasetDict) -> list[Any]:
    calls: list[Any] = []

    def fake_load_dataset(path: str, **kwargs: Any) -> datasets.DatasetDict:
        calls.append((path, kwargs))
        return dsd

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_cifar10_from_hf(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    y_tr, y_te = rng.integers(0, 10, 12), rng.integers(0, 10, 6)
    dsd = datasets.DatasetDict({"train": hf_split(rng, 12, {"label": y_tr}),
                                "test": hf_split(rng, 6, {"label": y_te})})
    calls = install_hub(monkeypatch, dsd)
    raw = load("cifar10", cache_dir="/tmp/hf-cache")
    assert calls == [("uoft-cs/cifar10", {"cache_dir": "/tmp/hf-cache"})]
    assert raw.x_train.shape == (12, 3, 32, 32) and raw.x_train.dtype == np.uint8
    first = np.asarray(dsd["train"][0]["img"])  # HWC
    assert np.array_equal(raw.x_train[0], first.transpose(2, 0, 1))
    assert np.array_equal(raw.y_train, y_tr) and np.array_equal(raw.y_test, y_te)
    assert raw.meta["origin"] == "hf:uoft-cs/cifar10"


def test_cifar100_from_hf(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    fine_tr, fine_te = rng.integers(0, 100, 10), rng.integers(0, 100, 4)

    def cols(fine: np.ndarray) -> dict[str, np.ndarray]:
        return {"fine_label": fine, "coarse_label": CIFAR100_COARSE_OF[fine]}

    dsd = datasets.DatasetDict({"train": hf_split(rng, 10, cols(fine_tr)),
                                "test": hf_split(rng, 4, cols(fine_te))})
    calls = install_hub(monkeypatch, dsd)
    raw = load("cifar100", hf_id="someone/cifar100-copy")
    assert calls[0][0] == "someone/cifar100-copy" and calls[0][1]["cache_dir"] is None
    assert np.array_equal(raw.y_train, fine_tr)
    assert np.array_equal(raw.meta["coarse_train"], CIFAR100_COARSE_OF[fine_tr])
    assert np.array_equal(raw.meta["coarse_test"], CIFAR100_COARSE_OF[fine_te])


def test_hf_wrong_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    split = hf_split(rng, 3, {"target": np.zeros(3, dtype=np.int64)})
    install_hub(monkeypatch, datasets.DatasetDict({"train": split, "test": split}))
    with pytest.raises(UserError, match=r"no label column .*found img, target"):
        load("cifar10")


def test_offline_without_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(path: str, **kwargs: Any) -> None:  # what datasets raises with no network/cache
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as err:
        load("cifar10")
    msg = str(err.value)
    assert msg.startswith("CIFAR-10 not found: pass --set data.dir=/path/to/cifar-10-batches-py")
    assert "'uoft-cs/cifar10'" in msg and "OfflineModeIsEnabled" in msg and "\n" not in msg
    with pytest.raises(UserError, match=r"CIFAR-100 not found.*cifar-100-python.*uoft-cs/cifar100"):
        load("cifar100")


# --- CIFAR-N human labels ---------------------------------------------------------------------


def human_file(path: Path, clean: np.ndarray, tensors: bool = False, **extra: Any) -> Path:
    """A CIFAR-10N-style file: a dict of label arrays, as published (numpy arrays in a .pt)."""
    rng = np.random.default_rng(5)
    table: dict[str, Any] = {"clean_label": clean}
    for key in ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"):
        flip = rng.random(len(clean)) < 0.4
        table[key] = np.where(flip, (clean + 1) % 10, clean)
    table.update(extra)
    if tensors:
        table = {k: torch.as_tensor(v) for k, v in table.items()}
    if path.suffix == ".npy":
        np.save(path, np.array(table, dtype=object), allow_pickle=True)
    else:
        torch.save(table, path)
    return path


@pytest.mark.parametrize("kind", ["pt-numpy", "pt-tensors", "npy"])
def test_human_labels_attach_and_apply(tmp_path: Path, kind: str) -> None:
    folder = write_cifar10(tmp_path)
    clean = train_labels(folder)
    path = human_file(tmp_path / ("h.npy" if kind == "npy" else "CIFAR-10_human.pt"), clean,
                      tensors=kind == "pt-tensors")
    raw = load("cifar10", dir=str(folder), human_labels=str(path), human_key="worse_label")
    expected = torch.load(path, weights_only=False)["worse_label"] if kind != "npy" else \
        np.load(path, allow_pickle=True).item()["worse_label"]  # the test's own file
    assert raw.meta["human_key"] == "worse_label" and raw.meta["human_labels"].dtype == np.int64
    assert np.array_equal(raw.meta["human_labels"], np.asarray(expected))
    assert np.array_equal(raw.y_train, clean)  # the source keeps clean labels; noise applies them
    noisy, rep = apply_noise(raw.y_train, 10, "human", {}, seed=0, meta=raw.meta)
    assert np.array_equal(noisy, raw.meta["human_labels"])
    assert rep.realised_rate == pytest.approx(float(np.mean(noisy != clean)))


def test_human_labels_wrong_length(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    path = human_file(tmp_path / "CIFAR-10_human.pt", train_labels(folder)[:-3])
    with pytest.raises(UserError, match="97 labels for 100 training images") as err:
        load("cifar10", dir=str(folder), human_labels=str(path), human_key="aggre_label")
    assert "50,000" in str(err.value) and "\n" not in str(err.value)


def test_human_labels_other_order_or_dataset(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    clean = train_labels(folder)
    path = human_file(tmp_path / "CIFAR-10_human.pt", np.roll(clean, 1))
    with pytest.raises(UserError, match="clean_label does not match"):
        load("cifar10", dir=str(folder), human_labels=str(path), human_key="aggre_label")


def test_human_key_choices(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    path = human_file(tmp_path / "CIFAR-10_human.pt", train_labels(folder))
    with pytest.raises(UserError, match="accepted: aggre_label, worse_label, random_label1"):
        load("cifar10", dir=str(folder), human_labels=str(path), human_key="worst_label")
    with pytest.raises(UserError, match=r"data\.human_key is empty"):
        load("cifar10", dir=str(folder), human_labels=str(path))
    with pytest.raises(UserError, match="is not a file"):
        load("cifar10", dir=str(folder), human_labels=str(tmp_path / "missing.pt"),
             human_key="aggre_label")
    raw = load("cifar10", dir=str(folder), human_key="aggre_label")  # key alone: no labels
    assert "human_labels" not in raw.meta
    with pytest.raises(UserError, match=r"data\.human_labels="):
        apply_noise(raw.y_train, 10, "human", {}, seed=0, meta=raw.meta)


def test_cifar100_human_labels(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path)
    fine = np.asarray(batch(folder, "train")[b"fine_labels"])
    noisy = (fine + 1) % 100
    path = tmp_path / "CIFAR-100_human.pt"
    torch.save({"clean_label": fine, "noisy_label": noisy,
                "clean_coarse_label": CIFAR100_COARSE_OF[fine].tolist(),
                "noisy_coarse_label": CIFAR100_COARSE_OF[noisy].tolist()}, path)
    raw = load("cifar100", dir=str(folder), human_labels=str(path))  # noisy_label by default
    assert raw.meta["human_key"] == "noisy_label"
    assert np.array_equal(raw.meta["human_labels"], noisy)
    with pytest.raises(UserError, match="accepted: noisy_label, clean_label"):
        load("cifar100", dir=str(folder), human_labels=str(path), human_key="noisy_coarse_label")


def test_human_labels_follow_hf_batch_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF built CIFAR-10 in the archive's batch order; CIFAR-N is in data_batch_1..5 order."""
    rng = np.random.default_rng(3)
    clean = rng.integers(0, 10, 5 * PER_BATCH)
    hub_order = np.concatenate([np.arange(b * PER_BATCH, (b + 1) * PER_BATCH)
                                for b in (3, 2, 1, 4, 0)])
    dsd = datasets.DatasetDict({"train": hf_split(rng, len(clean), {"label": clean[hub_order]}),
                                "test": hf_split(rng, 4, {"label": clean[:4]})})
    install_hub(monkeypatch, dsd)
    path = human_file(tmp_path / "CIFAR-10_human.pt", clean)
    raw = load("cifar10", human_labels=str(path), human_key="random_label2")
    published = torch.load(path, weights_only=False)["random_label2"]  # the test's own file
    assert raw.meta["human_alignment"] == "batches reordered"
    assert np.array_equal(raw.meta["human_labels"], published[hub_order])


def test_source_schema() -> None:
    for name in ("cifar10", "cifar100"):
        entry = SOURCES.get(name)
        assert [p.name for p in entry.params] == ["dir", "hf_id", "cache_dir", "human_labels",
                                                  "human_key"]
        assert all(p.default == "" for p in entry.params)
