"""Native-format sources on tiny fixtures written in the same formats: IDX (MNIST family),
LIBSVM, the LDR paper's Letter files, Vowel and the Statlog CSVs; the split helpers."""

from __future__ import annotations

import gzip
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold

from lossbench.data import locate
from lossbench.data.catalog import DATASETS
from lossbench.data.idx import PARTS, read_idx
from lossbench.data.libsvm import read_libsvm
from lossbench.data.sources import SOURCES
from lossbench.data.tabular_sets import (
    STATLOG,
    minmax_scale,
    rows_minus,
    stratified_holdout,
)
from lossbench.errors import UserError
from lossbench.families.classification import check_spec, kfold_split, prepare_splits, subset
from lossbench.spec import resolve_task


@pytest.fixture(autouse=True)
def no_shared_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixtures only: neither ../shared/data nor a Debian install may answer."""
    monkeypatch.setattr(locate, "SHARED_DATA", tmp_path / "no-shared-data")
    monkeypatch.setattr(locate, "DEBIAN_PATHS", {})


def build(source: str, **options: object):
    return SOURCES.get(source).build(options)


# --- IDX ----------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as LeCun's page describes it: 0, 0, type 0x08 (ubyte), ndim, big-endian sizes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_mnist_like(folder: Path, n_train: int = 30, n_test: int = 10, classes: int = 10,
                     gz: bool = True, dotted: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        PARTS[0]: rng.integers(0, 256, (n_train, 28, 28)), PARTS[1]: np.arange(n_train) % classes,
        PARTS[2]: rng.integers(0, 256, (n_test, 28, 28)), PARTS[3]: np.arange(n_test) % classes,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for part, array in arrays.items():
        name = part.replace("-idx", ".idx") if dotted else part
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize(("gz", "dotted"), [(True, False), (False, False), (False, True)])
def test_idx_reads_gz_raw_and_dotted_names(tmp_path: Path, gz: bool, dotted: bool) -> None:
    arrays = write_mnist_like(tmp_path / "fm", gz=gz, dotted=dotted)
    raw = build("fashion-mnist", dir=str(tmp_path / "fm"))
    assert raw.x_train.shape == (30, 1, 28, 28) and raw.x_train.dtype == np.uint8
    assert raw.kind == "image" and raw.num_classes == 10 and raw.y_train.dtype == np.int64
    np.testing.assert_array_equal(raw.x_train[:, 0], arrays[PARTS[0]])
    np.testing.assert_array_equal(raw.y_test, arrays[PARTS[3]])
    assert raw.meta["asym_map"] == "fashion-mnist"


def test_idx_source_takes_classes_from_the_labels(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "k49", classes=7)
    raw = build("idx", dir=str(tmp_path / "k49"))
    assert raw.num_classes == 7
    with pytest.raises(UserError, match=r"needs --set data\.dir"):
        build("idx")


def test_idx_header_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(idx_bytes(np.arange(5))[:-1])  # one value short
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(path)
    path.write_bytes(idx_bytes(np.arange(6).reshape(2, 3)))
    np.testing.assert_array_equal(read_idx(path), np.arange(6).reshape(2, 3))


def test_missing_fashion_mnist_names_the_get_command(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSSBENCH_DATA", str(tmp_path / "home"))
    with pytest.raises(UserError) as err:
        build("fashion-mnist")
    message = str(err.value)
    assert "lossbench data get fashion-mnist" in message and "\n" not in message
    assert str(tmp_path / "home" / "fashion-mnist") in message
    write_mnist_like(tmp_path / "home" / "fashion-mnist")  # where `data get` puts it
    assert build("fashion-mnist").num_classes == 10


# --- LIBSVM -------------------------------------------------------------------------------------


def test_libsvm_sparse_rows_and_label_mapping(tmp_path: Path) -> None:
    (tmp_path / "a.train").write_text(
        "+1 1:0.5 3:-1\n"
        "-1 2:2 # a comment\n"
        "3 qid:4 1:1 4:7e-1\n"
        "\n"
        "-1 \n")
    (tmp_path / "a.test").write_text("3 2:1\n+1 1:-0.25\n")
    raw = build("libsvm", train="a.train", test="a.test", dir=str(tmp_path))
    np.testing.assert_allclose(raw.x_train, [[0.5, 0, -1, 0], [0, 2, 0, 0], [1, 0, 0, 0.7],
                                             [0, 0, 0, 0]])
    np.testing.assert_allclose(raw.x_test, [[0, 1, 0, 0], [-0.25, 0, 0, 0]])  # padded to 4
    assert raw.meta["label_values"] == [-1.0, 1.0, 3.0] and raw.num_classes == 3
    assert raw.y_train.tolist() == [1, 0, 2, 0] and raw.y_test.tolist() == [2, 1]
    wide = build("libsvm", train=str(tmp_path / "a.train"), test=str(tmp_path / "a.test"),
                 num_features=6)
    assert wide.x_train.shape == (4, 6) and wide.x_test.shape == (2, 6)


def test_libsvm_mistakes_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "ok").write_text("1 1:1\n2 2:1\n")
    (tmp_path / "bad").write_text("1 1:1\n2 two:1\n")
    with pytest.raises(UserError, match=r"bad:2: not LIBSVM format"):
        build("libsvm", train=str(tmp_path / "bad"), test=str(tmp_path / "ok"))
    with pytest.raises(UserError, match=r"index 2 is above data.num_features=1"):
        build("libsvm", train=str(tmp_path / "ok"), test=str(tmp_path / "ok"), num_features=1)
    (tmp_path / "other").write_text("5 1:1\n")
    with pytest.raises(UserError, match="labels the training file lacks: 5"):
        build("libsvm", train=str(tmp_path / "ok"), test=str(tmp_path / "other"))
    with pytest.raises(UserError, match=r"needs data\.train and data\.test"):
        build("libsvm", train=str(tmp_path / "ok"))
    (tmp_path / "zero").write_text("1 0:1\n")
    with pytest.raises(UserError, match="start at 1"):
        read_libsvm(tmp_path / "zero")


# --- Letter -------------------------------------------------------------------------------------


def write_letter(folder: Path, csv_name: str = "letter_uci_order.csv", seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20,000 UCI-order rows (with duplicate rows, as the real file has) and an LDR test file of
    2,000 of them, scaled as the LDR code stores them (x / 7.5 - 1, one-hot labels)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 26, 20000)
    x = rng.integers(0, 16, (20000, 16))
    x[10:20], y[10:20] = x[0], y[0]  # eleven identical rows
    folder.mkdir(parents=True, exist_ok=True)
    header = "lettr," + ",".join(f"f{i}" for i in range(16)) + "\n" if csv_name.endswith(
        ".csv") else ""
    lines = [f"{string.ascii_uppercase[c]}," + ",".join(map(str, r)) for c, r in zip(y, x,
                                                                                     strict=True)]
    (folder / csv_name).write_text(header + "\n".join(lines) + "\n")
    test = np.sort(np.r_[rng.choice(np.arange(20, 20000), 1997, replace=False), 3, 12, 15])
    np.savez(folder / "letter_ldr_test.npz", np.round(x[test] / 7.5 - 1, 6), np.eye(26)[y[test]])
    return x, y, test


@pytest.mark.parametrize("csv_name", ["letter_uci_order.csv", "letter-recognition.data"])
def test_letter_ldr_split_rebuilds_the_training_rows(tmp_path: Path, csv_name: str) -> None:
    x, y, test = write_letter(tmp_path / "letter", csv_name)
    raw = build("letter", dir=str(tmp_path / "letter"))
    assert raw.x_train.shape == (18000, 16) and raw.x_test.shape == (2000, 16)
    assert raw.num_classes == 26 and raw.meta["pair_map"] == "letter"
    # Test rows 12 and 15 duplicate row 0 (rows 10-19 do): the first unused occurrences, rows 0
    # and 10, leave training; row 3 is unique.
    keep = np.setdiff1d(np.arange(20000), np.r_[np.setdiff1d(test, [12, 15]), 0, 10])
    np.testing.assert_array_equal(raw.y_train, y[keep])
    np.testing.assert_allclose(raw.x_train, x[keep] / 7.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(raw.y_test, y[test])
    assert raw.x_train.min() == -1.0 and raw.x_train.max() == 1.0


def test_letter_prefers_the_official_training_file_and_has_the_classic_split(
        tmp_path: Path) -> None:
    x, y, _ = write_letter(tmp_path / "letter")
    classic = build("letter", split="classic", dir=str(tmp_path / "letter"))
    np.testing.assert_array_equal(classic.y_train, y[:16000])
    np.testing.assert_array_equal(classic.y_test, y[16000:])
    np.testing.assert_allclose(classic.x_test, x[16000:] / 7.5 - 1, atol=1e-6)
    np.savez(tmp_path / "letter" / "letter_train.npz", np.zeros((5, 16)), np.eye(26)[:5])
    raw = build("letter", dir=str(tmp_path / "letter"))
    assert raw.y_train.tolist() == [0, 1, 2, 3, 4] and raw.meta["train_from"] == "letter_train.npz"


def test_letter_missing_files_name_the_get_command(tmp_path: Path) -> None:
    (tmp_path / "letter").mkdir()
    np.savez(tmp_path / "letter" / "letter_ldr_test.npz", np.zeros((2, 16)), np.eye(26)[:2])
    with pytest.raises(UserError, match="lossbench data get letter"):
        build("letter", dir=str(tmp_path / "letter"))  # test file but no training rows
    with pytest.raises(UserError, match=r"letter_uci_order\.csv"):
        build("letter", split="classic", dir=str(tmp_path / "letter"))


def test_rows_minus_is_a_multiset_difference_in_order() -> None:
    rows = np.array([[1], [2], [1], [3], [1]])
    assert rows_minus(rows, np.array([[1], [3], [1]])).tolist() == [1, 4]
    with pytest.raises(UserError, match="not among the UCI rows"):
        rows_minus(rows, np.array([[9]]))


# --- Vowel --------------------------------------------------------------------------------------


def test_vowel_prefers_libsvm_test_file_over_the_derived_one(tmp_path: Path) -> None:
    folder = tmp_path / "vowel"
    folder.mkdir()
    rows = "\n".join(f"{c} 1:{c / 10} 10:-0.5" for c in range(11))
    (folder / "vowel.scale").write_text(rows + "\n")
    (folder / "vowel.scale.t.derived").write_text("4 2:1.2\n")
    raw = build("vowel", dir=str(folder))
    assert raw.x_train.shape == (11, 10) and raw.meta["test_from"] == "vowel.scale.t.derived"
    assert raw.meta["pair_map"] == "vowel" and raw.y_test.tolist() == [4]
    (folder / "vowel.scale.t").write_text("7 3:0.5\n")
    raw = build("vowel", dir=str(folder))
    assert raw.meta["test_from"] == "vowel.scale.t" and raw.y_test.tolist() == [7]


# --- Statlog and split helpers ------------------------------------------------------------------


def write_glass(folder: Path, seed: int = 0) -> np.ndarray:
    spec = STATLOG["glass"]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(spec.rows, spec.features))
    y = np.r_[np.arange(6), rng.integers(0, 6, spec.rows - 6)]
    names = np.array(["1", "2", "3", "5", "6", "7"])[y]
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["RI,Na,Mg,Al,Si,K,Ca,Ba,Fe,Type"]
    lines += [",".join(f"{v:.6f}" for v in row) + f",{n}" for row, n in zip(x, names, strict=True)]
    (folder / spec.file).write_text("\n".join(lines) + "\n")
    return y


def test_statlog_split_is_fixed_stratified_and_scaled(tmp_path: Path) -> None:
    y = write_glass(tmp_path / "statlog")
    raw = build("statlog-glass", dir=str(tmp_path / "statlog"))
    assert raw.x_train.shape == (171, 9) and raw.x_test.shape == (43, 9)
    assert raw.num_classes == 6 and raw.meta["class_names"] == ("1", "2", "3", "5", "6", "7")
    assert np.bincount(np.r_[raw.y_train, raw.y_test]).tolist() == np.bincount(y).tolist()
    assert raw.x_train.min() == pytest.approx(-1) and raw.x_train.max() == pytest.approx(1)
    again = build("statlog-glass", dir=str(tmp_path / "statlog"))
    other = build("statlog-glass", dir=str(tmp_path / "statlog"), split_seed=1)
    assert again.meta["split_hash"] == raw.meta["split_hash"] != other.meta["split_hash"]
    plain = build("statlog-glass", dir=str(tmp_path / "statlog"), scale="none")
    assert plain.x_train.min() < -1.5  # standard normal features, unscaled


def test_the_catalogue_lists_the_statlog_files_the_sources_read() -> None:
    assert {group for group in DATASETS["statlog"].needs} == {(s.file,) for s in STATLOG.values()}


def test_statlog_rejects_a_file_of_the_wrong_shape(tmp_path: Path) -> None:
    (tmp_path / "statlog").mkdir()
    (tmp_path / "statlog" / "Glass.csv").write_text("a,Type\n1.0,1\n2.0,2\n")
    with pytest.raises(UserError, match=r"expected \(214, 9\) with 6 classes"):
        build("statlog-glass", dir=str(tmp_path / "statlog"))
    with pytest.raises(UserError, match="lossbench data get statlog"):
        build("statlog-dna", dir=str(tmp_path / "statlog"))


def test_stratified_holdout_has_the_exact_size_and_class_shares() -> None:
    y = np.repeat(np.arange(4), [500, 300, 150, 50])
    train, test = stratified_holdout(y, 333, seed=0)
    assert len(test) == 333 and len(train) == 667
    assert np.intersect1d(train, test).size == 0
    shares = np.bincount(y[test], minlength=4) / np.bincount(y)
    assert np.all(np.abs(shares - 0.333) < 0.01)
    assert np.array_equal(stratified_holdout(y, 333, seed=0)[1], test)
    assert not np.array_equal(stratified_holdout(y, 333, seed=1)[1], test)


def test_minmax_scale_uses_the_training_range() -> None:
    train = np.array([[0.0, 5.0], [10.0, 5.0]])
    scaled_train, scaled_test = minmax_scale(train, np.array([[20.0, 7.0]]))
    np.testing.assert_allclose(scaled_train, [[-1, 0], [1, 0]])  # a constant column becomes 0
    np.testing.assert_allclose(scaled_test, [[3, 0]])


@pytest.mark.parametrize(("n", "k"), [(10, 5), (13, 5), (528, 5), (7, 2)])
def test_kfold_split_is_scikit_learns_unshuffled_kfold(n: int, k: int) -> None:
    for fold, (train, val) in enumerate(KFold(n_splits=k).split(np.zeros(n))):
        mine_train, mine_val = kfold_split(n, k, fold)
        np.testing.assert_array_equal(mine_val, val)
        np.testing.assert_array_equal(mine_train, train)


def test_subset_is_seeded_sorted_and_bounded() -> None:
    idx = np.arange(100, 200)
    part = subset(idx, 10, seed=3)
    assert len(part) == 10 and np.all(np.diff(part) > 0) and set(part) <= set(idx)
    assert np.array_equal(subset(idx, 10, seed=3), part)
    assert subset(idx, 0, seed=3) is idx and subset(idx, 500, seed=3) is idx


def test_kfold_validates_on_fold_seed_mod_k_and_limits_subsample() -> None:
    spec = resolve_task("digits-noisy", "smoke", ["split.kfold=5", "split.test_limit=100"])
    raw = SOURCES.get("sklearn-digits").build({})
    data = prepare_splits(spec, seed=7, device=torch.device("cpu"))
    train, val = kfold_split(len(raw.y_train), 5, 2)  # seed 7 -> fold 2
    np.testing.assert_allclose(data.x_val.numpy(), raw.x_train[val])
    np.testing.assert_allclose(data.x_train.numpy(), raw.x_train[train])
    assert len(data.x_test) == 100
    with pytest.raises(UserError, match=r"split\.kfold must be 0"):
        check_spec(resolve_task("digits-noisy", "smoke", ["split.kfold=1"]))
    with pytest.raises(UserError, match=r"split\.test_limit must be an int >= 0"):
        check_spec(resolve_task("digits-noisy", "smoke", ["split.test_limit=-3"]))
