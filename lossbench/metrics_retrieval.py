"""Retrieval metrics by exact k-nearest-neighbour search and exact pair AUC, in bounded memory.

Protocol (Musgrave et al., A Metric Learning Reality Check, ECCV 2020, Sec. 3.3): every item of
the evaluation set is a query against all the others (itself excluded), ranked by cosine
similarity. For a query with ``R`` other items of its class:

* Recall@K: 1 if any of the K nearest neighbours shares the query's class;
* precision@1: the nearest neighbour shares the class (equal to Recall@1, reported as in the paper);
* R-precision: the fraction of the R nearest neighbours that share the class;
* MAP@R: ``1/R sum_{i<=R} P(i) rel(i)``, the mean precision at each correct rank within the top R;
* AUC: the probability that a random positive pair (same class) scores higher than a random
  negative pair, over all pairs of the set, ties counted one half -- exact.

Queries whose class has no other item (R = 0) cannot retrieve anything and are left out. All
values are percentages; non-finite embeddings give NaN for every metric.

Scores are float32 dot products of the normalised embeddings; both kNN and AUC are exact for the
scores as computed (two computations of one dot product can differ in the last bit; the AUC of
the float64 scores can differ from it only through pairs that close). Ties: neighbours with
equal scores rank by item index, lowest first (``retrieval_knn``); AUC ties count 1/2.

How. Items are sorted by class, and the upper triangle of the score matrix is computed once, in
square tiles of at most ``chunk_elements`` scores. A tile (I, J) offers its scores to the kNN
lists of the rows of I and, transposed, of J (``retrieval_knn``); every score i < j of a
different class is a negative pair and streams through the lookup table of the positive scores
(``retrieval_auc``), which the class blocks give first. Cost: N^2 / 2 dot products, O(1) table
work per negative pair, O(P log P) for the P positive pairs. Memory: a tile per worker thread,
the table (positives in groups of at most MAX_POSITIVES, one pass over the tiles per group)
and the [N, k] neighbour lists.

kNN by ``knn="torch"`` (this pass), ``"faiss"`` (faiss ``IndexFlatIP``; the tiles then only
count the AUC), or ``"auto"``: torch below k = FAISS_FROM_K, where the pass computes each score
once for both uses, and faiss (when installed, on a CPU) from there on, where merging many
candidates per query costs more than the second matrix product.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch
import torch.nn.functional as F

from lossbench.errors import require
from lossbench.retrieval_auc import EXCLUDED, MAX_POSITIVES, PositiveTable
from lossbench.retrieval_knn import Neighbours, faiss_keys, key_items, order_keys

KnnBackend = Literal["auto", "torch", "faiss"]
FAISS_FROM_K = 400  # auto: faiss finds the neighbours from k = 400 on (N = 20k, classes of 50:
# k = 250: torch 22-24 s, faiss 24-26 s; k = 500: torch 30 s, faiss 28-29 s)
_PIECE = 2**18  # scores per AUC lookup call (CPU): its temporaries stay in cache


def retrieval_metrics(
    emb: torch.Tensor,
    labels: torch.Tensor,
    recall_at: Sequence[int] = (1, 2, 4, 8),
    chunk_elements: int = 2**24,
    knn: KnnBackend = "auto",
) -> dict[str, float]:
    """Recall@K, precision@1, R-precision, MAP@R and pair AUC (percent) of ``emb`` [N, D].

    ``chunk_elements``: scores per tile (the memory bound); ``knn``: who finds the neighbours
    (module docstring); every choice gives the same values."""
    require(len(emb) == len(labels) and len(emb) >= 2, "retrieval needs at least two items")
    require(knn in ("auto", "torch", "faiss"), f"knn must be auto, torch or faiss, got {knn!r}")
    names = [f"recall@{k}" for k in recall_at] + ["precision@1", "r_precision", "map@r", "auc"]
    z = F.normalize(emb.float(), dim=1)
    cls = torch.unique(labels, return_inverse=True)[1].to(z.device)
    r = torch.bincount(cls)[cls] - 1  # other items of the query's class
    require(bool((r > 0).any()), "retrieval needs a class with at least two items")
    if not bool(torch.isfinite(z).all()):
        return dict.fromkeys(names, math.nan)
    n = len(z)
    kmax = min(n - 1, max(max(recall_at), int(r.max())))
    order = torch.sort(cls, stable=True).indices
    scan = PairScan(z[order].contiguous(), cls[order].contiguous(), order, chunk_elements)
    by_faiss = knn == "faiss" or (knn == "auto" and kmax >= FAISS_FROM_K
                                  and z.device.type == "cpu" and faiss_installed())
    keys = faiss_keys(scan.z, order, kmax) if by_faiss else None
    neighbours = None if by_faiss else Neighbours(n, kmax, z.device)
    auc = scan.auc(neighbours, positives_per_pass=min(max(chunk_elements, 2**16), MAX_POSITIVES))
    keys = neighbours.keys if neighbours is not None else keys
    assert keys is not None
    query_cls, query_r = cls[order], r[order]
    rows = _rows_per_block(kmax)
    out = _knn_means(((cls[key_items(keys[s : s + rows])], query_cls[s : s + rows],
                       query_r[s : s + rows]) for s in range(0, n, rows)), recall_at)
    out["auc"] = 100.0 * auc
    return out


def faiss_installed() -> bool:
    return importlib.util.find_spec("faiss") is not None


def knn_metrics(neighbour_cls: torch.Tensor, query_cls: torch.Tensor, r: torch.Tensor,
                recall_at: Sequence[int]) -> dict[str, float]:
    """Recall@K, precision@1, R-precision, MAP@R (percent) from each query's ranked neighbour
    classes [n, kmax], its class and R; queries with R = 0 are left out."""
    rows = _rows_per_block(neighbour_cls.shape[1])
    return _knn_means(((neighbour_cls[s : s + rows], query_cls[s : s + rows], r[s : s + rows])
                       for s in range(0, len(r), rows)), recall_at)


def _rows_per_block(kmax: int) -> int:
    return max(1, 2**22 // max(1, kmax))  # float64 temporaries of 32 MiB


def _knn_means(blocks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
               recall_at: Sequence[int]) -> dict[str, float]:
    """The kNN metrics' means over blocks of (neighbour classes, query classes, R)."""
    names = [f"recall@{k}" for k in recall_at] + ["precision@1", "r_precision", "map@r"]
    sums = [0.0] * len(names)
    count = 0
    for neighbour_cls, query_cls, r in blocks:
        valid = r > 0
        rel, r = (neighbour_cls == query_cls[:, None])[valid], r[valid]
        ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device)
        in_r = rel & (ranks[None, :] <= r[:, None])
        r_float = r.double()
        per_query = [rel[:, :k].any(dim=1).double() for k in recall_at]
        per_query.append(rel[:, 0].double())
        per_query.append(in_r.sum(dim=1).double() / r_float)
        precision = rel.cumsum(dim=1).double() / ranks[None, :].double()
        per_query.append((precision * in_r).sum(dim=1) / r_float)
        sums = [total + float(v.sum()) for total, v in zip(sums, per_query, strict=True)]
        count += len(r)
    return {name: 100.0 * total / count for name, total in zip(names, sums, strict=True)}


class PairScan:
    """The upper triangle of the score matrix of class-sorted unit rows ``z``, tile by tile."""

    def __init__(self, z: torch.Tensor, cls: torch.Tensor, items: torch.Tensor,
                 chunk_elements: int) -> None:
        self.z, self.cls, self.items = z, cls, items
        self.n = len(z)
        sides = -(-self.n // max(1, math.isqrt(chunk_elements)))  # tiles per side, as equal
        cuts = [self.n * i // sides for i in range(sides + 1)]  # as can be
        self.edges = list(itertools.pairwise(cuts))
        self.tile = max(b - a for a, b in self.edges)
        sizes = torch.bincount(cls)
        self.class_end = torch.cumsum(sizes, 0)
        self.class_start = self.class_end - sizes
        self.chunk_elements = chunk_elements

    def auc(self, neighbours: Neighbours | None, positives_per_pass: int) -> float:
        """Exact pair AUC in [0, 1] (NaN without negative pairs); fills ``neighbours`` on the
        first pass. One pass over the tiles per group of ``positives_per_pass`` positives."""
        n_pairs = self.n * (self.n - 1) // 2
        twice_u, n_pos = 0, 0
        for positives in self.positive_groups(positives_per_pass):
            table = PositiveTable.build(positives)
            n_pos += table.total
            twice_u += self.count(table, neighbours)
            neighbours = None
        n_neg = n_pairs - n_pos
        if n_neg == 0 or n_pos == 0:
            return math.nan
        return twice_u / (2 * n_pos * n_neg)

    def tiles(self) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
        """(row start, row stop, col start, col stop) of the diagonal tiles, which give every
        query its floor, and of the other upper-triangle tiles."""
        diagonal = [(a, b, a, b) for a, b in self.edges]
        return diagonal, [(a, b, c, d) for i, (a, b) in enumerate(self.edges)
                          for c, d in self.edges[i + 1 :]]

    def count(self, table: PositiveTable, neighbours: Neighbours | None) -> int:
        """Twice the Mann-Whitney U of the negative pairs against ``table``; offers every score
        to ``neighbours`` on the way.

        On a CPU, ``torch.get_num_threads()`` worker threads take whole tiles from a shared
        queue and run single-threaded operations on them: no per-operation thread barrier (an
        operation on a shared, busy machine otherwise waits for its slowest thread) and few
        interpreter-lock hand-offs. The kNN lists merge under a lock."""
        lock = threading.Lock()
        workers = torch.get_num_threads() if self.z.device.type == "cpu" else 1
        twice_u = 0
        for phase in self.tiles():  # all floors are set before an off-diagonal tile is read
            tiles = iter(phase)
            if workers == 1:
                twice_u += self.work(tiles, lock, table, neighbours)
                continue
            default = torch.get_num_threads()
            try:
                with ThreadPoolExecutor(workers) as pool:
                    jobs = [pool.submit(self.work, tiles, lock, table, neighbours, True)
                            for _ in range(workers)]
                    twice_u += sum(job.result() for job in jobs)
            finally:
                torch.set_num_threads(default)  # the workers' setting: new threads' default
        return twice_u

    def work(self, tiles: Iterator[tuple[int, int, int, int]], lock: threading.Lock,
             table: PositiveTable, neighbours: Neighbours | None, alone: bool = False) -> int:
        """Process tiles from ``tiles`` until none is left; ``alone``: single-threaded ops."""
        if alone:
            torch.set_num_threads(1)  # this thread only (and threads created after it)
        dev = self.z.device
        scores = torch.empty(self.tile * self.tile, device=dev)  # reused: no page faults
        hits = torch.empty(self.tile * self.tile, dtype=torch.bool, device=dev)
        steps = torch.arange(self.tile, device=dev)
        piece = _PIECE if dev.type == "cpu" else self.tile * self.tile  # GPU: few, big kernels
        twice_u = 0
        while True:
            with lock:
                tile = next(tiles, None)
            if tile is None:
                return twice_u
            a, b, c, d = tile
            sim = torch.mm(self.z[a:b], self.z[c:d].T,
                           out=scores[: (b - a) * (d - c)].view(b - a, d - c))
            diagonal = a == c
            hit = hits[: sim.numel()].view(sim.shape)
            if neighbours is not None:
                self.offer(sim, a, c, diagonal, neighbours, hit, lock)
            if diagonal:  # pairs i >= j are counted by their transpose, or not at all
                torch.ge(steps[: b - a, None], steps[None, : b - a], out=hit)
                sim.masked_fill_(hit, EXCLUDED)
            for r0, r1, c0, c1 in self.same_class_blocks(a, b, c, d):
                sim[r0 - a : r1 - a, c0 - c : c1 - c] = EXCLUDED
            flat = sim.view(-1)
            for s in range(0, flat.numel(), piece):
                twice_u += table.twice_f_sum(flat[s : s + piece])

    def offer(self, sim: torch.Tensor, a: int, c: int, diagonal: bool,
              neighbours: Neighbours, hit: torch.Tensor, lock: threading.Lock) -> None:
        """Offer the tile's scores at or above their query's floor: rows a.. as queries, and
        (off the diagonal) columns c.. as queries of the transposed scores. ``hit``: a bool
        buffer of the tile's shape. Floors only rise, and any floor ever set is a valid
        filter, so they are read without the lock; lists merge under it."""
        rows, cols = sim.shape
        if diagonal:
            sim.diagonal().fill_(-torch.inf)  # not its own neighbour (and EXCLUDED later)
            if cols - 1 >= neighbours.k:  # a floor needs k scores: the tile's k-th best
                kth = sim.topk(neighbours.k, dim=1).values[:, -1]
                with lock:
                    floor = neighbours.floor[a : a + rows]
                    torch.maximum(floor, kth, out=floor)
        torch.ge(sim, neighbours.floor[a : a + rows, None], out=hit)
        if diagonal:
            hit.diagonal().fill_(False)
        if int(torch.count_nonzero(hit)):
            i, j = torch.nonzero(hit, as_tuple=True)
            keys = order_keys(sim[i, j], self.items[c + j])
            with lock:
                neighbours.offer(a + i, keys, grouped=True)
        if diagonal:
            return
        torch.ge(sim, neighbours.floor[None, c : c + cols], out=hit)
        if int(torch.count_nonzero(hit)):
            i, j = torch.nonzero(hit, as_tuple=True)
            keys = order_keys(sim[i, j], self.items[a + i])
            with lock:
                neighbours.offer(c + j, keys)

    def same_class_blocks(self, a: int, b: int, c: int, d: int
                          ) -> Iterator[tuple[int, int, int, int]]:
        """Rectangles of the tile rows [a, b) x cols [c, d) where both items share a class."""
        first = int(self.cls[max(a, c)])
        last = int(self.cls[min(b, d) - 1])
        for k in range(first, last + 1):
            s, e = int(self.class_start[k]), int(self.class_end[k])
            r0, r1, c0, c1 = max(a, s), min(b, e), max(c, s), min(d, e)
            if r0 < r1 and c0 < c1:
                yield r0, r1, c0, c1

    def positive_groups(self, cap: int) -> Iterator[torch.Tensor]:
        """Every positive pair's score (i < j, same class), in groups of at most ``cap``."""
        pending: list[torch.Tensor] = []
        size = 0
        for block in self.class_blocks():
            pending.append(block)
            size += block.numel()
            while size >= cap:
                joined = torch.cat(pending)
                yield joined[:cap]
                pending, size = [joined[cap:]], size - cap
        if size:
            yield torch.cat(pending)

    def class_blocks(self) -> Iterator[torch.Tensor]:
        """Positive scores class by class: classes of similar size (within 2x) batched into
        one ``bmm`` of at most ``chunk_elements`` scores, larger classes row block by block."""
        sizes = self.class_end - self.class_start
        dev = self.z.device
        for k in torch.nonzero(sizes > math.isqrt(self.chunk_elements)).flatten().tolist():
            yield from self.large_class_pairs(int(self.class_start[k]), int(self.class_end[k]))
        small = torch.nonzero((sizes > 1) & (sizes <= math.isqrt(self.chunk_elements))).flatten()
        if small.numel() == 0:
            return
        bucket = torch.ceil(torch.log2(sizes[small].double())).long()
        for b in torch.unique(bucket).tolist():
            classes = small[bucket == b]
            width = int(sizes[classes].max())
            per_batch = max(1, self.chunk_elements // (width * width))
            offs = torch.arange(width, device=dev)
            for s in range(0, len(classes), per_batch):
                batch = classes[s : s + per_batch]
                n_items = sizes[batch][:, None]
                idx = (self.class_start[batch][:, None] + offs).clamp_max(self.n - 1)
                zb = self.z[idx]  # [classes, width, D], rows past a class are ignored
                sim = torch.bmm(zb, zb.transpose(1, 2))
                pair = (offs[None, :, None] < offs[None, None, :]) & (offs[None, None, :]
                                                                       < n_items[:, :, None])
                yield sim[pair]

    def large_class_pairs(self, s: int, e: int) -> Iterator[torch.Tensor]:
        """Pairs of one class too large for a single block, ``chunk_elements`` at a time."""
        rows = max(1, self.chunk_elements // (e - s))
        for r0 in range(s, e - 1, rows):
            r1 = min(r0 + rows, e - 1)
            block = self.z[r0:r1] @ self.z[r0 + 1 : e].T  # rows i, cols j > r0
            upper = (torch.arange(r0 + 1, e, device=block.device)[None, :]
                     > torch.arange(r0, r1, device=block.device)[:, None])
            yield block[upper]
