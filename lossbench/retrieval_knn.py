"""Exact k nearest neighbours by cosine, with one tie rule whatever finds them.

Neighbours are ranked by score, highest first, and equal scores by item index, lowest first.
Both rules live in one int64 key per (score, item): the float32 score's bits made monotone in
the high 32 bits, ``2^32 - 1 - index`` in the low 32 bits, so that "larger key" is "ranks
earlier" and every key is distinct. Lists of keys then merge with a plain ``topk``: no tie can
be broken differently by two code paths, whichever blocks the scores came in.

``Neighbours`` keeps each query's best ``k`` keys and the score of its k-th (its floor); a tile
of scores offers only its entries at or above the floor of their query, so after the first
tiles almost nothing is offered. ``faiss_keys`` gets the same lists from faiss (exact
``IndexFlatIP``), re-ranked by the key and re-done in torch for the queries where faiss's
cut-off falls inside a run of equal scores.
"""

from __future__ import annotations

import torch

from lossbench.errors import UserError

EMPTY = torch.iinfo(torch.int64).min  # an unfilled slot: below every real key
_LOW = 2**32 - 1
FAISS_RESULTS_PER_BLOCK = 2**22  # bounds faiss's result arrays and their keys


def order_keys(scores: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """int64 keys: larger = higher score, then lower item index (``items`` < 2^32)."""
    bits = (scores + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    mono = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # the bits of a negative float, reversed
    return mono.long() * 2**32 + (_LOW - items.long())


def key_scores(keys: torch.Tensor) -> torch.Tensor:
    """The float32 scores of ``keys`` (inverse of ``order_keys``'s high half)."""
    mono = (keys >> 32).int()
    return (mono ^ ((mono >> 31) & 0x7FFFFFFF)).view(torch.float32)


def key_items(keys: torch.Tensor) -> torch.Tensor:
    return _LOW - (keys & _LOW)


class Neighbours:
    """The best ``k`` keys of each of ``n`` queries, merged from offers in any order."""

    def __init__(self, n: int, k: int, device: torch.device) -> None:
        self.k = k
        self.keys = torch.full((n, k), EMPTY, dtype=torch.int64, device=device)
        self.floor = torch.full((n,), -torch.inf, device=device)  # k-th best score so far

    def offer(self, queries: torch.Tensor, keys: torch.Tensor, grouped: bool = False) -> None:
        """Merge candidate ``keys`` of ``queries`` (1-D, same length); ``grouped``: each
        query's candidates are already contiguous (as ``nonzero`` gives them row by row)."""
        if queries.numel() == 0:
            return
        if not grouped:
            order = torch.sort(queries, stable=True).indices
            queries, keys = queries[order], keys[order]
        rows, counts = torch.unique_consecutive(queries, return_counts=True)
        slot = torch.repeat_interleave(torch.arange(len(rows), device=keys.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(keys), device=keys.device) - starts[slot]
        dense = torch.full((len(rows), self.k + int(counts.max())), EMPTY, dtype=torch.int64,
                           device=keys.device)
        dense[:, : self.k] = self.keys[rows]
        dense[slot, self.k + pos] = keys
        best = dense.topk(self.k, dim=1).values
        self.keys[rows] = best
        last = best[:, -1]
        self.floor[rows] = torch.where(last == EMPTY, -torch.inf, key_scores(last))


def faiss_keys(z: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k] neighbour keys of every row of ``z`` among the others, searched by faiss.

    faiss returns the top ``k + 2`` by score (self among them, ties cut anywhere); a row is
    exact when its (k+1)-th non-self score is below its k-th, and is recomputed in torch
    otherwise (a tie straddles the cut). Queries go in blocks of FAISS_RESULTS_PER_BLOCK."""
    import numpy as np

    try:
        import faiss
    except ImportError:
        raise UserError("knn='faiss' needs the faiss package: pip install 'lossbench[faiss]' "
                        "(or use knn='torch')") from None
    n = len(z)
    data = np.ascontiguousarray(z.detach().cpu().numpy(), dtype=np.float32)
    index = faiss.IndexFlatIP(data.shape[1])
    index.add(data)
    width = min(n, k + 2)
    out = torch.empty(n, k, dtype=torch.int64, device=z.device)
    block = max(1, FAISS_RESULTS_PER_BLOCK // width)
    for start in range(0, n, block):
        scores, found = index.search(data[start : start + block], width)
        scores_t = torch.from_numpy(scores).to(z.device)
        found_t = torch.from_numpy(found).to(z.device)
        rows = torch.arange(start, start + len(found_t), device=z.device)
        self_hit = (found_t == rows[:, None]) | (found_t < 0)
        keys = order_keys(scores_t, items[found_t.clamp_min(0)])
        keys = keys.masked_fill_(self_hit, EMPTY).sort(dim=1, descending=True).values
        out[start : start + len(keys)] = keys[:, :k]
        if width > k:  # else every other item is in the list: nothing was cut off
            kth, next_ = key_scores(keys[:, k - 1]), key_scores(keys[:, k])
            for row in torch.nonzero((keys[:, k] != EMPTY) & (next_ == kth)).flatten().tolist():
                out[start + row] = exact_row_keys(z, items, start + row, k)
    return out


def exact_row_keys(z: torch.Tensor, items: torch.Tensor, row: int, k: int) -> torch.Tensor:
    """The ``k`` best keys of one row, from all its scores (the slow, sure way)."""
    keys = order_keys(z @ z[row], items)
    keys[row] = EMPTY
    return keys.topk(k).values
