"""MNIST-family sources read from IDX files, the format the sets are published in.

An IDX file is a big-endian header -- two zero bytes, a type code, the number of dimensions --
then one uint32 size per dimension, then the values (LeCun & Cortes, the MNIST page). MNIST,
Fashion-MNIST, KMNIST and EMNIST all ship their four files under the same names:
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, gzipped (``.gz``) or raw; some mirrors write ``images.idx3`` with a
dot. Files are found through ``lossbench.data.locate``; nothing is downloaded here.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lossbench.data.locate import missing_data, search_roots
from lossbench.data.sources import SOURCES, RawSplits
from lossbench.errors import UserError, require

IDX_TYPES: dict[int, str] = {
    0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8",
}
"""IDX type code -> numpy dtype (big-endian, as stored)."""

PARTS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")
"""The four files of a split, in the order (x_train, y_train, x_test, y_test)."""

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
"""Fashion-MNIST class names by label (Xiao, Rasul & Vollgraf 2017)."""


def read_idx(path: Path) -> np.ndarray:
    """The array in one IDX file (``.gz`` decompressed on the fly), in native byte order."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read {path}: {err}; expected an IDX file (.gz or raw)") from None
    require(len(raw) >= 4 and raw[0] == 0 and raw[1] == 0 and raw[2] in IDX_TYPES,
            f"{path} is not an IDX file (bad magic number {raw[:4].hex()}); expected e.g. "
            "00000803 for images, 00000801 for labels")
    ndim = raw[3]
    header = 4 + 4 * ndim
    require(len(raw) >= header, f"{path}: IDX header is cut short")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    count = int(np.prod(shape)) if shape else 1
    require(len(raw) - header == count * dtype.itemsize,
            f"{path}: header says {shape} ({count * dtype.itemsize} bytes of data) but the file "
            f"holds {len(raw) - header}; the file is truncated or corrupt")
    values = np.frombuffer(raw, dtype, count, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def part_path(folder: Path, part: str) -> Path | None:
    """The file of ``part`` in ``folder`` under any accepted spelling (.gz or raw, '-' or '.')."""
    dotted = part.replace("-idx", ".idx")
    for name in (part, dotted):
        for suffix in (".gz", ""):
            path = folder / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def idx_folder(roots: Sequence[Path]) -> Path | None:
    """The first of ``roots`` holding all four parts, or None."""
    for root in roots:
        if all(part_path(root, part) is not None for part in PARTS):
            return root
    return None


def load_idx_folder(folder: Path, meta: dict[str, object]) -> RawSplits:
    """Images as uint8 [N, 1, H, W], labels int64; sizes and label range checked."""
    arrays = []
    for part in PARTS:
        path = part_path(folder, part)
        assert path is not None  # idx_folder checked every part
        arrays.append(read_idx(path))
    x_tr, y_tr, x_te, y_te = arrays
    for x, y, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        require(x.ndim == 3 and y.ndim == 1 and len(x) == len(y),
                f"{folder}: {split} images {x.shape} and labels {y.shape} do not match; expected "
                "[N, H, W] images and N labels")
        require(x.dtype == np.uint8, f"{folder}: {split} images are {x.dtype}; expected ubyte")
    labels = np.concatenate([y_tr, y_te]).astype(np.int64)
    require(labels.min() >= 0, f"{folder}: negative labels")
    num_classes = int(labels.max()) + 1
    meta = {"origin": str(folder), **meta}
    return RawSplits(x_tr[:, None], y_tr.astype(np.int64), x_te[:, None], y_te.astype(np.int64),
                     num_classes, "image", meta)


def _load_named(name: str, dir: str, meta: dict[str, object]) -> RawSplits:
    folder = idx_folder(search_roots(name, dir))
    if folder is None:
        raise missing_data(name, [f"{p}.gz" for p in PARTS], dir)
    return load_idx_folder(folder, meta)


def _check_named(name: str, dir: str) -> None:
    if idx_folder(search_roots(name, dir)) is None:
        raise missing_data(name, [f"{p}.gz" for p in PARTS], dir)


def _check_idx(dir: str = "") -> None:
    require(bool(dir), "data source 'idx' needs --set data.dir=/folder/with/the/four/idx/files")
    if idx_folder([Path(dir).expanduser()]) is None:
        raise UserError(f"data.dir={dir} does not hold the four IDX files "
                        f"({', '.join(PARTS)}, .gz or raw)")


@SOURCES.register("idx", check=_check_idx)
def idx(dir: str = "") -> RawSplits:
    """Any MNIST-family set (MNIST, Fashion-MNIST, KMNIST, EMNIST...) from its four IDX files.

    ``dir`` is required: the folder holding ``train-images-idx3-ubyte`` etc. (``.gz`` or raw).
    The number of classes is read from the labels.
    """
    _check_idx(dir)
    return load_idx_folder(Path(dir).expanduser(), {"dataset": "idx"})


def _check_fashion(dir: str = "") -> None:
    _check_named("fashion-mnist", dir)


def _check_mnist(dir: str = "") -> None:
    _check_named("mnist", dir)


@SOURCES.register("fashion-mnist", check=_check_fashion)
def fashion_mnist(dir: str = "") -> RawSplits:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 / 10,000 28x28 grey clothing images, 10 classes.

    Looked for in ``data.dir``, ``$LOSSBENCH_DATA/fashion-mnist``, ``../shared/data/fashion-mnist``
    and Debian's ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``).
    ``noise.kind = "asym"`` uses the GCE paper's flip map (``lossbench.data.noise``).
    """
    return _load_named("fashion-mnist", dir,
                       {"dataset": "fashion-mnist", "asym_map": "fashion-mnist",
                        "class_names": FASHION_CLASSES})


@SOURCES.register("mnist", check=_check_mnist)
def mnist(dir: str = "") -> RawSplits:
    """MNIST (LeCun et al. 1998): 60,000 / 10,000 28x28 grey digits, 10 classes.

    Looked for in ``data.dir``, ``$LOSSBENCH_DATA/mnist`` and ``../shared/data/mnist``.
    ``noise.kind = "asym"`` uses Patrini et al.'s MNIST flip map.
    """
    return _load_named("mnist", dir, {"dataset": "mnist", "asym_map": "mnist"})
