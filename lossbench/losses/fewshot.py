"""Few-shot losses defined on the support / query structure of an episode (``consumes="fewshot"``).

Contract of the ``fewshot`` kind (the few-shot family is its caller):

* ``forward(output, target, *, index=None)``: ``output`` holds the embeddings [S + Q, D] of one
  episode, its support set first (``shots`` examples of each of its W classes) and its query set
  after; ``target`` holds their class labels [S + Q] (any integers; every query class has support
  rows). ``index`` is unused.
* Factories receive two context values from the family: ``shots`` (support examples per class,
  so the first ``W * shots`` rows are the support) and ``temperature`` (the family's prototype
  temperature, used by the cross-entropy term).
* ``forward`` returns one loss per query row [Q]. A loss defined on the episode as a whole is
  spread equally over the queries, so the engine's mean is the paper's episode loss.

Prototypes and logits follow Prototypical Networks (Snell, Swersky, Zemel, NeurIPS 2017, Eq. 1-2):
``c_k`` = mean support embedding of class k, logits = ``-|q - c_k|^2 / temperature``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.losses.base import LOSSES, Loss

_SUSANA = (
    "Mendez-Ruiz, Gonzalez-Zapata, Reyes-Amezcua, Flores-Araiza, Lopez-Tiro, Mendez-Vazquez, "
    "Ochoa-Ruiz, SuSana Distancia is all you need: Enforcing class separability in metric "
    "learning via two novel distance-based loss functions for few-shot image classification, "
    "arXiv:2305.09062 2023"
)


def _check(ok: bool, message: str) -> None:
    """Range checks raise ValueError; the registry turns it into a one-line UserError."""
    if not ok:
        raise ValueError(message)


class Episode(NamedTuple):
    """One episode split into its parts; labels are episode-local (0..W-1, sorted class ids)."""

    support: Tensor
    support_labels: Tensor
    queries: Tensor
    query_labels: Tensor
    prototypes: Tensor


def split_episode(output: Tensor, target: Tensor, shots: int) -> Episode:
    """Support (first ``W * shots`` rows), queries (the rest) and class prototypes [W, D]."""
    classes = torch.unique(target)
    n_support = len(classes) * shots
    local = torch.searchsorted(classes, target)
    support, support_labels = output[:n_support], local[:n_support]
    counts = torch.bincount(support_labels, minlength=len(classes))
    if n_support >= len(output) or bool((counts == 0).any()):
        raise RuntimeError(f"not an episode of {shots}-shot support rows followed by queries")
    sums = output.new_zeros(len(classes), output.shape[1]).index_add(0, support_labels, support)
    prototypes = sums / counts[:, None].to(output.dtype)
    return Episode(support, support_labels, output[n_support:], local[n_support:], prototypes)


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``|a_i - b_j|^2`` [N, M], from differences (exact, never negative)."""
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(dim=-1)


def prototype_logits(queries: Tensor, prototypes: Tensor, temperature: float) -> Tensor:
    """Prototypical-network logits ``-|q - c_k|^2 / temperature`` [Q, W] (Snell et al., Eq. 2)."""
    return -squared_distances(queries, prototypes) / temperature


def _euclidean(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances; squares clamped at 1e-12 so the square root's gradient stays finite."""
    return squared_distances(a, b).clamp_min(1e-12).sqrt()


def _mix(ce: Tensor, term: Tensor, ce_weight: float) -> Tensor:
    return ce_weight * ce + (1.0 - ce_weight) * term


@LOSSES.register("proto-triplet", consumes="fewshot", paper=_SUSANA + " (Proto-Triplet loss)")
class ProtoTriplet(Loss):
    """Proto-Triplet loss: a triplet on (query, own prototype, nearest other prototype).

    Per query ``q`` of class ``y`` (Euclidean distances ``d``, prototypes ``c``):
    ``PT(q) = max(0, d(q, c_y) - min_{k != y} d(q, c_k) + margin)``, the triplet loss with the
    query as anchor and prototypes as positive and (hardest) negative; the episode loss is the
    mean over queries. As in the paper's experiments (official code, ``--losses
    cross,prototriplet``), it is trained together with the prototypical cross-entropy: the value is
    ``ce_weight * CE(q) + (1 - ce_weight) * PT(q)``, and the default 0.5 is the official equal
    average; ``ce_weight = 0`` gives the Proto-Triplet term alone. ``margin`` = 0.5 is the
    official default (the paper does not tune it).
    """

    consumes = "fewshot"

    def __init__(self, shots: int, temperature: float, margin: float = 0.5,
                 ce_weight: float = 0.5) -> None:
        super().__init__()
        _check(margin >= 0, f"margin must be >= 0, got {margin}")
        _check(0.0 <= ce_weight <= 1.0, f"ce_weight must be in [0, 1], got {ce_weight}")
        self.shots, self.temperature = shots, temperature
        self.margin, self.ce_weight = margin, ce_weight

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        ep = split_episode(output, target, self.shots)
        squared = squared_distances(ep.queries, ep.prototypes)
        dist = squared.clamp_min(1e-12).sqrt()
        own = F.one_hot(ep.query_labels, len(ep.prototypes)).bool()
        positive = dist[own]
        negative = dist.masked_fill(own, math.inf).amin(dim=1)
        triplet = F.relu(positive - negative + self.margin)
        ce = F.cross_entropy(-squared / self.temperature, ep.query_labels, reduction="none")
        return _mix(ce, triplet, self.ce_weight)


def icnn_score(x: Tensor, y: Tensor, k: int, r: int | None = None) -> Tensor:
    """The ICNN score of labelled points ``x`` [n, D] (higher = better separated; in [0, 1]).

    ``k' = min(k, n - 2)``; the ``r`` nearest neighbours (default ``k' + 1``, at most ``n - 1``)
    are searched for the nearest different-class distance ``m_i`` (infinite if none is among
    them), and the first ``min(k', r)`` of them are scored. With ``d_ij`` Euclidean distances,
    self excluded, neighbours sorted by distance:

    * intra: ``t_ij = (d_ij / m_i) / max(1, max_j' d_ij' / m_i)`` over the scored neighbours
      (0 when ``m_i`` is infinite); ``a_i`` = mean of ``t_ij`` over same-class neighbours;
      ``lambda_intra = 1 - mean_i a_i`` over points with a same-class neighbour (1 if none).
    * inter: ``u_ij = d_ij / max d`` over different-class neighbours (max over the episode);
      ``b_i`` = mean of ``u_ij`` over them; ``lambda_inter = mean_i b_i`` over points with a
      different-class neighbour (1 if no point has one).
    * ``gamma`` = mean over points of (same-class scored neighbours / ``k'``); 1 when ``k``
      had to be clipped (``k + 2 >= n``). With ``r < k'`` it is at most ``r / k'``.
    * score = ``((lambda_intra + lambda_inter) / 2 + gamma) / 2``.

    This is the official ``modified_score`` (maumruiz/FSL-Loss, ``algorithms/icnn_loss.py``),
    ``r`` being its ``ipc``.
    """
    n = len(x)
    clipped = k + 2 >= n
    k = n - 2 if clipped else k
    r = min(k + 1 if r is None else r, n - 1)
    d = _euclidean(x, x).masked_fill(torch.eye(n, dtype=torch.bool, device=x.device), math.inf)
    dist, idx = d.topk(r, dim=1, largest=False)
    same = y[idx] == y[:, None]
    nearest_other = dist.masked_fill(same, math.inf).amin(dim=1, keepdim=True)
    dk, same_k = dist[:, :k], same[:, :k]

    ratio = dk / nearest_other
    ratio = ratio / ratio.amax(dim=1, keepdim=True).clamp_min(1.0)
    n_same = same_k.sum(dim=1)
    has_same = n_same > 0
    intra = torch.where(same_k, ratio, 0.0).sum(dim=1) / n_same.clamp_min(1)
    lam_intra = 1.0 - (intra[has_same].mean() if bool(has_same.any()) else 0.0)

    other_k = ~same_k
    n_other = other_k.sum(dim=1)
    if bool(n_other.any()):
        other_d = torch.where(other_k, dk, 0.0)
        inter = (other_d / other_d.max()).sum(dim=1) / n_other.clamp_min(1)
        lam_inter = inter[n_other > 0].mean()
    else:
        lam_inter = x.new_ones(())
    gamma = 1.0 if clipped else (n_same.to(x.dtype) / k).mean()
    return ((lam_intra + lam_inter) / 2 + gamma) / 2


@LOSSES.register("icnn", consumes="fewshot", paper=_SUSANA + " (ICNN loss)")
class ICNN(Loss):
    """ICNN loss: ``-log`` of the inter/intra-class nearest-neighbour score of the episode.

    The score (``icnn_score``) rewards points whose ``k`` nearest neighbours share their class
    (``gamma``), lie close relative to the nearest other class (``lambda_intra``) and keep other
    classes far (``lambda_inter``); the loss is ``-log(score)``, 0 for perfectly separated tight
    classes. ``on = "full"`` scores the whole episode (support + queries; the official
    ``fullicnn``), ``"support"`` the support set only (``suppicnn``). As in the paper's runs
    (official code, ``--losses cross,fullicnn``), it is trained with the prototypical
    cross-entropy: per query ``ce_weight * CE(q) + (1 - ce_weight) * ICNN``; 0.5 is the official
    equal average. ``k`` = 4 is the official default.

    Details the paper leaves open, taken from the official code (maumruiz/FSL-Loss,
    ``algorithms/icnn_loss.py``): the score is ``(lambda + gamma) / 2`` with ``lambda =
    (lambda_intra + lambda_inter) / 2`` (the variance term ``omega`` is disabled there);
    ``gamma = 1`` when ``k`` is clipped; the neighbourhood searched for the nearest other-class
    distance (``r`` in ``icnn_score``, its ``ipc``) is ``shot + query`` on the full episode
    (``get_icnn_loss``, ``fullicnn``; here the class size, the same for the family's balanced
    episodes) and ``k + 1`` on the support set (``suppicnn``). So with 1 shot and 2 queries only
    3 < k = 4 neighbours are scored (and gamma <= 3/4), and on a 10-shot support set a point
    whose 5 nearest neighbours share its class has no other-class distance (its intra term is 0).
    Unlike the official code, the point itself is excluded by index (not by dropping the nearest
    neighbour) and no 1e-6 / 1e-7 safety epsilons are added (guarded divisions instead): values
    agree to ~1e-7.
    """

    consumes = "fewshot"

    def __init__(self, shots: int, temperature: float, k: int = 4,
                 on: Literal["full", "support"] = "full", ce_weight: float = 0.5) -> None:
        super().__init__()
        _check(k >= 1, f"k must be >= 1, got {k}")
        _check(0.0 <= ce_weight <= 1.0, f"ce_weight must be in [0, 1], got {ce_weight}")
        self.shots, self.temperature = shots, temperature
        self.k, self.on, self.ce_weight = k, on, ce_weight

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        ep = split_episode(output, target, self.shots)
        if self.on == "full":
            points = torch.cat([ep.support, ep.queries])
            labels = torch.cat([ep.support_labels, ep.query_labels])
            neighbourhood: int | None = int(torch.bincount(labels).max())  # shot + query
        else:
            points, labels, neighbourhood = ep.support, ep.support_labels, None  # k + 1
        if len(points) < 3:
            raise RuntimeError(f"icnn on={self.on} needs at least 3 points, got {len(points)}")
        score = icnn_score(points, labels, self.k, neighbourhood)
        icnn = -torch.log(score.clamp_min(torch.finfo(points.dtype).tiny))
        logits = prototype_logits(ep.queries, ep.prototypes, self.temperature)
        ce = F.cross_entropy(logits, ep.query_labels, reduction="none")
        return _mix(ce, icnn.expand_as(ce), self.ce_weight)
