"""Arrays a run keeps beside its record: ``records/<run-key>.npz``, written atomically.

A family returns them in ``RunOutput.arrays`` (the regression family does for quantile losses:
the validation and test predictions ``lossbench aggregate`` combines); the record travels to the
driver with them under ``"arrays"``, and ``Store.write`` moves them to this file, so the JSON
record stays small and the arrays stay exact (float32/float64, compressed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lossbench.engine.atomic import atomic_write

SUFFIX = ".npz"


def write_arrays(path: Path, arrays: Mapping[str, np.ndarray], mode: int) -> None:
    """Temp file in the same folder, fsync, rename over ``path``: readers never see half a file.
    ``mode`` is the permission bits the file gets (the records' own)."""
    atomic_write(path, lambda fh: np.savez_compressed(
        fh, **{k: np.asarray(v) for k, v in arrays.items()}), mode)


def read_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays saved at ``path``; None when there are none or they cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError):
        return None
