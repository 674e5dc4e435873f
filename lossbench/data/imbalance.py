"""Class-imbalanced tasks: long-tailed subsampling, one-vs-rest binary tasks, breast cancer.

A task's ``[imbalance]`` table names a *profile* (``exp``, ``step``, ``positive-rate``) that turns
the per-class counts available in a pool into the counts to keep; the pool is subsampled to them
by a generator of its own (``imbalance.seed``, default 0, salted), so the imbalanced training set
is the same for every run seed and loss (runs differ in init and data order; packed runs share
inputs). The family applies the profile to the training part *and* to the validation part of the
fixed train/validation split: validation follows the training distribution, as held-out data
would in practice; the test set is never subsampled (balanced for the long-tailed CIFAR/digits
tasks). Every class keeps at least one example in each part, so per-class metrics are defined.

A ``[binary] positive = c`` table first relabels a multi-class source one-vs-rest (class ``c`` ->
1, every other class -> 0); ``positive-rate`` then keeps every negative and as many positives as
make up ``rate`` of the part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lossbench.data.sources import SOURCES, RawSplits, stratified_split
from lossbench.errors import require
from lossbench.registry import Registry

IMBALANCE_SEED_SALT = 0x1B1A
"""Mixed into ``imbalance.seed`` so the subsampling stream differs from every other generator."""

PROFILES: Registry[np.ndarray] = Registry("imbalance profile")
"""Profiles: ``(available per-class counts, **params) -> counts to keep`` (int64 [K])."""


def _clip(counts: np.ndarray, available: np.ndarray) -> np.ndarray:
    """At least one example per class, never more than the pool holds."""
    return np.minimum(np.maximum(counts.astype(np.int64), 1), available).astype(np.int64)


@PROFILES.register("exp")
def exp_profile(available: np.ndarray, ratio: float = 100.0) -> np.ndarray:
    """Exponential long tail n_c = n_max * ratio^(-c/(K-1)), class 0 the head (Cao et al. 2019).

    Cao, Wei, Gaidon, Arechiga, Ma, Learning Imbalanced Datasets with Label-Distribution-Aware
    Margin Loss, NeurIPS 2019, Sec. 4 (CIFAR-10/100-LT, ratio = n_max / n_min in {10, 100}).
    Counts are truncated to integers as in the official code; ``n_max`` is the smallest class
    of the pool, so every class can be filled.
    """
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    k = len(available)
    if k < 2:
        raise ValueError(f"a long-tailed profile needs >= 2 classes, got {k}")
    n_max = int(available.min())
    counts = np.floor(n_max * float(ratio) ** (-np.arange(k) / (k - 1)) + 1e-9)
    return _clip(counts, available)


@PROFILES.register("step")
def step_profile(available: np.ndarray, ratio: float = 100.0, minority: float = 0.5
                 ) -> np.ndarray:
    """Step imbalance: the last ``minority`` fraction of classes keep n_max / ratio examples.

    Buda, Maki, Mazurowski, Neural Networks 2018; used as the second profile by Cao et al. 2019.
    """
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    if not 0.0 < minority < 1.0:
        raise ValueError(f"minority must be in (0, 1), got {minority}")
    k = len(available)
    n_max = int(available.min())
    counts = np.full(k, float(n_max))
    counts[k - round(minority * k):] = np.floor(n_max / float(ratio) + 1e-9)
    return _clip(counts, available)


@PROFILES.register("positive-rate")
def positive_rate_profile(available: np.ndarray, rate: float = 0.05) -> np.ndarray:
    """Binary: keep every negative (class 0) and positives (class 1) at ``rate`` of the part.

    ``n_1 = round(rate / (1 - rate) * n_0)``, capped at the positives available.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    if len(available) != 2:
        raise ValueError(f"positive-rate needs a binary task (add [binary] positive = c), "
                         f"got {len(available)} classes")
    counts = np.array([available[0], round(rate / (1.0 - rate) * int(available[0]))])
    return _clip(counts, available)


def subsample(y: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``y`` keeping ``counts[c]`` examples of each class ``c``, drawn
    without replacement class by class in class order."""
    kept = [rng.permutation(np.flatnonzero(y == c))[: int(n)] for c, n in enumerate(counts)]
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def class_counts(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)


@dataclass
class ImbalanceReport:
    """What the subsampling did, stored with every run (plain types, JSON-ready)."""

    profile: str
    params: dict[str, Any]
    seed: int
    train_counts: list[int]
    val_counts: list[int]
    realised_ratio: float
    """max / min of the training counts (clean labels)."""
    reverse: bool = False
    """The profile read from the last class (``imbalance.reverse``)."""


def split_table(table: Mapping[str, Any]) -> tuple[str, int, bool, dict[str, Any]]:
    """``[imbalance]`` -> (profile name, subsampling seed, reverse, profile parameters).

    ``reverse = true`` applies the profile to the classes in reverse order (the last class the
    head): which classes are frequent is then not confounded with which classes they are."""
    params = dict(table)
    reverse = params.pop("reverse", False)
    require(isinstance(reverse, bool), f"imbalance.reverse must be true or false, got {reverse!r}")
    return str(params.pop("profile", "")), int(params.pop("seed", 0)), reverse, params


def profile_counts(entry: Any, params: Mapping[str, Any], available: np.ndarray,
                   reverse: bool) -> np.ndarray:
    """The counts to keep per class, the profile read from the last class when ``reverse``."""
    if not reverse:
        return entry.build(params, available=available)
    return entry.build(params, available=available[::-1].copy())[::-1].copy()


def check_imbalance(table: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve and range-check an ``[imbalance]`` table before any data is loaded."""
    name, _, _, params = split_table(table)
    entry = PROFILES.get(name)
    resolved = entry.resolve(params)
    entry.build(resolved, available=np.array([100, 100]))  # ranges raise UserError here
    return resolved


def apply_imbalance(
    y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, num_classes: int,
    table: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, ImbalanceReport]:
    """Subsample the training and validation positions of ``y`` (clean labels) by the profile.

    Each part gets the profile applied to its own available counts, with its own child stream of
    the imbalance generator, so the validation draw does not depend on the training one.
    """
    name, seed, reverse, params = split_table(table)
    entry = PROFILES.get(name)
    resolved = entry.resolve(params)
    parts = []
    for stream, idx in enumerate((train_idx, val_idx)):
        labels = y[idx]
        counts = profile_counts(entry, resolved, class_counts(labels, num_classes), reverse)
        rng = np.random.default_rng([seed, IMBALANCE_SEED_SALT, stream])
        parts.append(idx[subsample(labels, counts, rng)])
    train_counts = class_counts(y[parts[0]], num_classes)
    report = ImbalanceReport(
        profile=name, params=resolved, seed=seed,
        train_counts=train_counts.tolist(),
        val_counts=class_counts(y[parts[1]], num_classes).tolist(),
        realised_ratio=float(train_counts.max() / max(1, train_counts.min())),
        reverse=reverse,
    )
    return parts[0], parts[1], report


def one_vs_rest(raw: RawSplits, positive: int) -> RawSplits:
    """Relabel a multi-class source as a binary task: ``positive`` -> 1, every other class -> 0.

    The source's extras (flip maps, human labels, superclasses) describe the K-class labels and
    are dropped.
    """
    require(0 <= positive < raw.num_classes,
            f"binary.positive={positive} is not a class of this source; accepted: 0.."
            f"{raw.num_classes - 1}")
    return RawSplits(
        raw.x_train, (raw.y_train == positive).astype(np.int64),
        raw.x_test, (raw.y_test == positive).astype(np.int64),
        2, raw.kind, {"one_vs_rest": {"positive": positive, "source_classes": raw.num_classes}},
    )


@SOURCES.register("sklearn-breast-cancer")
def sklearn_breast_cancer(test_fraction: float = 0.25, split_seed: int = 0) -> RawSplits:
    """scikit-learn's bundled Wisconsin breast-cancer set (569 tumours, 30 features), offline.

    Malignant (212) is the positive class 1, benign (357) class 0 -- scikit-learn codes them the
    other way round. The stratified test split is drawn with ``split_seed`` (fixed across run
    seeds); features are standardised with the training part's mean and std.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = bunch.data.astype(np.float64)
    y = (bunch.target == 0).astype(np.int64)
    train, test = stratified_split(y, test_fraction, split_seed)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    return RawSplits(x[train], y[train], x[test], y[test], 2, "tabular")
