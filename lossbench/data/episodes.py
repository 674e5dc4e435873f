"""N-way K-shot episodes: training batches, fixed evaluation episodes, and their scoring.

An episode has W classes, K support and Q query examples of each. Training episodes are drawn
from the run's generator (``episode_sampler``, in the Trainer's sampler signature), laid out as
the ``fewshot`` loss contract expects: support rows first (class by class), then query rows.

Evaluation episodes are drawn once, by a numpy generator of their own seeded only by the task's
``eval.episode_seed`` and the setting (split, W, K, Q): every loss, run seed and budget that
shares these is scored on the very same episodes, and adding a setting does not move the others.
Accuracy is the nearest-prototype rule of Prototypical Networks (Snell et al., NeurIPS 2017):
the class whose mean support embedding is nearest in squared Euclidean distance.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lossbench.engine.train import Sampler
from lossbench.errors import require

SPLIT_STREAMS = {"val": 1, "test": 2}
"""Seed-sequence ids of the evaluation splits (part of every evaluation episode's seed)."""


def _members(labels: torch.Tensor) -> list[torch.Tensor]:
    """Row ids of each class, in the order of ``torch.unique``."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return list(torch.split(torch.argsort(inverse, stable=True), counts.tolist()))


def episode_batches(labels: torch.Tensor, batch_size: int, generator: torch.Generator, *,
                    ways: int, shots: int, queries: int, episodes: int
                    ) -> Iterator[torch.Tensor]:
    """``episodes`` index batches: W random classes, K support then Q query rows of each.

    Within a class the K + Q examples are distinct (a class with fewer examples is sampled with
    replacement). ``batch_size`` is ignored: the episode shape sets the batch.
    """
    members = _members(labels)
    require(ways <= len(members), f"fewshot.train_ways={ways} exceeds the {len(members)} base "
            "classes")
    per_class = shots + queries
    for _ in range(episodes):
        chosen = torch.randperm(len(members), generator=generator)[:ways]
        picks = []
        for c in chosen.tolist():
            ids = members[c]
            if len(ids) >= per_class:
                picks.append(ids[torch.randperm(len(ids), generator=generator)[:per_class]])
            else:
                picks.append(ids[torch.randint(len(ids), (per_class,), generator=generator)])
        rows = torch.stack(picks)
        yield torch.cat([rows[:, :shots].reshape(-1), rows[:, shots:].reshape(-1)])


def episode_sampler(ways: int, shots: int, queries: int, episodes: int) -> Sampler:
    """``episode_batches`` with a fixed episode shape, as a Trainer sampler."""
    require(ways >= 2 and shots >= 1 and queries >= 1 and episodes >= 1,
            f"training episodes need ways >= 2, shots >= 1, queries >= 1, episodes >= 1; got "
            f"{ways}, {shots}, {queries}, {episodes}")
    return functools.partial(episode_batches, ways=ways, shots=shots, queries=queries,
                             episodes=episodes)


@dataclass(frozen=True)
class EvalEpisodes:
    """Fixed evaluation episodes: row ids into one split, support [E, W, K] and query [E, W, Q]."""

    ways: int
    shots: int
    queries: int
    support: np.ndarray
    query: np.ndarray

    @property
    def digest(self) -> str:
        """A short hash of the episodes (equal digests = the same episodes)."""
        h = hashlib.sha256(np.ascontiguousarray(self.support, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.query, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def draw_episodes(labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
                  seed: int, split: str) -> EvalEpisodes:
    """``episodes`` W-way K-shot Q-query episodes over the classes of ``labels``.

    Classes are drawn without replacement per episode, and the K + Q examples of a class without
    replacement, so no query is also a support example.
    """
    classes = np.unique(labels)
    require(ways <= len(classes), f"{ways}-way episodes need {ways} {split} classes; there are "
            f"{len(classes)} (lower eval.ways)")
    members = [np.flatnonzero(labels == c) for c in classes]
    smallest = min(len(m) for m in members)
    require(shots + queries <= smallest, f"{split} episodes need {shots} + {queries} examples of "
            f"each class; the smallest {split} class has {smallest} (lower eval.queries)")
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], ways, shots, queries])
    rows = np.empty((episodes, ways, shots + queries), dtype=np.int64)
    for e in range(episodes):
        for w, c in enumerate(rng.choice(len(classes), ways, replace=False)):
            rows[e, w] = rng.choice(members[c], shots + queries, replace=False)
    return EvalEpisodes(ways, shots, queries, rows[:, :, :shots], rows[:, :, shots:])


def episode_accuracy(emb: torch.Tensor, episodes: EvalEpisodes, chunk: int = 256) -> np.ndarray:
    """Nearest-prototype accuracy (percent) of each episode, from embeddings of the split [N, D]."""
    out = []
    truth = torch.arange(episodes.ways, device=emb.device).repeat_interleave(episodes.queries)
    for start in range(0, len(episodes.support), chunk):
        support = torch.as_tensor(episodes.support[start : start + chunk], device=emb.device)
        query = torch.as_tensor(episodes.query[start : start + chunk], device=emb.device)
        prototypes = emb[support].mean(dim=2)
        q = emb[query.flatten(1)]
        pred = torch.cdist(q, prototypes).argmin(dim=2)
        out.append((pred == truth).float().mean(dim=1) * 100.0)
    return torch.cat(out).cpu().numpy()


def mean_ci95(acc: np.ndarray) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * std / sqrt(E)`` (sample std, ddof = 1)."""
    require(len(acc) >= 2, "a confidence interval needs at least 2 episodes")
    return float(np.mean(acc)), float(1.96 * np.std(acc, ddof=1) / np.sqrt(len(acc)))
