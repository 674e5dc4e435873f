"""Dataset sources: each turns the task's ``[data]`` table into arrays with the dataset's own split.

A source is registered in ``SOURCES`` as a function ``load(**data_options) -> RawSplits``. Sources
never download in tests: HF ``datasets`` (cached) and local native-format folders are the real
paths; offline with neither, a source raises a one-line ``UserError`` saying how to supply data.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from lossbench.data import sklearn_files
from lossbench.errors import require
from lossbench.registry import Registry


@dataclass
class RawSplits:
    """Arrays as the dataset ships them. Images are uint8 [N, C, H, W]; tables float32 [N, D]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    kind: Literal["tabular", "image"]
    meta: dict[str, Any] = field(default_factory=dict)
    """Extras a source provides: ``coarse_train`` superclass labels, ``human_labels``, and
    ``asym_map``, the standard asymmetric flip map for this dataset (used when a task asks for
    ``noise.kind = "asym"`` without naming a map)."""


SOURCES: Registry[RawSplits] = Registry("data source")


CACHE_SIZE = 2
_cache: OrderedDict[str, RawSplits] = OrderedDict()


def load_source(data: Mapping[str, Any]) -> RawSplits:
    """Build a task's ``[data]`` table: ``source`` names the source, other keys are its options.

    The last ``CACHE_SIZE`` sources are kept in-process: a grid runs every seed and loss on the
    same dataset, and decoding CIFAR's pickles costs ~1 s a run. Cached arrays are read-only, and
    each caller gets its own ``meta`` dict, so no run can change another's data.
    """
    key = json.dumps(dict(data), sort_keys=True, default=str)
    raw = _cache.get(key)
    if raw is None:
        options = {k: v for k, v in data.items() if k != "source"}
        raw = SOURCES.get(str(data.get("source", ""))).build(options)
        for array in (raw.x_train, raw.y_train, raw.x_test, raw.y_test, *raw.meta.values()):
            if isinstance(array, np.ndarray):
                array.setflags(write=False)
        _cache[key] = raw
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    _cache.move_to_end(key)
    return replace(raw, meta=dict(raw.meta))


def clear_source_cache() -> None:
    """Forget cached sources (tests that swap the files behind one ``[data]`` table)."""
    _cache.clear()


@SOURCES.register("sklearn-digits")
def sklearn_digits(test_fraction: float = 0.25, split_seed: int = 0) -> RawSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): offline, the smoke workhorse.

    Digits has no official test split, so a stratified one is drawn with ``split_seed`` (fixed
    across run seeds, so every seed and loss is scored on the same test images). Read from
    scikit-learn's bundled file without importing scikit-learn (``sklearn_files``).
    """
    pixels, target = sklearn_files.digits()
    x = (pixels / 16.0).astype(np.float32)
    y = target.astype(np.int64)
    train, test = stratified_split(y, test_fraction, split_seed)
    meta = {"asym_map": "mnist"}
    return RawSplits(x[train], y[train], x[test], y[test], 10, "tabular", meta)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held): ``fraction`` of each class held out, by a generator of its own."""
    require(0.0 < fraction < 1.0, f"split fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        held.append(members[: max(1, round(fraction * len(members)))])
    held_idx = np.sort(np.concatenate(held))
    keep_idx = np.setdiff1d(np.arange(len(y)), held_idx)
    return keep_idx, held_idx
