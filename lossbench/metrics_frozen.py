"""Scores of frozen embeddings against labels: weighted kNN accuracy and a linear probe.

The standard evaluations of self-supervised representations: a classifier is fitted on the
labelled training embeddings (the network stays frozen) and scored on the test embeddings.
Both take L2-normalised embeddings (retrieval scores cosine similarity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def knn_accuracy(ref: torch.Tensor, ref_y: torch.Tensor, query: torch.Tensor,
                 query_y: torch.Tensor, k: int = 200, temperature: float = 0.07,
                 block: int = 1024) -> float:
    """Percent of ``query`` rows whose weighted kNN vote among ``ref`` is their label.

    Wu, Xiong, Yu, Lin, Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination, CVPR 2018 (Sec. 3.4, Eq. 9 with k = 200, tau = 0.07 in their experiments):
    the ``k`` most cosine-similar reference rows vote for their class with weight
    ``exp(s / temperature)``; the class with the largest total wins (ties: the lowest class).
    Queries go in blocks of ``block`` rows, so memory is ``block x len(ref)`` scores.
    """
    ref_z, query_z = F.normalize(ref.float(), dim=1), F.normalize(query.float(), dim=1)
    classes, ref_cls = torch.unique(ref_y, return_inverse=True)
    k = min(k, len(ref_z))
    hits = 0
    for start in range(0, len(query_z), block):
        scores = query_z[start : start + block] @ ref_z.T
        top = scores.topk(k, dim=1)
        votes = torch.zeros(len(scores), len(classes), device=scores.device)
        votes.scatter_add_(1, ref_cls[top.indices], torch.exp(top.values / temperature))
        pred = classes[votes.argmax(dim=1)]
        hits += int((pred == query_y[start : start + block]).sum())
    return 100.0 * hits / max(len(query_z), 1)


@dataclass(frozen=True)
class ProbeResult:
    """The linear probe's test and validation accuracy (percent) at the chosen L2 strength."""

    test_acc: float
    val_acc: float
    l2: float


def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                 y_val: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 l2: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2), iters: int = 100
                 ) -> ProbeResult:
    """Multinomial logistic regression on frozen embeddings, its L2 strength picked on validation.

    Features: each embedding L2-normalised, then standardised per dimension with the training
    rows' mean and standard deviation. Model: ``softmax(x W + b)`` over the classes of
    ``y_train``. Objective: mean cross-entropy on the labelled training rows plus
    ``l2 / 2 * |W|^2`` (the bias is not penalised). Solver: full-batch L-BFGS
    (``torch.optim.LBFGS``, strong-Wolfe line search, history 10, at most ``iters`` iterations
    per strength, float32), from zero weights for the strongest ``l2`` and warm-started from the
    previous solution for each weaker one. Choice: the strength with the highest validation
    accuracy (ties: the stronger); the test rows are scored once, with that strength's weights,
    and never influence a choice.
    """
    mean, std = _feature_stats(x_train)

    def features(x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=1) - mean) / std

    classes, target = torch.unique(y_train, return_inverse=True)
    x_tr, x_va, x_te = features(x_train), features(x_val), features(x_test)
    weight = torch.zeros(x_tr.shape[1], len(classes), device=x_tr.device, requires_grad=True)
    bias = torch.zeros(len(classes), device=x_tr.device, requires_grad=True)
    best: tuple[float, float, torch.Tensor, torch.Tensor] | None = None
    for strength in sorted(l2, reverse=True):
        _fit(x_tr, target, weight, bias, strength, iters)
        val = _accuracy(x_va @ weight.detach() + bias.detach(), y_val, classes)
        if best is None or val > best[0]:
            best = (val, strength, weight.detach().clone(), bias.detach().clone())
    assert best is not None
    val, strength, w, b = best
    return ProbeResult(_accuracy(x_te @ w + b, y_test, classes), val, strength)


def _feature_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = F.normalize(x.float(), dim=1)
    return z.mean(dim=0), z.std(dim=0).clamp_min(1e-6)


def _fit(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
         l2: float, iters: int) -> None:
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iters, history_size=10,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, target) + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)


def _accuracy(logits: torch.Tensor, y: torch.Tensor, classes: torch.Tensor) -> float:
    """Percent of rows whose arg-max class is their label (labels outside ``classes`` miss)."""
    if len(y) == 0:
        return float("nan")
    return 100.0 * float((classes[logits.argmax(dim=1)] == y).float().mean())
