"""Exact retrieval metrics: the torch and faiss kNN paths and the streamed pair AUC against a
naive float64 reference (ties included), the AUC lookup table on its own, bounded passes."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from lossbench.errors import UserError
from lossbench.metrics_retrieval import PairScan, retrieval_metrics
from lossbench.retrieval_auc import EXCLUDED, PositiveTable
from lossbench.retrieval_knn import (
    Neighbours,
    exact_row_keys,
    key_items,
    key_scores,
    order_keys,
)

KS = (1, 2, 4, 8)
HAS_FAISS = "faiss" in sys.modules or __import__("importlib").util.find_spec("faiss") is not None


def reference(emb: np.ndarray, y: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Float64, one query at a time: rank the others by (score desc, index asc); AUC by
    comparing every positive pair score with every negative one, ties 1/2."""
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = z @ z.T
    n = len(y)
    per: dict[str, list[float]] = {}
    for i in range(n):
        others = np.array([j for j in range(n) if j != i])
        ranked = others[np.lexsort((others, -scores[i, others]))]
        rel = y[ranked] == y[i]
        r = int(rel.sum())
        if r == 0:
            continue
        for k in ks:
            per.setdefault(f"recall@{k}", []).append(float(rel[:k].any()))
        per.setdefault("precision@1", []).append(float(rel[0]))
        per.setdefault("r_precision", []).append(rel[:r].sum() / r)
        hits = np.cumsum(rel[:r])
        per.setdefault("map@r", []).append(float((hits / np.arange(1, r + 1))[rel[:r]].sum() / r))
    out = {k: 100 * float(np.mean(v)) for k, v in per.items()}
    iu = np.triu_indices(n, 1)
    same = y[iu[0]] == y[iu[1]]
    pos, neg = scores[iu][same], scores[iu][~same]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    out["auc"] = 100 * wins / (len(pos) * len(neg)) if len(neg) else math.nan
    return out


def clustered(seed: int, n_classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes of 2-8 items plus a singleton (R = 0: left out of the kNN metrics)."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.repeat(np.arange(n_classes), rng.integers(2, 9, n_classes)),
                        [n_classes]])
    emb = rng.normal(size=(n_classes + 1, 6))[y] + 1.2 * rng.normal(size=(len(y), 6))
    return emb, y


def tied(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Rows of +-1/4 in 16 dimensions (unit norm; every score a multiple of 1/16, exact in
    float32 and float64), a block of duplicate rows: runs of equal scores everywhere."""
    rng = np.random.default_rng(seed)
    emb = rng.choice([-0.25, 0.25], size=(n, 16))
    emb[:10] = emb[10:20]
    return emb, rng.integers(0, 5, n)


def assert_metrics_equal(got: dict[str, float], want: dict[str, float], tol: float = 1e-9
                         ) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=tol), name


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [7, 50, 10**6])
def test_torch_path_equals_float64_reference(seed: int, chunk: int) -> None:
    for emb, y in (clustered(seed), tied(seed)):
        got = retrieval_metrics(torch.tensor(emb), torch.tensor(y), KS, chunk_elements=chunk,
                                knn="torch")
        assert_metrics_equal(got, reference(emb, y))


@pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed (pip install 'lossbench[faiss]')")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faiss_path_equals_torch_path_and_reference(seed: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from lossbench import retrieval_knn

    monkeypatch.setattr(retrieval_knn, "FAISS_RESULTS_PER_BLOCK", 70)  # queries in 7s
    for emb, y in (clustered(seed), tied(seed)):
        args = (torch.tensor(emb), torch.tensor(y), KS)
        via_faiss = retrieval_metrics(*args, chunk_elements=50, knn="faiss")
        assert via_faiss == retrieval_metrics(*args, chunk_elements=50, knn="torch")
        assert_metrics_equal(via_faiss, reference(emb, y))


def test_faiss_missing_is_one_line_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    emb, y = clustered(0)
    with pytest.raises(UserError, match=r"lossbench\[faiss\]"):
        retrieval_metrics(torch.tensor(emb), torch.tensor(y), knn="faiss")
    with pytest.raises(UserError, match="knn must be auto, torch or faiss"):
        retrieval_metrics(torch.tensor(emb), torch.tensor(y), knn="annoy")  # type: ignore[arg-type]


def test_auto_asks_faiss_only_for_many_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    """knn='auto': the one-pass torch kNN below FAISS_FROM_K neighbours, faiss (when installed)
    from there on -- same values either way (faiss stood in for by exact per-row keys)."""
    from lossbench import metrics_retrieval

    asked: list[int] = []

    def stand_in(z: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
        asked.append(k)
        return torch.stack([exact_row_keys(z, items, row, k) for row in range(len(z))])

    emb, y = clustered(0)
    args = (torch.tensor(emb), torch.tensor(y))
    monkeypatch.setattr(metrics_retrieval, "faiss_keys", stand_in)
    monkeypatch.setattr(metrics_retrieval, "FAISS_FROM_K", 9)
    monkeypatch.setattr(metrics_retrieval, "faiss_installed", lambda: False)
    assert retrieval_metrics(*args, (1, 9)) == retrieval_metrics(*args, (1, 9), knn="torch")
    monkeypatch.setattr(metrics_retrieval, "faiss_installed", lambda: True)
    retrieval_metrics(*args, (1, 8))
    assert asked == []
    assert retrieval_metrics(*args, (1, 9)) == retrieval_metrics(*args, (1, 9), knn="torch")
    assert asked == [9]


def test_ties_rank_by_index_and_count_half_in_auc() -> None:
    """Four items, one direction each: item 0's neighbours 1 and 2 tie (score 0), so item 1
    (lower index) ranks first; the AUC pairs (0,1) pos vs (0,2) neg tie: 1/2."""
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    got = retrieval_metrics(emb, y, (1,), knn="torch")
    # queries: 0 -> 3 (score 1, wrong), 1 -> 0 (0 vs 3 tie at 0: index 0 first, right),
    # 2 -> 0 (0 vs 3 tie: index 0, wrong), 3 -> 0 (score 1, wrong)
    assert got["recall@1"] == 25.0
    # positives (0,1)=0, (2,3)=0; negatives (0,2)=0, (0,3)=1, (1,2)=-1, (1,3)=0
    assert got["auc"] == pytest.approx(100 * (0.5 + 0 + 1 + 0.5) * 2 / 8)
    assert_metrics_equal(got, reference(emb.numpy(), y.numpy(), (1,)))


def test_degenerate_embeddings() -> None:
    one_class = retrieval_metrics(torch.randn(6, 3), torch.zeros(6, dtype=torch.long))
    assert math.isnan(one_class["auc"]) and one_class["recall@1"] == 100.0  # no negatives
    broken = retrieval_metrics(torch.tensor([[1.0, 0.0], [math.nan, 1.0], [0.0, 1.0]]),
                               torch.tensor([0, 0, 1]))
    assert all(math.isnan(v) for v in broken.values())


def test_several_positive_passes_equal_one() -> None:
    emb, y = clustered(3, n_classes=9)
    z = torch.nn.functional.normalize(torch.tensor(emb).float(), dim=1)
    cls = torch.tensor(y)
    order = torch.sort(cls, stable=True).indices
    aucs = []
    for per_pass in (5, 10**6):
        scan = PairScan(z[order].contiguous(), cls[order].contiguous(), order, 64)
        aucs.append(scan.auc(None, positives_per_pass=per_pass))
    assert aucs[0] == aucs[1] == pytest.approx(reference(emb, y)["auc"] / 100, abs=1e-12)


def brute_twice_f(positives: torch.Tensor, q: torch.Tensor) -> int:
    p = positives.double()[:, None]
    return int(2 * (p > q.double()[None, :]).sum() + (p == q.double()[None, :]).sum())


@pytest.mark.parametrize("case", ["crowded", "spread", "few"])
def test_positive_table_counts_exactly(case: str) -> None:
    """2 sum f(q) against brute force, including rows holding several distinct positives
    (adjacent floats near 0), ties, -0.0, and scores below, above and EXCLUDED."""
    g = torch.Generator().manual_seed(0)
    if case == "crowded":  # ~35 adjacent float32 values near 1e-3, most held several times
        positives = torch.full((300,), 1e-3) + torch.randint(0, 40, (300,), generator=g) * 1e-10
    elif case == "spread":
        positives = torch.rand(5000, generator=g) * 2 - 1
    else:
        positives = torch.tensor([-0.9, -0.0, 0.0, 0.0, 0.5, 0.9])
    table = PositiveTable.build(positives)
    if case == "crowded":
        assert table.max_per_row > 1
    q = torch.cat([positives[torch.randint(0, len(positives), (500,), generator=g)],
                   torch.rand(2000, generator=g) * 2.2 - 1.1,
                   positives.min() + torch.randn(500, generator=g) * 1e-9,
                   torch.tensor([-1.0, 1.0, -0.0, 0.0])])
    assert table.twice_f_sum(q) == brute_twice_f(positives, q)
    assert table.twice_f_sum(torch.full((10,), EXCLUDED)) == 0
    assert table.total == len(positives)


def test_order_keys_rank_by_score_then_index() -> None:
    scores = torch.tensor([0.5, -0.25, 0.5, -0.0, 0.0, -1.0, 1.0])
    items = torch.tensor([7, 3, 2, 9, 4, 0, 1])
    keys = order_keys(scores, items)
    ranked = items[torch.argsort(keys, descending=True)].tolist()
    assert ranked == [1, 2, 7, 4, 9, 3, 0]  # 1.0; 0.5 by index; +-0 tie by index; ...
    assert torch.equal(key_items(keys), items)
    assert torch.equal(key_scores(keys), scores + 0.0)


def test_neighbours_merge_offers_in_any_order() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (5, 30), generator=g).float()  # many ties
    want = torch.stack([order_keys(s, torch.arange(30)).topk(6).values for s in scores])
    nb = Neighbours(5, 6, torch.device("cpu"))
    for cols in torch.randperm(30, generator=g).split(7):
        q = torch.arange(5).repeat_interleave(len(cols))
        nb.offer(q, order_keys(scores[:, cols].reshape(-1), cols.repeat(5)))
    assert torch.equal(nb.keys, want)
    assert torch.equal(nb.floor, key_scores(want[:, -1]))
