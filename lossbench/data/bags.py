"""Aggregate responses: training examples grouped into bags whose responses only a bag mean
reveals (Javanmard, Chen, Mirrokni, Badanidiyuru & Fu, "Learning from Aggregate responses:
Instance Level versus Bag Level Loss Functions", ICLR 2024).

A task's ``[bags]`` table: ``size`` (k, examples per bag; 1 = no bags), ``kind`` and ``seed``.

- ``random``: a permutation seeded by ``seed`` cut into consecutive bags of k (the paper's
  setting: bags drawn at random);
- ``clustered``: bags of nearby inputs, by recursive bisection along the principal axis (split a
  set at the median of its first principal component into parts holding whole bags, until a part
  is one bag): a balanced k-d-tree-like clustering, deterministic given the inputs (``seed`` is
  then unused). Similar inputs share a bag, as in bags formed by a feature (LLP-Bench's "feature
  bags"), so less of the response's variation is hidden than with random bags.

When n is not a multiple of k one bag holds the n mod k left over.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from lossbench.errors import require
from lossbench.spec import typed_table

BagKind = Literal["random", "clustered"]
BAG_KINDS: tuple[str, ...] = ("random", "clustered")


@dataclass(frozen=True)
class BagConfig:
    """``[bags]``: examples per bag, how bags are formed, and the seed of random bags."""

    size: int = 1
    kind: str = "random"
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1


def read_bags(spec: Mapping[str, Any]) -> BagConfig:
    """The checked ``[bags]`` table (absent: no bags)."""
    cfg = typed_table(BagConfig, spec.get("bags", {}), "bags")
    require(cfg.size >= 1, f"bags.size must be an integer >= 1, got {cfg.size}")
    require(cfg.kind in BAG_KINDS,
            f"unknown bags.kind '{cfg.kind}'; accepted: {', '.join(BAG_KINDS)}")
    return cfg


def random_bags(n: int, k: int, seed: int) -> np.ndarray:
    """Bag id [n] of each example: a seeded permutation cut into bags of ``k``."""
    ids = np.empty(n, dtype=np.int64)
    ids[np.random.default_rng(seed).permutation(n)] = np.arange(n) // k
    return ids


def clustered_bags(x: np.ndarray, k: int) -> np.ndarray:
    """Bag id [n] of each row of ``x`` [n, d]: recursive principal-axis bisection into parts
    holding whole bags (the left part ``k * floor(bags / 2)`` rows) until each part is one bag;
    ids in the order bags are completed (left to right)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    ids = np.empty(len(x), dtype=np.int64)
    stack = [np.arange(len(x))]
    bag = 0
    while stack:
        idx = stack.pop()
        if len(idx) <= k:
            ids[idx] = bag
            bag += 1
            continue
        centred = x[idx] - x[idx].mean(axis=0)
        axis = np.linalg.eigh(centred.T @ centred)[1][:, -1]  # d x d: far cheaper than an SVD
        order = idx[np.argsort(centred @ axis, kind="stable")]
        left = k * (-(-len(idx) // k) // 2)
        stack += [order[left:], order[:left]]
    return ids


def make_bags(cfg: BagConfig, x: np.ndarray) -> np.ndarray:
    """Bag ids of the rows of ``x`` as ``cfg`` says."""
    if cfg.kind == "clustered":
        return clustered_bags(x, cfg.size)
    return random_bags(len(x), cfg.size, cfg.seed)


def bag_responses(y: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each example's bag mean response [n]: all that the learner sees of ``y``."""
    sums = np.bincount(ids, weights=y)
    return (sums / np.bincount(ids))[ids]


def hidden_share(y: np.ndarray, y_bag: np.ndarray) -> float:
    """Share of the responses' variance the bags hide: ``1 - var(bag means) / var(y)``, per
    example (0 without bags; about ``1 - 1/k`` for random bags)."""
    var = float(np.var(y))
    return 1.0 - float(np.var(y_bag)) / var if var > 0 else 0.0


def bag_batches(labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                bags: torch.Tensor) -> Iterator[torch.Tensor]:
    """Whole bags per batch (a bag-level loss needs every member of a bag in its batch):
    ``max(1, batch_size // k)`` bags, in a shuffled bag order; a batch of one example is
    dropped (BatchNorm needs two), as in ``engine.train.batches``."""
    num_bags = int(bags.max()) + 1
    members = torch.split(torch.argsort(bags, stable=True), torch.bincount(bags).tolist())
    per_batch = max(1, batch_size // max(len(m) for m in members))
    order = torch.randperm(num_bags, generator=generator)
    for start in range(0, num_bags, per_batch):
        idx = torch.cat([members[int(b)] for b in order[start : start + per_batch]])
        if len(idx) > 1:
            yield idx


def bag_sampler(bags: torch.Tensor) -> functools.partial[Iterator[torch.Tensor]]:
    """``bag_batches`` over these bag ids, in the Trainer's sampler signature."""
    return functools.partial(bag_batches, bags=bags.cpu())


def bag_steps(bags: torch.Tensor, batch_size: int) -> int:
    """Batches ``bag_batches`` yields per epoch (at most; one of a single example is dropped)."""
    num_bags = int(bags.max()) + 1
    per_batch = max(1, batch_size // int(torch.bincount(bags).max()))
    return max(1, -(-num_bags // per_batch))
