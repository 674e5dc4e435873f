"""Regression sources: the UCI benchmark suite, scikit-learn's diabetes and California housing.

Protocol (Hernández-Lobato & Adams, ICML 2015; Gal & Ghahramani, ICML 2016): 20 random 90/10
train/test splits per dataset (5 for protein). A regression source takes the split index as
engine context (``split``): **the run seed is the split index** (seed k trains and tests on split
k), so ``--seeds 0-19`` covers the whole protocol.

UCI sets are read from the layout of the authors' repositories (``UCI_Datasets/<folder>/data/``
with ``data.txt`` (whitespace-separated rows), ``index_features.txt``, ``index_target.txt``,
``n_splits.txt``, ``index_train_<k>.txt``, ``index_test_<k>.txt``; zero-based indices, one per
line), looked for as ``lossbench.data.locate`` says: ``data.dir`` (the ``UCI_Datasets`` folder, a
dataset folder or its ``data/``), else ``$LOSSBENCH_DATA/UCI_Datasets`` (where ``lossbench data
get UCI_Datasets`` puts it), else ``../shared/data/UCI_Datasets``. scikit-learn's sets have no
published splits, so split k is a random permutation drawn from seed k (first 90% train), the
construction the published split files came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from lossbench.data import locate, sklearn_files
from lossbench.data.sources import SOURCES, RawSplits
from lossbench.errors import UserError, require

UCI_DATASET = "UCI_Datasets"
"""The catalogue name (and folder name) of the UCI regression suite."""

UciName = Literal[
    "boston", "concrete", "energy", "kin8nm", "naval", "power", "protein", "wine-red", "yacht"
]
UCI_FOLDERS: dict[str, str] = {
    "boston": "bostonHousing",
    "concrete": "concrete",
    "energy": "energy",
    "kin8nm": "kin8nm",
    "naval": "naval-propulsion-plant",
    "power": "power-plant",
    "protein": "protein-tertiary-structure",
    "wine-red": "wine-quality-red",
    "yacht": "yacht",
}
"""Short name -> folder name in the authors' ``UCI_Datasets``."""

MARKERS = ("data.txt", "index_features.txt", "index_target.txt")


def random_split(n: int, test_fraction: float, split: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``split`` of the protocol: a permutation from seed ``split``, the first part trains."""
    require(0.0 < test_fraction < 1.0, f"data.test_fraction must be in (0, 1), got {test_fraction}")
    require(split >= 0, f"split (the run seed) must be >= 0, got {split}")
    order = np.random.default_rng(split).permutation(n)
    cut = round(n * (1.0 - test_fraction))
    return np.sort(order[:cut]), np.sort(order[cut:])


def _tabular(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
             meta: dict[str, object]) -> RawSplits:
    """Features float32, targets float64 (kept exact for metrics in original units)."""
    x32 = np.asarray(x, dtype=np.float32)
    y64 = np.asarray(y, dtype=np.float64)
    return RawSplits(x32[train], y64[train], x32[test], y64[test], 0, "tabular", meta)


# --- UCI in the authors' layout -----------------------------------------------------------------


def uci_folder(name: str, root: Path) -> Path | None:
    """The ``data/`` folder of ``name`` under ``root`` (any of the accepted depths), or None."""
    names = dict.fromkeys((UCI_FOLDERS.get(name, name), name))
    candidates = [root / "UCI_Datasets" / n / "data" for n in names]
    candidates += [root / n / "data" for n in names] + [root / "data", root]
    for cand in candidates:
        if all((cand / m).is_file() for m in MARKERS):
            return cand
    return None


def _indices(path: Path) -> np.ndarray:
    """A whitespace-separated index file (the authors' files hold floats such as ``3.0``)."""
    require(path.is_file(), f"{path} is missing; expected it in the UCI_Datasets layout")
    values = np.atleast_1d(np.loadtxt(path, dtype=np.float64))
    require(bool(np.all(values == np.round(values))), f"{path}: expected integer indices")
    return values.astype(np.int64)


def _n_splits(folder: Path) -> int:
    path = folder / "n_splits.txt"
    if path.is_file():
        return int(np.loadtxt(path))
    return len(list(folder.glob("index_train_*.txt")))


def load_uci_folder(folder: Path, name: str, split: int) -> RawSplits:
    """Read one split of a dataset in the authors' layout; indices are checked, not trusted."""
    data = np.atleast_2d(np.loadtxt(folder / "data.txt", dtype=np.float64))
    features = _indices(folder / "index_features.txt")
    target = _indices(folder / "index_target.txt")
    require(len(target) == 1, f"{folder / 'index_target.txt'}: expected one target column")
    columns = data.shape[1]
    require(bool(np.all((features >= 0) & (features < columns))) and 0 <= target[0] < columns,
            f"{folder}: feature/target column index outside data.txt's {columns} columns")
    n_splits = _n_splits(folder)
    require(0 <= split < n_splits, f"split {split} out of range: UCI '{name}' has {n_splits} "
            f"splits (0-{n_splits - 1}); the run seed is the split index")
    train = _indices(folder / f"index_train_{split}.txt")
    test = _indices(folder / f"index_test_{split}.txt")
    rows = len(data)
    require(bool(np.all((train >= 0) & (train < rows) & np.isin(train, test, invert=True)))
            and bool(np.all((test >= 0) & (test < rows))),
            f"{folder}: split {split} has indices outside data.txt's {rows} rows or shared "
            "between train and test")
    meta = {"dataset": name, "n_splits": n_splits, "origin": str(folder)}
    return _tabular(data[:, features], data[:, target[0]], train, test, meta)


def find_uci(name: str, dir: str = "") -> Path:
    """The ``data/`` folder of UCI set ``name`` in the first search root holding it."""
    for root in locate.search_roots(UCI_DATASET, dir):
        folder = uci_folder(name, root)
        if folder is not None:
            return folder
    err = locate.missing_data(UCI_DATASET, [f"{UCI_FOLDERS[name]}/data/data.txt"], dir)
    raise UserError(f"UCI '{name}' not found: {err}")


def _check_uci(name: str = "boston", dir: str = "") -> None:
    find_uci(name, dir)


@SOURCES.register("uci", check=_check_uci)
def uci(split: int, name: UciName = "boston", dir: str = "") -> RawSplits:
    """A UCI regression set (Hernández-Lobato & Adams 2015 splits, Gal's layout)."""
    return load_uci_folder(find_uci(name, dir), name, split)


# --- scikit-learn sets --------------------------------------------------------------------------


@SOURCES.register("sklearn-diabetes")
def sklearn_diabetes(split: int, test_fraction: float = 0.1) -> RawSplits:
    """scikit-learn's bundled diabetes (442 patients, 10 features): offline; for tests and smoke.

    Features in original units (``scaled=False``); the target is disease progression one year on.
    Read from scikit-learn's bundled files without importing scikit-learn (``sklearn_files``).
    """
    x, y = sklearn_files.diabetes()
    train, test = random_split(len(y), test_fraction, split)
    return _tabular(x, y, train, test, {"dataset": "diabetes", "origin": "sklearn"})


@SOURCES.register("sklearn-california")
def sklearn_california(split: int, test_fraction: float = 0.1, dir: str = "") -> RawSplits:
    """California housing (20,640 block groups, 8 features; target in $100,000) from the local
    scikit-learn cache (``data.dir``, else scikit-learn's data home, else the shared data folder);
    never downloads."""
    from sklearn.datasets import fetch_california_housing, get_data_home

    homes = [Path(dir).expanduser()] if dir else [Path(get_data_home()), locate.SHARED_DATA]
    for home in filter(Path.is_dir, homes):  # scikit-learn would create a missing data home
        try:
            x, y = fetch_california_housing(
                data_home=str(home), download_if_missing=False, return_X_y=True
            )
        except OSError:
            continue
        train, test = random_split(len(y), test_fraction, split)
        return _tabular(x, y, train, test, {"dataset": "california", "origin": str(home)})
    raise UserError(
        f"California housing is not cached under {' or '.join(map(str, homes))}: run "
        "`python -c 'from sklearn.datasets import fetch_california_housing as f; f()'` once "
        "online, or pass --set data.dir=<folder holding cal_housing_py3.pkz>"
    )
