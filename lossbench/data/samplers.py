"""Batch samplers for the Trainer's ``sampler``: ``(labels, batch_size, generator) -> batches``.

Pair- and triplet-based metric-learning losses need several examples of each class in a batch;
``pk_sampler(m)`` builds batches of P classes x m examples (P = batch_size // m), the "m per
class" sampler of Musgrave et al. (A Metric Learning Reality Check, ECCV 2020).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

from lossbench.engine.train import Sampler


class _ClassQueue:
    """Endless shuffled passes over one class's example ids, drawn ``m`` at a time."""

    def __init__(self, ids: torch.Tensor, generator: torch.Generator) -> None:
        self.ids, self.generator = ids, generator
        self.order = ids[torch.randperm(len(ids), generator=generator)]
        self.pos = 0

    def take(self, m: int) -> torch.Tensor:
        if len(self.ids) < m:  # too few examples: draw with replacement
            return self.ids[torch.randint(len(self.ids), (m,), generator=self.generator)]
        if self.pos + m > len(self.order):  # start a new shuffled pass, no repeats in a batch
            self.order = self.ids[torch.randperm(len(self.ids), generator=self.generator)]
            self.pos = 0
        out = self.order[self.pos : self.pos + m]
        self.pos += m
        return out


def pk_batches(
    labels: torch.Tensor, batch_size: int, generator: torch.Generator, m: int
) -> Iterator[torch.Tensor]:
    """``len(labels) // batch_size`` batches (at least one) of P distinct classes x ``m`` examples.

    P = ``batch_size // m``, capped at the number of classes (then batches are smaller). Classes
    are drawn uniformly without replacement per batch; within a class, examples come from
    shuffled passes over the class, so every example is seen about equally often. A class with
    fewer than ``m`` examples is sampled with replacement.
    """
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    members = torch.split(torch.argsort(inverse, stable=True), counts.tolist())
    queues = [_ClassQueue(ids, generator) for ids in members]
    per_batch = max(1, min(batch_size // m, len(classes)))
    for _ in range(max(1, len(labels) // batch_size)):
        chosen = torch.randperm(len(classes), generator=generator)[:per_batch]
        yield torch.cat([queues[int(c)].take(m) for c in chosen])


def pk_sampler(m: int) -> Sampler:
    """The P x K sampler with ``m`` examples per class, in the Trainer's sampler signature."""
    if m < 2:
        raise ValueError(f"samples per class must be >= 2, got {m}")
    return functools.partial(pk_batches, m=m)
