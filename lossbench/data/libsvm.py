"""LIBSVM-format sources: how a user brings ALOI, News20, satimage or any other LIBSVM set.

One example per line: ``<label> <index>:<value> <index>:<value> ...`` with 1-based feature
indices in increasing order; features left out are zero (Chang & Lin, the LIBSVM data page).
Labels may be any numbers (``1``, ``-1``, ``+1``, ``3.0``); the sorted distinct labels of the
train and test files together are mapped to ``0..K-1`` and the mapping is kept in
``meta["label_values"]``. Rows become a dense float32 matrix with a declared feature count, so a
test file whose largest index is smaller than the training file's still has the same width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lossbench.data.sources import SOURCES, RawSplits
from lossbench.errors import UserError, require

MAX_DENSE_BYTES = 8 * 2**30
"""Refuse a dense matrix bigger than this (News20's 62k features x 16k rows would be ~4 GB)."""


def read_libsvm(path: Path, num_features: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(features float32 [N, D], raw labels float64 [N], largest index seen) of one file.

    ``num_features`` fixes D (an index above it is an error); 0 takes D from the file.
    """
    require(path.is_file(), f"{path} is not a file; expected a LIBSVM-format file")
    labels: list[float] = []
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    with path.open("r", encoding="ascii", errors="strict") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            label, *pairs = text.split()
            pairs = [p for p in pairs if not p.startswith("qid:")]
            try:
                labels.append(float(label))
                split = [p.split(":", 1) for p in pairs]
                idx = np.array([int(i) for i, _ in split], dtype=np.int64)
                val = np.array([float(v) for _, v in split], dtype=np.float64)
            except ValueError:
                raise UserError(f"{path}:{number}: not LIBSVM format ('<label> <index>:<value> "
                                f"...'): {text[:60]!r}") from None
            require(bool(np.all(idx >= 1)), f"{path}:{number}: feature indices start at 1")
            rows.append(np.full(len(idx), len(labels) - 1, dtype=np.int64))
            cols.append(idx - 1)
            vals.append(val)
    require(bool(labels), f"{path} holds no examples")
    col = np.concatenate(cols) if cols else np.empty(0, np.int64)
    largest = int(col.max()) + 1 if col.size else 0
    width = num_features or largest
    require(largest <= width, f"{path}: feature index {largest} is above data.num_features="
            f"{num_features}; raise it or leave it 0 to read the width from the files")
    require(len(labels) * width * 4 <= MAX_DENSE_BYTES,
            f"{path}: {len(labels)} x {width} features is too large to hold densely "
            f"({len(labels) * width * 4 / 2**30:.1f} GiB)")
    x = np.zeros((len(labels), width), dtype=np.float32)
    x[np.concatenate(rows), col] = np.concatenate(vals)
    return x, np.asarray(labels, dtype=np.float64), largest


def label_values(*label_sets: np.ndarray) -> np.ndarray:
    """Sorted distinct labels across the given arrays: position k is class k."""
    return np.unique(np.concatenate(label_sets))


def encode(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Raw labels -> class ids 0..K-1 in the order of ``values``."""
    return np.searchsorted(values, labels).astype(np.int64)


def load_libsvm_pair(train: Path, test: Path, num_features: int = 0,
                     meta: dict[str, object] | None = None) -> RawSplits:
    """A train/test pair with one shared width and one shared label mapping."""
    x_tr, l_tr, top_tr = read_libsvm(train, num_features)
    x_te, l_te, top_te = read_libsvm(test, num_features)
    width = num_features or max(top_tr, top_te)
    x_tr = np.pad(x_tr, ((0, 0), (0, width - x_tr.shape[1])))
    x_te = np.pad(x_te, ((0, 0), (0, width - x_te.shape[1])))
    values = label_values(l_tr, l_te)
    require(len(values) >= 2, f"{train} and {test} hold one label only ({values[0]:g})")
    unseen = np.setdiff1d(l_te, l_tr)
    require(not unseen.size, f"{test} has labels the training file lacks: "
            f"{', '.join(f'{v:g}' for v in unseen[:5])}")
    info = {"origin": f"{train} + {test}", "label_values": [float(v) for v in values],
            "num_features": width, **(meta or {})}
    return RawSplits(x_tr, encode(l_tr, values), x_te, encode(l_te, values), len(values),
                     "tabular", info)


def _resolve(path: str, dir: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() or not dir else Path(dir).expanduser() / candidate


def _check(train: str = "", test: str = "", dir: str = "", num_features: int = 0) -> None:
    require(bool(train) and bool(test), "data source 'libsvm' needs data.train and data.test "
            "(file paths; relative ones are taken under data.dir)")
    require(num_features >= 0, f"data.num_features must be >= 0, got {num_features}")
    for path in (_resolve(train, dir), _resolve(test, dir)):
        require(path.is_file(), f"{path} is not a file; expected a LIBSVM-format file")


@SOURCES.register("libsvm", check=_check)
def libsvm(train: str = "", test: str = "", dir: str = "", num_features: int = 0) -> RawSplits:
    """Any LIBSVM-format train/test pair (e.g. aloi.scale, news20.scale, satimage.scale + .t).

    ``train`` / ``test``: file paths (relative ones under ``dir``); ``num_features``: the
    declared feature count (0: the largest index in either file). Labels of any values map to
    0..K-1 in sorted order.
    """
    _check(train, test, dir, num_features)
    return load_libsvm_pair(_resolve(train, dir), _resolve(test, dir), num_features,
                            {"dataset": "libsvm"})
