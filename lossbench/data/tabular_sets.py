"""Small multi-class tabular sets of the robust-loss literature: Letter, Vowel and five Statlog
sets, read from the files ``lossbench data get`` fetches (or ``../shared/data`` holds).

Features are scaled as the LDR paper's files are (Zhu, Ying & Yang, ICML 2023; its official
code reads them as given): to [-1, 1]. Letter's integer features 0..15 become ``x / 7.5 - 1``
(exactly what ``letter_test.npz`` holds); Vowel comes scaled in LIBSVM's ``vowel.scale``;
the Statlog sets are min-max scaled with the training rows' range (``svm-scale -l -1 -u 1``).

* ``letter`` (UCI Letter Recognition, 20,000 x 16, 26 classes). ``split = "ldr"``: the LDR
  paper's own 2,000-row test file, trained on the other 18,000 rows (the official
  ``letter_train.npz`` when present, else the 20,000 UCI rows minus the test rows: the first
  unused occurrence of each test row, in UCI order). ``split = "classic"``: the first 16,000
  UCI rows train, the last 4,000 test (Frey & Slate 1991).
* ``vowel`` (Deterding, 990 x 10, 11 classes): LIBSVM's ``vowel.scale`` (528 rows, speakers
  0-7) and ``vowel.scale.t`` (462 rows, speakers 8-14), or ``vowel.scale.t.derived`` where the
  official test file is absent (the same rows scaled with the training min/max).
* ``statlog-<name>``: Satellite (satimage), Shuttle, DNA, Vehicle, Glass as CSV (R package
  mlbench's copies, no split). A fixed stratified split with LIBSVM's test sizes where LIBSVM
  publishes one (satimage 2,000, shuttle 14,500, dna 1,186), else 20% (vehicle 169, glass 43),
  drawn by ``split_seed``; ``meta["split_hash"]`` fingerprints the test rows.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lossbench.data.catalog import (
    LETTER_TEST,
    LETTER_TRAIN,
    LETTER_UCI,
    VOWEL_TEST,
    VOWEL_TRAIN,
    satisfies,
)
from lossbench.data.libsvm import load_libsvm_pair
from lossbench.data.locate import missing_data, search_roots
from lossbench.data.sources import SOURCES, RawSplits
from lossbench.errors import UserError, require

# --- Shared helpers -----------------------------------------------------------------------------


def first_root(name: str, dir: str, *alternatives: Sequence[str]) -> Path | None:
    """The first search root of ``name`` holding, for each group of ``alternatives``, at least
    one of its file names."""
    return next((r for r in search_roots(name, dir) if satisfies(r, alternatives)), None)


def first_file(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def minmax_scale(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every column to [-1, 1] by the training rows' min and max (``svm-scale``); a
    constant column becomes 0. Other arrays use the training range (values may leave [-1, 1])."""
    lo, hi = train.min(axis=0), train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return [np.where(hi > lo, 2.0 * (a - lo) / span - 1.0, 0.0).astype(np.float32)
            for a in (train, *others)]


def stratified_holdout(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices with exactly ``n_test`` test rows, each class contributing
    its share (largest remainders, ties to the lower class id) in an order drawn by ``seed``."""
    require(0 < n_test < len(y), f"test size {n_test} must be in (0, {len(y)})")
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n_test / len(y)
    quota = np.floor(exact).astype(np.int64)
    order = np.lexsort((classes, -(exact - quota)))
    quota[order[: n_test - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:q]
                           for c, q in zip(classes, quota, strict=True)])
    test.sort()
    return np.setdiff1d(np.arange(len(y)), test), test


def indices_hash(indices: np.ndarray) -> str:
    """sha256[:16] of sorted row indices as little-endian int64: names a split."""
    return hashlib.sha256(np.sort(indices).astype("<i8").tobytes()).hexdigest()[:16]


# --- Letter -------------------------------------------------------------------------------------



def read_letter_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(integer features [20000, 16], labels 0..25) from a UCI-order letter CSV."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if rows and rows[0][0].strip().lower() == "lettr":
        rows = rows[1:]
    try:
        labels = np.array([ord(r[0].strip()) - ord("A") for r in rows], dtype=np.int64)
        x = np.array([[int(v) for v in r[1:]] for r in rows], dtype=np.int64)
    except (ValueError, TypeError):
        raise UserError(f"{path}: expected rows 'T,2,8,3,...' (a capital letter and 16 "
                        "integers), as in UCI's letter-recognition.data") from None
    require(x.shape == (20000, 16) and labels.min() >= 0 and labels.max() <= 25,
            f"{path}: {x.shape} features with labels outside A-Z; expected 20,000 x 16")
    return x, labels


def read_ldr_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features float32, labels) from an LDR ``.npz``: ``arr_0`` features, ``arr_1`` one-hot."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, onehot = npz["arr_0"], npz["arr_1"]
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err}); expected the LDR code's .npz with arr_0 "
                        "(features) and arr_1 (one-hot labels)") from None
    require(x.ndim == 2 and onehot.ndim == 2 and len(x) == len(onehot),
            f"{path}: arr_0 {x.shape} and arr_1 {onehot.shape} do not match")
    return x.astype(np.float32), onehot.argmax(axis=1).astype(np.int64)


def rows_minus(rows: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Indices of ``rows`` left after removing each row of ``removed`` once (its first unused
    occurrence): the multiset difference, in the original order."""
    where: dict[bytes, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        where[row.tobytes()].append(i)
    taken = np.zeros(len(rows), dtype=bool)
    for row in removed:
        spots = where.get(row.tobytes())
        require(bool(spots), "a row of the LDR test file is not among the UCI rows; is the UCI "
                "file complete and in its original form?")
        taken[spots.pop(0)] = True
    return np.flatnonzero(~taken)


def letter_scale(x: np.ndarray) -> np.ndarray:
    """Letter's integer features 0..15 -> [-1, 1], as the LDR files hold them."""
    return (x / 7.5 - 1.0).astype(np.float32)


def _letter_root(split: str, dir: str) -> Path:
    groups = (LETTER_TEST, LETTER_TRAIN + LETTER_UCI) if split == "ldr" else (LETTER_UCI,)
    root = first_root("letter", dir, *groups)
    if root is None:
        raise missing_data("letter", [g[0] for g in groups], dir)
    return root


def _check_letter(split: str = "ldr", dir: str = "") -> None:
    _letter_root(split, dir)


@SOURCES.register("letter", check=_check_letter)
def letter(split: Literal["ldr", "classic"] = "ldr", dir: str = "") -> RawSplits:
    """UCI Letter (20,000 x 16, 26 classes): the LDR paper's split (18,000 / 2,000) or the
    classic 16,000 / 4,000; features in [-1, 1] as in the LDR files."""
    root = _letter_root(split, dir)
    meta: dict[str, object] = {"dataset": "letter", "split": split, "origin": str(root),
                               "pair_map": "letter"}
    if split == "classic":
        uci = first_file(root, LETTER_UCI)
        assert uci is not None
        x, y = read_letter_rows(uci)
        xs = letter_scale(x)
        return RawSplits(xs[:16000], y[:16000], xs[16000:], y[16000:], 26, "tabular", meta)
    test_file = first_file(root, LETTER_TEST)
    assert test_file is not None
    x_te, y_te = read_ldr_npz(test_file)
    train_file = first_file(root, LETTER_TRAIN)
    if train_file is not None:
        x_tr, y_tr = read_ldr_npz(train_file)
        meta["train_from"] = train_file.name
    else:
        uci = first_file(root, LETTER_UCI)
        assert uci is not None
        x, y = read_letter_rows(uci)
        test_rows = np.column_stack([y_te, np.rint((x_te + 1.0) * 7.5).astype(np.int64)])
        keep = rows_minus(np.column_stack([y, x]), test_rows)
        x_tr, y_tr = letter_scale(x[keep]), y[keep]
        meta["train_from"] = f"{uci.name} minus {test_file.name}"
    require(x_tr.shape[1] == 16 and x_te.shape[1] == 16,
            f"{root}: letter features have {x_tr.shape[1]}/{x_te.shape[1]} columns; expected 16")
    return RawSplits(x_tr, y_tr, x_te, y_te, 26, "tabular", meta)


# --- Vowel --------------------------------------------------------------------------------------



def _vowel_root(dir: str) -> Path:
    root = first_root("vowel", dir, VOWEL_TRAIN, VOWEL_TEST)
    if root is None:
        raise missing_data("vowel", [VOWEL_TRAIN[0], VOWEL_TEST[0]], dir)
    return root


def _check_vowel(dir: str = "") -> None:
    _vowel_root(dir)


@SOURCES.register("vowel", check=_check_vowel)
def vowel(dir: str = "") -> RawSplits:
    """Deterding vowel (11 classes, 10 features in [-1, 1]): LIBSVM's 528 / 462 split by
    speaker (``vowel.scale``, ``vowel.scale.t`` or its derived copy)."""
    root = _vowel_root(dir)
    test = first_file(root, VOWEL_TEST)
    assert test is not None
    raw = load_libsvm_pair(root / VOWEL_TRAIN[0], test, num_features=10,
                           meta={"dataset": "vowel", "test_from": test.name,
                                 "pair_map": "vowel"})
    require(raw.num_classes == 11, f"{root}: vowel has {raw.num_classes} classes; expected 11")
    return raw


# --- Statlog ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatlogSet:
    """One Statlog CSV: its file, shape, and the test size of the fixed split."""

    file: str
    rows: int
    features: int
    classes: int
    n_test: int
    test_size_from: str


STATLOG: dict[str, StatlogSet] = {
    "satimage": StatlogSet("Satellite.csv", 6435, 36, 6, 2000, "LIBSVM satimage.scale.t"),
    "shuttle": StatlogSet("Shuttle.csv", 58000, 9, 7, 14500, "LIBSVM shuttle.scale.t"),
    "dna": StatlogSet("DNA.csv", 3186, 180, 3, 1186, "LIBSVM dna.scale.t"),
    "vehicle": StatlogSet("Vehicle.csv", 846, 18, 4, 169, "20%: LIBSVM has no test file"),
    "glass": StatlogSet("Glass.csv", 214, 9, 6, 43, "20%: LIBSVM has no test file"),
}


def read_statlog_csv(path: Path, spec: StatlogSet) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features float64, class ids, class names): the last column is the label; ids follow
    the sorted distinct labels as the CSV spells them."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r][1:]
    try:
        x = np.array([[float(v) for v in r[:-1]] for r in rows], dtype=np.float64)
    except ValueError:
        raise UserError(f"{path}: non-numeric feature; expected mlbench's CSV export") from None
    names = sorted({r[-1] for r in rows})
    require(x.shape == (spec.rows, spec.features) and len(names) == spec.classes,
            f"{path}: {x.shape} with {len(names)} classes; expected ({spec.rows}, "
            f"{spec.features}) with {spec.classes} classes")
    ids = {name: k for k, name in enumerate(names)}
    return x, np.array([ids[r[-1]] for r in rows], dtype=np.int64), names


def _statlog_root(spec: StatlogSet, dir: str) -> Path:
    root = first_root("statlog", dir, (spec.file,))
    if root is None:
        raise missing_data("statlog", [spec.file], dir)
    return root


def _statlog_source(name: str, spec: StatlogSet) -> None:
    def load(split_seed: int = 0, scale: Literal["minmax", "none"] = "minmax",
             dir: str = "") -> RawSplits:
        root = _statlog_root(spec, dir)
        x, y, names = read_statlog_csv(root / spec.file, spec)
        train, test = stratified_holdout(y, spec.n_test, split_seed)
        x_tr, x_te = x[train], x[test]
        if scale == "minmax":
            x_tr, x_te = minmax_scale(x_tr, x_te)
        meta = {"dataset": name, "origin": str(root / spec.file), "class_names": tuple(names),
                "split_hash": indices_hash(test), "test_size_from": spec.test_size_from}
        return RawSplits(np.asarray(x_tr, np.float32), y[train], np.asarray(x_te, np.float32),
                         y[test], spec.classes, "tabular", meta)

    load.__doc__ = (f"Statlog {name} ({spec.rows} x {spec.features}, {spec.classes} classes) "
                    f"from {spec.file}: fixed stratified split, {spec.n_test} test rows "
                    f"({spec.test_size_from}), drawn by split_seed; features scaled to [-1, 1] "
                    "by the training range (scale=minmax) or as given (none).")

    def check(split_seed: int = 0, scale: str = "minmax", dir: str = "") -> None:
        _statlog_root(spec, dir)

    SOURCES.register(f"statlog-{name}", check=check)(load)


for _name, _spec in STATLOG.items():
    _statlog_source(_name, _spec)
