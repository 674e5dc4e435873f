"""Exact pair AUC (the Mann-Whitney statistic) of float32 scores, streamed in bounded memory.

The AUC over the pairs of an evaluation set is P(positive score > negative score) + 1/2 P(tie),
over every (positive pair, negative pair) combination: ~N^2/4 pair scores of each kind at SOP
scale, far too many to sort. It is the sum over negative scores q of

    f(q) = #{positive scores > q} + 1/2 #{positive scores == q},

so the positive scores (few: same-class pairs) are sorted once into a lookup table, and the
negative scores stream past it block by block, each costing three table reads (two of a small
table) and a dozen element-wise operations. Every comparison is an exact float32 comparison, so
ties count exactly one half and the result is the exact statistic of the scores as computed.

The table maps a score q to a row by a function that is monotone in q (so a row's positives
are above every lower row's), in two levels so that its resolution follows the positives:

1. coarse: the float32 bits of ``q + 2`` (positive for any cosine, so they order like the
   value), ``>> shift``: ~2^16 equal-width bins over the positives' range, plus a row below
   and one above it;
2. fine: each coarse bin maps q to ``offset + int((q - lo) * 2^k)`` over its own run of rows,
   ``2^k`` chosen for about eight rows per positive value in the bin (``q - lo`` is exact
   there, so the rows can be as fine as float32 itself). The run's end is the same arithmetic
   applied to the bin's largest possible score, so no score leaves its bin's run.

A fine row holding one positive value u (held once) stores u and H = 2 #{p >= u} - 1, and a
score in it counts H + sign(u - q); a row without positives stores u = +inf and
H = 2 #{p above} - 1. A crowded row (two or more values, or one held twice: adjacent floats,
duplicates) stores H = NaN, and its scores step through the sorted positives one comparison at
a time. Scores masked out (``EXCLUDED``) land above everything and count 0. Every 2 f(q) is an
integer below 2^24 (exact in float32), summed in float64 per block (exact below 2^53) and in
Python ints overall: the statistic is exact at any N.

Cost: O(P log P) to sort the P positive scores and build ~8 rows per distinct one (at most
2^22 rows, 32 MiB), then O(1) per negative score; memory O(P + table + block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EXCLUDED = 4.0  # a score no cosine reaches: masked entries (positives, i >= j) count 0
MAX_POSITIVES = 2**23  # so that every 2 f(q) < 2^24 is exact in float32
COARSE_ROWS = 2**16
MAX_ROWS = 2**23  # fine rows: 64 MiB at most
ROWS_PER_VALUE = 8
_SEARCH_STEPS = 64  # rows with more distinct positives fall back to a binary search


def _coarse_bits(q: torch.Tensor) -> torch.Tensor:
    """int32 bits of fl(q + 2): monotone non-decreasing in q for q > -2."""
    return torch.add(q, 2.0).view(torch.int32)


def _round_to_float32(x: torch.Tensor, down: bool) -> torch.Tensor:
    """float64 -> the nearest float32 at or below (``down``) / at or above ``x``."""
    y = x.float()
    if down:
        return torch.where(y.double() > x, torch.nextafter(y, torch.tensor(-torch.inf)), y)
    return torch.where(y.double() < x, torch.nextafter(y, torch.tensor(torch.inf)), y)


def _fine_scales(per_bin: torch.Tensor, width: torch.Tensor, n_values: int) -> torch.Tensor:
    """2^k of each coarse bin: about ROWS_PER_VALUE rows per positive value in it (fewer when
    the values are too many for MAX_ROWS); 0 for a bin without positives (one row)."""
    per_value = min(ROWS_PER_VALUE, max(1, (MAX_ROWS - 2 * len(per_bin)) // n_values))
    k = torch.floor(torch.log2((per_bin * per_value + 1).double() / width))
    return torch.where(per_bin > 0, torch.exp2(k), 0.0).float()


@dataclass(frozen=True)
class PositiveTable:
    """Sorted positive scores, binned for O(1) lookup of 2 f(q) (see the module docstring)."""

    coarse: torch.Tensor  # [coarse rows] int64: float32 lo (low half), float32 2^k (high half)
    coarse_offset: torch.Tensor  # [coarse rows] int32: first fine row of each coarse bin
    fine: torch.Tensor  # [fine rows] int64: float32 u (low half), float32 H (high half)
    base: int  # coarse bits of coarse row 1, minus one
    shift: int
    values: torch.Tensor  # distinct positive scores, ascending, then +inf
    weights2: torch.Tensor  # 2 * #positives at or above each distinct value, then 0 (int64)
    counts: torch.Tensor  # multiplicity of each distinct value, then 0 (int64)
    first: torch.Tensor  # per fine row: index of its first distinct value (int64)
    max_per_row: int
    total: int  # number of positive scores

    @classmethod
    def build(cls, positives: torch.Tensor) -> PositiveTable:
        """Table of 1 to MAX_POSITIVES finite float32 scores in [-1.5, 1.5] (1-D)."""
        dev = positives.device
        values, counts = torch.unique_consecutive(torch.sort(positives + 0.0).values,
                                                  return_counts=True)  # + 0.0: -0 -> +0
        zero = torch.zeros(1, dtype=torch.int64, device=dev)
        weights = torch.cat([torch.flip(torch.cumsum(torch.flip(counts, (0,)), 0), (0,)), zero])
        bits = _coarse_bits(values).long()
        shift = 0
        while (int(bits[-1]) >> shift) - (int(bits[0]) >> shift) + 3 > COARSE_ROWS:
            shift += 1
        first_bin = int(bits[0]) >> shift
        n_bins = (int(bits[-1]) >> shift) - first_bin + 1
        value_bin = (bits >> shift) - first_bin
        per_bin = torch.bincount(value_bin, minlength=n_bins)
        # the scores of bin c: fl(q + 2) between the floats with bits (first_bin + c) << shift
        # and ((first_bin + c + 1) << shift) - 1, so q within half an ulp of those minus 2
        edge_bits = (torch.arange(n_bins + 1, device=dev) + first_bin) << shift
        s_lo = edge_bits[:-1].int().view(torch.float32).double()
        s_hi = (edge_bits[1:] - 1).int().view(torch.float32).double()
        lo = _round_to_float32(s_lo - 2 - 2.0**-22, down=True)
        hi = _round_to_float32(s_hi - 2 + 2.0**-22, down=False)
        scale = _fine_scales(per_bin, (hi - lo).double(), len(values))
        size = torch.sub(hi, lo).mul_(scale).to(torch.int32) + 1  # the lookup's own arithmetic
        offset = torch.cumsum(size, 0, dtype=torch.int32) - size + 1  # fine row 0: below all
        n_fine = int(offset[-1] + size[-1]) + 1  # and a last row above all
        pad = lo.new_zeros(1)  # the rows below and above all bins: lo = 0, 2^k = 0
        coarse = torch.stack([torch.cat([pad, lo, pad]), torch.cat([pad, scale, pad])], dim=1)
        coarse_offset = torch.cat([offset.new_zeros(1), offset,
                                   offset.new_full((1,), n_fine - 1)])
        table = cls(coarse=coarse.contiguous().view(torch.int64).view(-1),
                    coarse_offset=coarse_offset.contiguous(), fine=zero, base=first_bin - 1,
                    shift=shift, values=values, weights2=zero, counts=zero, first=zero,
                    max_per_row=0, total=0)
        rows = table.fine_rows(values).long()
        per_row = torch.bincount(rows, minlength=n_fine)
        first = torch.cumsum(per_row, 0) - per_row  # index of each row's first value
        j = first.clamp_max(len(values) - 1)
        single = (per_row == 1) & (counts[j] == 1)
        u = torch.where(single, values[j], torch.inf)
        h = (2 * weights[first] - 1).float().masked_fill((per_row > 0) & ~single, torch.nan)
        return cls(
            coarse=table.coarse, coarse_offset=table.coarse_offset,
            fine=torch.stack([u, h], dim=1).contiguous().view(torch.int64).view(-1),
            base=table.base, shift=shift,
            values=torch.cat([values, torch.full((1,), torch.inf, device=dev)]),
            weights2=2 * weights, counts=torch.cat([counts, zero]), first=first,
            max_per_row=int(per_row.max()), total=int(weights[0]),
        )

    def fine_rows(self, q: torch.Tensor) -> torch.Tensor:
        """int32 fine row of each score (monotone non-decreasing in q)."""
        c = _coarse_bits(q)
        if self.shift:
            c = c >> self.shift
        c = (c - self.base).clamp_(0, len(self.coarse) - 1)
        lo_scale = torch.index_select(self.coarse, 0, c).view(torch.float32)
        row = torch.sub(q, lo_scale[0::2]).mul_(lo_scale[1::2]).to(torch.int32)
        return row.add_(torch.index_select(self.coarse_offset, 0, c))

    def twice_f_sum(self, q: torch.Tensor) -> int:
        """sum over the 1-D scores ``q`` of 2 f(q) = 2 #{p > q} + #{p == q}, exactly: each is
        H + sign(u - q), an integer below 2^24, so float32 holds it and float64 sums it;
        a NaN (the H of a crowded row) marks the scores that step through the positives."""
        rows = self.fine_rows(q)
        pair = torch.index_select(self.fine, 0, rows).view(torch.float32)  # u0, H0, u1, ...
        each = torch.sub(pair[0::2], q).sign_().add_(pair[1::2])
        total = float(each.sum(dtype=torch.float64))
        if not math.isnan(total):
            return int(total)
        crowded = torch.nonzero(torch.isnan(each)).view(-1)
        return (int(each.nan_to_num_(0.0).sum(dtype=torch.float64))
                + self._stepped(torch.index_select(q, 0, crowded),
                                torch.index_select(rows, 0, crowded)))

    def _stepped(self, q: torch.Tensor, rows: torch.Tensor) -> int:
        """2 f(q) for scores in crowded rows: step up from the row's first value while it is
        below q (exact; binary search for very crowded rows)."""
        if self.max_per_row > _SEARCH_STEPS:
            j = torch.searchsorted(self.values[:-1], q, right=False)
        else:
            j = torch.index_select(self.first, 0, rows)
            for _ in range(self.max_per_row):
                j += torch.index_select(self.values, 0, j) < q
        tie = torch.index_select(self.values, 0, j) == q
        return (int(torch.index_select(self.weights2, 0, j).sum())
                - int(torch.index_select(self.counts, 0, j)[tie].sum()))
