"""Exact pair AUC (the Mann-Whitney statistic) of float32 scores, streamed in bounded memory.

The AUC over the pairs of an evaluation set is P(positive score > negative score) + 1/2 P(tie),
over every (positive pair, negative pair) combination: ~N^2/4 pair scores of each kind at SOP scale,
far too many to sort. It is the sum over negative scores q of

    f(q) = #{positive scores > q} + 1/2 #{positive scores == q},

so the positive scores (few: same-class pairs) are sorted once into a lookup table, and the
negative scores stream past it block by block, each costing one table read and a few
element-wise operations. Every comparison is an exact float32 comparison (``<``, ``==``), so
ties count exactly one half and the result is the exact statistic of the scores as computed.

The table. A monotone bin index is taken from the float32 bits of ``q + 2`` (a positive float
for any cosine, whose bit pattern orders like its value; ``>> shift`` coarsens it): if
bin(q) < bin(p) then q < p, and if bin(q) > bin(p) then q > p, so only positives in q's own
bin need comparing. Each bin's row holds what a score in it contributes when the bin has no
positive or exactly one distinct positive value u (``H + D * sign(u - q)``); the bins holding
two or more distinct positive values (rare: the shift is chosen so that the table has about
eight bins per distinct positive) are flagged, and their scores step through the sorted
positives one comparison at a time (at most ``max_per_bin`` steps). Scores below the lowest
bin, above the highest, or masked out (``EXCLUDED``) fall in two extra rows that contribute
all positives or none. Integer counts throughout: twice f is an integer, summed in int64 per
block and in Python ints overall, so the statistic is exact at any N.

Cost: O(P log P) to sort the P positive scores, then O(1) per negative score (a table of
rows ~ 8 x distinct positives, at most 2^22 rows); memory O(P + table + block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EXCLUDED = 4.0  # a score no cosine reaches: masked entries (positives, i >= j) contribute 0
MAX_ROWS = 2**22  # 64 MiB of table at most
MAX_POSITIVES = 2**23  # so that every 2 f(q) < 2^24 is exact in float32
_SEARCH_STEPS = 64  # bins with more distinct positives fall back to a binary search


def _bin_bits(q: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """int32 bits of fl(q + 2): monotone non-decreasing in q for q > -2."""
    return torch.add(q, 2.0, out=out).view(torch.int32)


@dataclass(frozen=True)
class PositiveTable:
    """Sorted positive scores, binned for O(1) lookup of 2 f(q) (see the module docstring)."""

    rows: torch.Tensor  # [bins + 2, 4] float32: u, H (NaN: several positives), D, unused
    base: int  # bin bits of row 1, minus one
    shift: int
    values: torch.Tensor  # distinct positive scores, ascending, then +inf
    weights2: torch.Tensor  # 2 * #positives at or above each distinct value, then 0 (int64)
    counts: torch.Tensor  # multiplicity of each distinct value, then 0 (int64)
    first: torch.Tensor  # per row: index of its first distinct value (int64)
    max_per_bin: int
    total: int  # number of positive scores

    @classmethod
    def build(cls, positives: torch.Tensor) -> PositiveTable:
        """Table of 1 to MAX_POSITIVES finite float32 scores in [-1.5, 1.5] (1-D)."""
        dev = positives.device
        values, counts = torch.unique_consecutive(torch.sort(positives + 0.0).values,
                                                  return_counts=True)  # + 0.0: -0 -> +0
        zero = torch.zeros(1, dtype=torch.int64, device=dev)
        weights = torch.cat([torch.flip(torch.cumsum(torch.flip(counts, (0,)), 0), (0,)), zero])
        bits = _bin_bits(values).long()
        span = int(bits[-1] - bits[0]) + 1
        target = min(MAX_ROWS, max(2**16, 8 * len(values)))
        shift = 0
        while ((span - 1) >> shift) + 2 > target:
            shift += 1
        bins = (bits >> shift) - int(bits[0] >> shift)  # 0 .. nbins - 1
        per_bin = torch.bincount(bins, minlength=int(bins[-1]) + 1)
        first = torch.cumsum(per_bin, 0) - per_bin  # index of each bin's first value
        j = first.clamp_max(len(values) - 1)
        single, multi = per_bin == 1, per_bin > 1
        h = torch.where(single, weights[j] + weights[j + 1], 2 * weights[first])
        d = torch.where(single, counts[j], 0)  # 0 for empty and crowded bins
        u = torch.where(single, values[j], 0.0)
        body = torch.stack([u, h.float().masked_fill(multi, torch.nan),  # NaN: crowded
                            d.float(), torch.zeros_like(u)], dim=1)
        edge = torch.zeros(2, 4, device=dev)
        edge[0, 1] = 2 * float(weights[0])  # below every bin: all positives are higher
        return cls(
            rows=torch.cat([edge[:1], body, edge[1:]]).contiguous(),
            base=int(bits[0] >> shift) - 1,
            shift=shift,
            values=torch.cat([values, torch.full((1,), torch.inf, device=dev)]),
            weights2=2 * weights,
            counts=torch.cat([counts, zero]),
            first=torch.cat([zero, first, zero + len(values)]),
            max_per_bin=int(per_bin.max()),
            total=int(weights[0]),
        )

    def row_index(self, q: torch.Tensor) -> torch.Tensor:
        """Table row of each score: 0 below every positive bin, last row above (or EXCLUDED)."""
        idx = _bin_bits(q)
        if self.shift:
            idx = idx >> self.shift
        return (idx - self.base).clamp_(0, len(self.rows) - 1)

    def twice_f_sum(self, q: torch.Tensor) -> int:
        """sum over the 1-D scores ``q`` of 2 f(q) = 2 #{p > q} + #{p == q}, exactly: each is
        H + D sign(u - q), an integer below 2^24, so float32 holds it and float64 sums it;
        a NaN (the H of a crowded bin) marks the scores that step through the positives."""
        idx = self.row_index(q)
        r = torch.index_select(self.rows, 0, idx)
        each = torch.sub(r[:, 0], q).sign_()
        torch.addcmul(r[:, 1], each, r[:, 2], out=each)
        total = float(each.sum(dtype=torch.float64))
        if not math.isnan(total):
            return int(total)
        crowded = torch.isnan(each)
        return (int(each.nan_to_num_(0.0).sum(dtype=torch.float64))
                + self._stepped(q[crowded], idx[crowded]))

    def _stepped(self, q: torch.Tensor, idx: torch.Tensor) -> int:
        """2 f(q) for scores in bins with several distinct positives: step up from the bin's
        first value while it is below q (exact; binary search for very crowded bins)."""
        if self.max_per_bin > _SEARCH_STEPS:
            j = torch.searchsorted(self.values[:-1], q, right=False)
        else:
            j = self.first[idx]
            for _ in range(self.max_per_bin):
                j += self.values[j] < q
        tie = self.values[j] == q
        return int(self.weights2[j].sum()) - int(self.counts[j][tie].sum())
