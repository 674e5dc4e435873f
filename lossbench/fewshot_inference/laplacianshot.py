"""LaplacianShot: nearest prototype with a Laplacian (kNN graph) term over the query set.

Ziko, Dolz, Granger, Ben Ayed, Laplacian Regularized Few-Shot Learning, ICML 2020. The query
assignments ``y_q`` (relaxed to the simplex) minimise the unary term ``sum_q y_q . a_q``
(``a_qk = |z_q - m_k|^2``, squared distance to the prototype ``m_k``) plus a Laplacian term that
rewards neighbouring queries for agreeing; with the entropy barrier of the relaxation, for a
symmetric affinity matrix ``W`` this is

    E(Y) = sum_q y_q . a_q + sum_q y_q . log y_q - lambda/2 sum_{q,p} w_qp y_q . y_p.

The paper's bound optimiser linearises the pairwise
term at the current ``Y``, which for a positive semi-definite ``W`` (the pairwise term concave)
is an upper bound tight there, and minimises the bound in closed form:

    y_q <- softmax(-a_q + lambda sum_p w_qp y_p),    from y_q = softmax(-a_q),

so ``E`` never increases (tested on a Gaussian-kernel affinity). The official code's ``W`` is
not PSD, nor symmetric: ``w_qp = 1`` if ``p`` is one of the ``knn - 1`` nearest other queries of
``q`` (``knn`` counts the query itself), and the update uses it as it is; there no monotone
decrease is promised. Iterations stop, per episode, once the official code's energy (its
``entropy_energy``: the pairwise term weighted ``lambda``, not ``lambda/2``) changes by at most
``1e-6`` relative, from the third on, at most ``iterations`` (20). A query takes the class of its
largest ``y_q``.

Defaults: ``lambda = 0.7``, ``knn = 3``, 20 iterations (the PADDLE and easyfsl configurations of
LaplacianShot; its own code tunes ``lambda`` on validation episodes). Features are
L2-normalised (``norm = "l2"``): the official code centres them on the base-class mean first
(CL2N), which the family does not compute. ``rectify = "bdcspn"`` first rectifies the prototypes
as BD-CSPN does (Liu, Song, Qin, Prototype Rectification for Few-Shot Learning, ECCV 2020): shift
the queries by ``mean(support) - mean(queries)``, label them by cosine to the prototypes, and
take per class the mean of its support and labelled queries weighted by
``exp(rectify_scale * cos)``. That is the rectification easyfsl's LaplacianShot always applies
(with ``rectify_scale = 1``); the official LaplacianShot code has a variant of its own (support
points pseudo-labelled too, an unnormalised weighted mean), not provided here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.fewshot_inference.base import (
    INFERENCE,
    Norm,
    entropy_terms,
    normalise,
    support_labels,
)

_LSHOT = ("Ziko, Dolz, Granger, Ben Ayed, Laplacian Regularized Few-Shot Learning, ICML 2020 "
          "(LaplacianShot); rectify=bdcspn: Liu, Song, Qin, Prototype Rectification for Few-Shot "
          "Learning, ECCV 2020")

STOP_TOLERANCE = 1e-6
"""Relative change of the official energy below which an episode's iterations stop."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def knn_affinity(x: Tensor, knn: int) -> Tensor:
    """``W`` [E, T, T]: ``w_qp = 1`` if ``p`` is among the ``knn - 1`` nearest other points of
    ``q`` [E, T, D] (Euclidean; the point itself excluded by index), else 0."""
    n = x.shape[1]
    distances = torch.cdist(x, x)
    distances.diagonal(dim1=1, dim2=2).fill_(torch.inf)
    neighbours = distances.topk(min(knn - 1, n - 1), dim=-1, largest=False).indices
    return torch.zeros_like(distances).scatter_(-1, neighbours, 1.0)


def laplacian_objective(y: Tensor, unary: Tensor, affinity: Tensor, lam: float) -> Tensor:
    """``E(Y)`` of each episode [E] (module docstring): the objective the bound update
    majorises when ``affinity`` is symmetric positive semi-definite."""
    pairwise = (affinity @ y * y).sum(dim=(1, 2))
    return (y * unary).sum(dim=(1, 2)) + entropy_terms(y).sum(-1) - 0.5 * lam * pairwise


def official_energy(y: Tensor, unary: Tensor, affinity: Tensor, lam: float) -> Tensor:
    """The official code's stopping energy [E] (``entropy_energy``; easyfsl's
    ``compute_upper_bound``): the pairwise term weighted ``lambda``, ``log max(y, 1e-20)``."""
    y64, unary64, affinity64 = y.double(), unary.double(), affinity.double()
    pairwise = affinity64 @ y64 * y64
    log_y = torch.log(y64.clamp_min(1e-20))
    return (y64 * log_y + unary64 * y64 - lam * pairwise).sum(dim=(1, 2))


def bound_updates(unary: Tensor, affinity: Tensor, lam: float, iterations: int,
                  stop: bool = True) -> list[Tensor]:
    """The assignments [E, T, W] from ``softmax(-unary)`` through each bound update (the last
    is the result); an episode whose official energy has settled keeps its assignments."""
    y = (-unary).softmax(-1)
    path = [y]
    done = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    previous = torch.full((len(y),), torch.inf, dtype=torch.float64, device=y.device)
    for i in range(iterations):
        y = torch.where(done[:, None, None], y, (-unary + lam * affinity @ y).softmax(-1))
        path.append(y)
        if not stop:
            continue
        energy = official_energy(y, unary, affinity, lam)
        if i > 1:
            done |= (energy - previous).abs() <= STOP_TOLERANCE * previous.abs()
        previous = torch.where(done, previous, energy)
        if bool(done.all()):
            break
    return path


def bdcspn_prototypes(support: Tensor, query: Tensor, scale: float) -> Tensor:
    """BD-CSPN's rectified prototypes [E, W, D] (module docstring)."""
    e, ways, shots, dim = support.shape
    flat = support.reshape(e, ways * shots, dim)
    shifted = query + (flat.mean(dim=1) - query.mean(dim=1))[:, None, :]
    prototypes = F.normalize(support.mean(dim=2), dim=-1)

    def weights(x: Tensor) -> Tensor:
        return (scale * F.normalize(x, dim=-1) @ prototypes.transpose(1, 2)).exp()

    labels_s = support_labels(support)
    query_cos = weights(shifted)
    labels_q = F.one_hot(query_cos.argmax(-1), ways).to(query.dtype)
    w_s, w_q = weights(flat) * labels_s, query_cos * labels_q
    total = w_s.sum(dim=1) + w_q.sum(dim=1)
    return (w_s.transpose(1, 2) @ flat + w_q.transpose(1, 2) @ shifted) / total[..., None]


@INFERENCE.register("laplacianshot", transductive=True, paper=_LSHOT)
class LaplacianShot:
    """LaplacianShot (Ziko et al. 2020): bound updates of query assignments under a kNN
    Laplacian over the queries (module docstring), optionally on BD-CSPN-rectified
    prototypes."""

    def __init__(self, lam: float = 0.7, knn: int = 3, iterations: int = 20, norm: Norm = "l2",
                 rectify: Literal["none", "bdcspn"] = "none", rectify_scale: float = 10.0
                 ) -> None:
        _check(lam >= 0, f"lam must be >= 0, got {lam}")
        _check(knn >= 2, f"knn must be >= 2 (it counts the query itself), got {knn}")
        _check(iterations >= 1, f"iterations must be >= 1, got {iterations}")
        self.lam, self.knn, self.iterations, self.norm = lam, knn, iterations, norm
        self.rectify, self.rectify_scale = rectify, rectify_scale

    def assignments(self, support: Tensor, query: Tensor) -> Tensor:
        """The final soft assignments [E, T, W]."""
        support, query = normalise(support, query, self.norm)
        if self.rectify == "bdcspn":
            prototypes = bdcspn_prototypes(support, query, self.rectify_scale)
        else:
            prototypes = support.mean(dim=2)
        unary = torch.cdist(query, prototypes).pow(2)
        return bound_updates(unary, knn_affinity(query, self.knn), self.lam,
                             self.iterations)[-1]

    def __call__(self, support: Tensor, query: Tensor) -> Tensor:
        return self.assignments(support, query).argmax(-1)
