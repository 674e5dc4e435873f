"""Few-shot test scores beyond the per-epoch prototype curves: every inference method of
``eval.inference`` (``lossbench.fewshot_inference``) on every query distribution, the balanced
test episodes and the imbalanced ones of each ``eval.query_dirichlet`` concentration, all fixed
by ``eval.episode_seed`` (the same for every loss and seed).

They are scored once, after training, on the embeddings of the last epoch and of each setting's
best-validation epoch (the epoch the nearest-prototype rule selects on balanced validation
episodes, the family's selection for every method): transductive inference costs far more than
the prototype rule, so there are no per-epoch curves of it. Metric names extend the setting's
tag: ``test_acc_<W>w<K>s[_dir<alpha>][_<method>]`` (and ``test_ci95_``, ``@best_val``), the
method part absent for the plain ``prototype`` rule, so ``test_acc_5w1s`` keeps its meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from lossbench.data.episodes import (
    EvalEpisodes,
    Predictor,
    draw_episodes,
    episode_accuracy,
    mean_ci95,
)
from lossbench.fewshot_inference import build_method, method_label

PROTOTYPE = "prototype"


def query_tag(alpha: float | None) -> str:
    """Metric infix of a query distribution: empty when balanced, else e.g. ``_dir2``."""
    return "" if alpha is None else f"_dir{alpha:g}"


def method_suffix(label: str) -> str:
    """Metric suffix of a method: empty for the plain prototype rule, else ``_<label>``."""
    return "" if label == PROTOTYPE else f"_{label}"


def method_labels(specs: tuple[str, ...]) -> list[str]:
    """The canonical labels of ``eval.inference``, the prototype rule first (always scored)."""
    labels = [PROTOTYPE] + [method_label(s) for s in specs]
    return list(dict.fromkeys(labels))


@dataclass
class Scoring:
    """What is scored after training: methods by label, and per setting (``3w1s``) the extra
    test episodes by query tag (``_dir2``); the balanced ones are the family's test episodes."""

    methods: dict[str, Predictor]
    imbalanced: dict[str, dict[str, EvalEpisodes]]

    @property
    def active(self) -> bool:
        """Anything beyond the per-epoch prototype curves to score?"""
        return len(self.methods) > 1 or any(self.imbalanced.values())


def build_scoring(specs: tuple[str, ...], alphas: tuple[float, ...], y_novel: np.ndarray,
                  settings: Mapping[str, tuple[int, int]], queries: int, episodes: int,
                  seed: int) -> Scoring:
    """The methods of ``eval.inference`` and the Dirichlet test episodes of every setting."""
    methods = {label: build_method(label) for label in method_labels(specs)}
    imbalanced = {
        key: {query_tag(a): draw_episodes(y_novel, w, s, queries, episodes, seed, "test", a)
              for a in alphas}
        for key, (w, s) in settings.items()}
    return Scoring(methods, imbalanced)


@dataclass
class Snapshots:
    """Novel-class embeddings at the last epoch and at each setting's best validation epoch so
    far (the first of equal bests, as ``np.argmax`` picks it)."""

    last: torch.Tensor | None = None
    best: dict[str, torch.Tensor] = field(default_factory=dict)
    best_val: dict[str, float] = field(default_factory=dict)

    def update(self, curves: Mapping[str, list[float]], emb_novel: torch.Tensor,
               settings: list[str]) -> None:
        self.last = emb_novel
        for key in settings:
            acc = curves[f"val_acc_{key}"][-1]
            if key not in self.best or acc > self.best_val[key]:
                self.best[key], self.best_val[key] = emb_novel, acc


def scored_metrics(scoring: Scoring, snaps: Snapshots, test_eps: Mapping[str, EvalEpisodes]
                   ) -> dict[str, float]:
    """Accuracy and 95% CI of every (setting, query distribution, method) but the balanced
    prototype rule (the curves have it), at the last and the best-validation epoch."""
    assert snaps.last is not None
    metrics: dict[str, float] = {}
    for key, balanced in test_eps.items():
        episode_sets = {"": balanced} | scoring.imbalanced.get(key, {})
        for tag, eps in episode_sets.items():
            for label, predict in scoring.methods.items():
                if tag == "" and label == PROTOTYPE:
                    continue
                name = f"{key}{tag}{method_suffix(label)}"
                last = mean_ci95(episode_accuracy(snaps.last, eps, predict=predict))
                best_emb = snaps.best[key]
                best = last if best_emb is snaps.last else mean_ci95(
                    episode_accuracy(best_emb, eps, predict=predict))
                metrics[f"test_acc_{name}"], metrics[f"test_ci95_{name}"] = last
                metrics[f"test_acc_{name}@best_val"] = best[0]
                metrics[f"test_ci95_{name}@best_val"] = best[1]
    return metrics


def scoring_info(scoring: Scoring) -> dict[str, object]:
    """Record facts of the extra scoring (none when there is none: records stay as they were)."""
    if not scoring.active:
        return {}
    digests = {f"{key}{tag}": eps.digest for key, sets in scoring.imbalanced.items()
               for tag, eps in sets.items()}
    return {"inference": list(scoring.methods), "imbalanced_test_episodes": digests}
