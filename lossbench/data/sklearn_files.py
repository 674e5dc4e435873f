"""scikit-learn's bundled data files, read without importing scikit-learn.

``import sklearn.datasets`` costs 1.5-3.4 s (it pulls scipy.stats, the array-API shims and
more) and every process that runs a digits or diabetes task paid it just to read a small gzipped
csv that ships inside the package. ``importlib.util.find_spec("sklearn")`` locates the package
without executing it; the files are then parsed as ``load_digits`` / ``load_diabetes`` parse
them (``np.loadtxt``), so the arrays are the same. Where the file is not where this scikit-learn
keeps it (another layout), callers fall back to the scikit-learn loader.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np


def bundled_file(name: str) -> Path | None:
    """``sklearn/datasets/data/<name>`` of the installed scikit-learn, or None when scikit-learn
    is not installed or keeps its data elsewhere."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / name
        if path.is_file():
            return path
    return None


def read_gzip_csv(path: Path, delimiter: str | None = None) -> np.ndarray:
    """A gzipped csv as ``np.loadtxt`` reads it (float64), as scikit-learn's loaders do."""
    with gzip.open(path, mode="rt", encoding="utf-8") as fh:
        return np.loadtxt(fh, delimiter=delimiter)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits(return_X_y=True)``: pixels [1797, 64] float64 in 0..16, labels int."""
    path = bundled_file("digits.csv.gz")
    if path is None:
        from sklearn.datasets import load_digits

        return load_digits(return_X_y=True)
    data = read_gzip_csv(path, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)


def diabetes() -> tuple[np.ndarray, np.ndarray]:
    """``load_diabetes(return_X_y=True, scaled=False)``: features [442, 10] in original units,
    target [442] (disease progression one year on)."""
    x_path = bundled_file("diabetes_data_raw.csv.gz")
    y_path = bundled_file("diabetes_target.csv.gz")
    if x_path is None or y_path is None:
        from sklearn.datasets import load_diabetes

        return load_diabetes(return_X_y=True, scaled=False)
    return read_gzip_csv(x_path), read_gzip_csv(y_path)
