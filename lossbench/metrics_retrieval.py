"""Retrieval metrics by exact k-nearest-neighbour search in torch, chunked over queries.

Protocol (Musgrave et al., A Metric Learning Reality Check, ECCV 2020, Sec. 3.3): every item of
the evaluation set is a query against all the others (itself excluded), ranked by cosine
similarity. For a query with ``R`` other items of its class:

* Recall@K: 1 if any of the K nearest neighbours shares the query's class;
* precision@1: the nearest neighbour shares the class (equal to Recall@1, reported as in the paper);
* R-precision: the fraction of the R nearest neighbours that share the class;
* MAP@R: ``1/R sum_{i<=R} P(i) rel(i)``, the mean precision at each correct rank within the top R;
* AUC: the probability that a random positive pair (same class) scores higher than a random
  negative pair, over all ordered pairs of the set, ties counted one half.

Queries whose class has no other item (R = 0) cannot retrieve anything and are left out. All
values are percentages. Memory stays bounded: the similarity block is at most ``chunk_elements``
entries; AUC counts pair scores in ``auc_bins`` equal bins on [-1, 1] (pairs in the same bin count
as ties, so the error is at most half the mass of such pairs: about 1e-4 for 20,000 bins).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lossbench.errors import require


def _auc_from_histograms(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie) from per-bin counts."""
    pos, neg = pos.double(), neg.double()
    below = torch.cumsum(neg, 0) - neg  # negatives in strictly lower bins
    wins = (pos * (below + 0.5 * neg)).sum()
    return float(wins / (pos.sum() * neg.sum()))


def retrieval_metrics(
    emb: torch.Tensor,
    labels: torch.Tensor,
    recall_at: Sequence[int] = (1, 2, 4, 8),
    chunk_elements: int = 2**24,
    auc_bins: int = 20_000,
) -> dict[str, float]:
    """Recall@K, precision@1, R-precision, MAP@R and pair AUC (percent) of ``emb`` [N, D]."""
    require(len(emb) == len(labels) and len(emb) >= 2, "retrieval needs at least two items")
    z = F.normalize(emb.float(), dim=1)
    cls = torch.unique(labels, return_inverse=True)[1].to(z.device)
    r = torch.bincount(cls)[cls] - 1  # other items of the query's class
    require(bool((r > 0).any()), "retrieval needs a class with at least two items")
    n = len(z)
    kmax = min(n - 1, max(max(recall_at), int(r.max())))
    ranks = torch.arange(1, kmax + 1, device=z.device)
    sums = torch.zeros(len(recall_at) + 3, dtype=torch.float64, device=z.device)
    pos_hist = torch.zeros(auc_bins, dtype=torch.int64, device=z.device)
    neg_hist = torch.zeros_like(pos_hist)
    rows = max(1, chunk_elements // n)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        sim = z[start:stop] @ z.T
        own = torch.arange(stop - start, device=z.device)
        same = cls[start:stop, None] == cls[None, :]
        same[own, own + start] = False
        bins = ((sim.clamp(-1, 1) + 1) * (auc_bins / 2)).long().clamp_max(auc_bins - 1)
        pos_hist += torch.bincount(bins[same], minlength=auc_bins)
        neg_hist += torch.bincount(bins[cls[start:stop, None] != cls[None, :]],
                                   minlength=auc_bins)
        sim[own, own + start] = -torch.inf
        top = sim.topk(kmax, dim=1).indices
        rel = cls[top] == cls[start:stop, None]  # [queries, kmax]
        rq = r[start:stop]
        valid = rq > 0
        in_r = rel & (ranks[None, :] <= rq[:, None])
        r_float = rq.clamp_min(1).double()
        per_query = [rel[:, :k].any(dim=1).double() for k in recall_at]
        per_query.append(rel[:, 0].double())
        per_query.append(in_r.sum(dim=1).double() / r_float)
        precision = rel.cumsum(dim=1).double() / ranks[None, :].double()
        per_query.append((precision * in_r).sum(dim=1) / r_float)
        sums += torch.stack([v[valid].double().sum() for v in per_query])
    means = (100.0 * sums / (r > 0).sum()).tolist()
    names = [f"recall@{k}" for k in recall_at] + ["precision@1", "r_precision", "map@r"]
    out = dict(zip(names, means, strict=True))
    out["auc"] = 100.0 * _auc_from_histograms(pos_hist, neg_hist)
    return out
