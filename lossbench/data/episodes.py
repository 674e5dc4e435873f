"""N-way K-shot episodes: training batches, fixed evaluation episodes, and their scoring.

An episode has W classes, K support and Q query examples of each. Training episodes are drawn
from the run's generator (``episode_sampler``, in the Trainer's sampler signature), laid out as
the ``fewshot`` loss contract expects: support rows first (class by class), then query rows.

Evaluation episodes are drawn once, by a numpy generator of their own seeded only by the task's
``eval.episode_seed`` and the setting (split, W, K, Q): every loss, run seed and budget that
shares these is scored on the very same episodes, and adding a setting does not move the others.
Their query sets are balanced (Q per class) unless ``query_alpha`` is given: then the W * Q
queries are split between the classes by proportions drawn from a symmetric Dirichlet(alpha), the
"realistic" imbalanced episodes of Veilleux et al. (Realistic Evaluation of Transductive Few-Shot
Learning, NeurIPS 2021), which draw on a seed stream of their own and enter the digest.
Accuracy is by default the nearest-prototype rule of Prototypical Networks (Snell et al., NeurIPS
2017): the class whose mean support embedding is nearest in squared Euclidean distance; any
other rule (``lossbench.fewshot_inference``) scores the same episodes through ``predict``.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lossbench.engine.train import Sampler
from lossbench.errors import require

SPLIT_STREAMS = {"val": 1, "test": 2}
"""Seed-sequence ids of the evaluation splits (part of every evaluation episode's seed)."""

DIRICHLET_STREAM = 1
"""Seed-sequence id that sets imbalanced (Dirichlet) episodes apart from balanced ones."""

DIRICHLET_TRIES = 1000
"""Proportion draws allowed per episode before a class too small for its share is an error."""

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(support [E, W, K, D] class by class, queries [E, T, D]) -> predicted classes [E, T]."""


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
    """Fixed evaluation episodes: row ids into one split, support [E, W, K] (class by class),
    query [E, T] and its episode-local labels [E, T] (0..W-1, class by class). ``queries`` is the
    number per class when balanced (T = W * queries), the mean number when ``query_alpha`` is set
    (the Dirichlet concentration of imbalanced query sets; None: balanced)."""

    ways: int
    shots: int
    queries: int
    support: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    query_alpha: float | None = None

    @property
    def digest(self) -> str:
        """A short hash of the episodes (equal digests = the same episodes). Balanced episodes
        hash their row ids only (the digests of existing runs stay valid); imbalanced ones add
        the concentration and the labels."""
        h = hashlib.sha256(np.ascontiguousarray(self.support, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.query, dtype=np.int64).tobytes())
        if self.query_alpha is not None:
            h.update(f"dirichlet:{self.query_alpha!r}".encode())
            h.update(np.ascontiguousarray(self.query_labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def dirichlet_counts(proportions: np.ndarray, total: int) -> np.ndarray:
    """Per-class query counts summing to ``total`` from class proportions (the rounding of
    Veilleux et al.'s sampler, ``convert_prob_to_samples``): round ``p * total``; while the sum
    is too large (small), floor (ceil) the entry whose fractional part is nearest 0.5, the first
    such on ties."""
    counts = np.asarray(proportions, dtype=np.float64) * total
    excess = int(np.sum(np.round(counts))) - total
    while excess != 0:
        fractions = np.abs(np.modf(counts)[0] - 0.5)
        i = int(np.argmin(fractions))  # first of the nearest-to-0.5 fractions
        counts[i] = math.floor(counts[i]) if excess > 0 else math.ceil(counts[i])
        excess = int(np.sum(np.round(counts))) - total
    return np.round(counts).astype(np.int64)


def draw_episodes(labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
                  seed: int, split: str, query_alpha: float | None = None) -> EvalEpisodes:
    """``episodes`` W-way K-shot episodes over the classes of ``labels``, with W * Q queries.

    Classes are drawn without replacement per episode, and the support and query examples of a
    class without replacement, so no query is also a support example. Balanced (``query_alpha``
    None): Q queries per class. Imbalanced: the class proportions are drawn from Dirichlet(alpha,
    ..., alpha) and turned into counts by ``dirichlet_counts`` (a class may get none); a draw
    that asks a class for more queries than it has left after its support is drawn again.
    """
    classes = np.unique(labels)
    require(ways <= len(classes), f"{ways}-way episodes need {ways} {split} classes; there are "
            f"{len(classes)} (lower eval.ways)")
    members = [np.flatnonzero(labels == c) for c in classes]
    smallest = min(len(m) for m in members)
    require(shots + queries <= smallest, f"{split} episodes need {shots} + {queries} examples of "
            f"each class; the smallest {split} class has {smallest} (lower eval.queries)")
    if query_alpha is not None:
        require(query_alpha > 0, f"a Dirichlet concentration must be > 0, got {query_alpha}")
        return _draw_imbalanced(members, ways, shots, queries, episodes, seed, split, query_alpha)
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], ways, shots, queries])
    rows = np.empty((episodes, ways, shots + queries), dtype=np.int64)
    for e in range(episodes):
        for w, c in enumerate(rng.choice(len(classes), ways, replace=False)):
            rows[e, w] = rng.choice(members[c], shots + queries, replace=False)
    query_labels = np.tile(np.repeat(np.arange(ways), queries), (episodes, 1))
    return EvalEpisodes(ways, shots, queries, rows[:, :, :shots],
                        rows[:, :, shots:].reshape(episodes, -1), query_labels)


def _draw_imbalanced(members: list[np.ndarray], ways: int, shots: int, queries: int,
                     episodes: int, seed: int, split: str, alpha: float) -> EvalEpisodes:
    """``draw_episodes`` with Dirichlet query proportions, on a seed stream of their own."""
    alpha_bits = int(np.float64(alpha).view(np.uint64))
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], ways, shots, queries,
                                 DIRICHLET_STREAM, alpha_bits])
    total = ways * queries
    support = np.empty((episodes, ways, shots), dtype=np.int64)
    query = np.empty((episodes, total), dtype=np.int64)
    query_labels = np.empty((episodes, total), dtype=np.int64)
    for e in range(episodes):
        chosen = rng.choice(len(members), ways, replace=False)
        room = np.array([len(members[c]) - shots for c in chosen])
        for _ in range(DIRICHLET_TRIES):
            counts = dirichlet_counts(rng.dirichlet(np.full(ways, alpha)), total)
            if np.all(counts <= room):
                break
        else:
            require(False, f"{split} episodes: {DIRICHLET_TRIES} Dirichlet({alpha}) draws all "
                    f"asked a class for more than its {int(room.min())} examples left after the "
                    f"support (lower eval.queries or raise the concentration)")
        start = 0
        for w, (c, n) in enumerate(zip(chosen, counts, strict=True)):
            rows = rng.choice(members[c], shots + n, replace=False)
            support[e, w] = rows[:shots]
            query[e, start : start + n] = rows[shots:]
            query_labels[e, start : start + n] = w
            start += n
    return EvalEpisodes(ways, shots, queries, support, query, query_labels, alpha)


def nearest_prototype(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The nearest-prototype rule (Snell et al., Eq. 1-2): the class [E, T] whose mean support
    embedding (support [E, W, K, D]) is nearest to each query [E, T, D]."""
    return torch.cdist(query, support.mean(dim=2)).argmin(dim=2)


def episode_accuracy(emb: torch.Tensor, episodes: EvalEpisodes, chunk: int = 256,
                     predict: Predictor = nearest_prototype) -> np.ndarray:
    """Accuracy (percent) of each episode by ``predict`` (nearest prototype unless given), from
    embeddings of the split [N, D], ``chunk`` episodes at a time."""
    out = []
    for start in range(0, len(episodes.support), chunk):
        stop = start + chunk
        support = torch.as_tensor(episodes.support[start:stop], device=emb.device)
        query = torch.as_tensor(episodes.query[start:stop], device=emb.device)
        truth = torch.as_tensor(episodes.query_labels[start:stop], device=emb.device)
        pred = predict(emb[support], emb[query])
        out.append((pred == truth).float().mean(dim=1) * 100.0)
    return torch.cat(out).cpu().numpy()


def mean_ci95(acc: np.ndarray) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * std / sqrt(E)`` (sample std, ddof = 1)."""
    require(len(acc) >= 2, "a confidence interval needs at least 2 episodes")
    return float(np.mean(acc)), float(1.96 * np.std(acc, ddof=1) / np.sqrt(len(acc)))
