"""Transductive clustering: soft k-means and PADDLE, one block majorisation-minimisation (MM)
scheme on the support and query set together, started at the support prototypes.

PADDLE (Martin, Boudiaf, Chouzenoux, Pesquet, Ben Ayed, Towards Practical Few-shot Query Sets:
Transductive Minimum Description Length Inference, NeurIPS 2022) minimises, over the class
centres ``w_k`` and the query soft labels ``u_n`` on the simplex,

    F(u, w) = 1/2 sum_{n in S} |z_n - w_{y_n}|^2 + 1/2 sum_{n in Q} sum_k u_nk |z_n - w_k|^2
              + sum_{n in Q} sum_k u_nk log u_nk - lambda sum_k pi_k log pi_k,

``pi_k = (1/|Q|) sum_{n in Q} u_nk``: a Gaussian data term with unit variance, the entropic
barrier that keeps ``u`` inside the simplex and makes its update closed-form, and the minimum
description length (MDL) term ``lambda H(pi)``, which is concave in ``u`` and favours few
effective classes. Each iteration (the paper's primal-dual block updates, as in the official
code, ``src/methods/paddle.py``):

* u-step, MM: ``H`` is replaced by its tangent at the current ``pi``, an upper bound tight there;
  the bound's minimiser is ``u_n = softmax(-1/2 |z_n - w|^2 + (lambda/|Q|) v)`` with the dual
  variable ``v = log pi + 1`` of the previous iterate (``v = 0`` at the start);
* v-step: ``v = log pi(u) + 1``;
* w-step, exact: ``w_k`` = the mean of the support of class k and the queries weighted by
  ``u_nk``.

So ``F(u_t, w_t)`` never increases from the first iterate on (the u-step cannot raise the bound,
which lies above ``F`` and touches it at the previous iterate; the w-step minimises exactly):
the paper's convergence guarantee, and ``test_fewshot_inference`` checks it. The class of a
query is ``argmax_k u_nk``. ``lambda = 0`` removes the MDL term: soft k-means on support and
queries, PADDLE's ``SOFT-KM`` baseline, the kind of plain clustering that "Transductive Few-Shot
Learning: Clustering is All You Need?" (Ziko, Boudiaf, Dolz, Granger, Ben Ayed, arXiv:2106.09516
2021) found already competitive with the transductive state of the art.

Defaults are the official ones: 100 iterations, ``lambda = |Q|`` (the code's ``alpha = 75`` with
75 queries; it makes the MDL term the code length ``|Q| H(pi)`` of the query labels, so PADDLE
has no parameter to tune), features min-max scaled per episode (``norm = "minmax"``). Unlike
the official code (``log(pi + 1e-6)``), ``log pi`` is exact (clamped at the smallest normal
float), so the tangent, and the monotone decrease, are exact too.

Scale matters: the data term is ``1/2 |z - w|^2`` with no temperature, so the balance between it
and the MDL term depends on the features' scale. Min-max scaling fits the official setting
(640-dimensional ResNet features, large squared distances); on a low-dimensional embedding
(e.g. 32 dimensions) min-max scaled distances are of order 1, the MDL term dominates and PADDLE
can put most queries in one class, where ``norm = "none"`` (the embeddings' own scale) does
not; score ``paddle:norm=none`` beside the official default when embeddings are small.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from lossbench.fewshot_inference.base import (
    INFERENCE,
    Norm,
    entropy_terms,
    normalise,
    squared_distances,
)

_PADDLE = ("Martin, Boudiaf, Chouzenoux, Pesquet, Ben Ayed, Towards Practical Few-shot Query "
           "Sets: Transductive Minimum Description Length Inference, NeurIPS 2022 (PADDLE)")
_KMEANS = (_PADDLE + " (SOFT-KM baseline); Ziko, Boudiaf, Dolz, Granger, Ben Ayed, Transductive "
           "Few-Shot Learning: Clustering is All You Need?, arXiv:2106.09516 2021")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def clustering_iterates(support: Tensor, query: Tensor, lam: float, iterations: int
                        ) -> Iterator[tuple[Tensor, Tensor]]:
    """The block MM iterates ``(u_t, w_t)``, t = 1..iterations: soft labels [E, T, W] and
    centres [E, W, D], from ``w_0`` = the support prototypes and ``v_0 = 0``."""
    shots, n_query = support.shape[2], query.shape[1]
    support_sum = support.sum(dim=2)
    w = support.mean(dim=2)
    v = torch.zeros(w.shape[:2], dtype=w.dtype, device=w.device)
    tiny = torch.finfo(w.dtype).tiny
    for _ in range(iterations):
        u = (-0.5 * squared_distances(query, w) + (lam / n_query) * v[:, None, :]).softmax(-1)
        v = u.mean(dim=1).clamp_min(tiny).log() + 1.0
        w = (support_sum + u.transpose(1, 2) @ query) / (shots + u.sum(dim=1))[..., None]
        yield u, w


def clustering_objective(support: Tensor, query: Tensor, u: Tensor, w: Tensor, lam: float
                         ) -> Tensor:
    """``F(u, w)`` of each episode [E] (module docstring), from differences (no expansion)."""
    support_term = 0.5 * (support - w[:, :, None, :]).pow(2).sum(dim=(1, 2, 3))
    query_term = 0.5 * (u * (query[:, :, None, :] - w[:, None, :, :]).pow(2).sum(-1)).sum((1, 2))
    pi = u.mean(dim=1)
    return support_term + query_term + entropy_terms(u).sum(-1) - lam * entropy_terms(pi)


class _Clustering:
    """The shared predictor: normalise, run the iterates, take ``argmax u``."""

    def __init__(self, iterations: int, norm: Norm, mdl_weight: float) -> None:
        _check(iterations >= 1, f"iterations must be >= 1, got {iterations}")
        _check(mdl_weight >= 0, f"mdl_weight must be >= 0, got {mdl_weight}")
        self.iterations, self.norm, self.mdl_weight = iterations, norm, mdl_weight

    def __call__(self, support: Tensor, query: Tensor) -> Tensor:
        support, query = normalise(support, query, self.norm)
        lam = self.mdl_weight * query.shape[1]
        last = query.new_zeros(())
        for u, _ in clustering_iterates(support, query, lam, self.iterations):
            last = u
        return last.argmax(dim=-1)


@INFERENCE.register("paddle", transductive=True, paper=_PADDLE)
class Paddle(_Clustering):
    """PADDLE: soft k-means with an MDL penalty ``lambda H(pi)`` on the query class marginal,
    by block MM (module docstring); ``lambda = mdl_weight * |Q|``, 1 being the official setting.
    Defaults: the official code's (100 iterations, min-max scaled features)."""

    def __init__(self, iterations: int = 100, mdl_weight: float = 1.0,
                 norm: Norm = "minmax") -> None:
        super().__init__(iterations, norm, mdl_weight)


@INFERENCE.register("soft-kmeans", transductive=True, paper=_KMEANS)
class SoftKMeans(_Clustering):
    """Soft k-means on support and queries from the support prototypes, the support labels
    fixed: PADDLE without its MDL term (PADDLE's SOFT-KM baseline; its defaults: 100
    iterations, min-max scaled features)."""

    def __init__(self, iterations: int = 100, norm: Norm = "minmax") -> None:
        super().__init__(iterations, norm, 0.0)
