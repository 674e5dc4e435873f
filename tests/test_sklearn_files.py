"""scikit-learn's bundled digits and diabetes files read without importing scikit-learn: the
same arrays as its loaders, and a fall-back to them where the files are not found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lossbench.data import sklearn_files


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_digits_equal_load_digits() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = sklearn_files.digits()
    _same(x, bunch.data)
    _same(y, bunch.target)


def test_diabetes_equals_load_diabetes_unscaled() -> None:
    from sklearn.datasets import load_diabetes

    x, y = sklearn_files.diabetes()
    expected_x, expected_y = load_diabetes(return_X_y=True, scaled=False)
    _same(x, expected_x)
    _same(y, expected_y)


def test_without_the_files_the_sklearn_loaders_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import load_diabetes, load_digits

    monkeypatch.setattr(sklearn_files, "bundled_file", lambda name: None)
    _same(sklearn_files.digits()[0], load_digits().data)
    _same(sklearn_files.diabetes()[1], load_diabetes(return_X_y=True, scaled=False)[1])


def test_reading_the_files_does_not_import_sklearn() -> None:
    """In a fresh interpreter (this one may have imported scikit-learn already); the module is
    loaded from its file, so only numpy comes with it."""
    path = Path(sklearn_files.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('sklearn_files', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "assert mod.bundled_file('digits.csv.gz') is not None\n"
        "mod.digits(); mod.diabetes()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
