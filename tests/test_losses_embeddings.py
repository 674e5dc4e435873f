"""Embedding losses: float64 loop references, gradients, paper properties, and agreement with
pytorch-metric-learning (test-only dependency; those tests skip when it is absent)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from lossbench.errors import UserError
from lossbench.losses import LOSSES
from lossbench.losses.base import Loss

N, D, C = 12, 5, 4  # P x K batch: 4 classes x 3 examples
LABELS = torch.arange(C).repeat_interleave(N // C)


def build(name: str, **params: Any) -> Loss:
    return LOSSES.get(name).build(params, num_classes=C, embedding_dim=D, num_train=N).double()


def batch(seed: int, n: int = N, dim: int = D) -> torch.Tensor:
    return torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# References: explicit loops over anchors / pairs / triplets on numpy float64.
# ---------------------------------------------------------------------------------------------


def _unit(e: torch.Tensor) -> np.ndarray:
    x = e.detach().numpy()
    return x / np.sqrt((x**2).sum(axis=1, keepdims=True))


def _sim(e: torch.Tensor) -> np.ndarray:
    z = _unit(e)
    return np.array([[float(np.dot(a, b)) for b in z] for a in z])


def _dist(e: torch.Tensor) -> np.ndarray:
    z = _unit(e)
    return np.array([[math.sqrt(((a - b) ** 2).sum()) for b in z] for a in z])


def _pos(y: np.ndarray, i: int) -> list[int]:
    return [j for j in range(len(y)) if j != i and y[j] == y[i]]


def _neg(y: np.ndarray, i: int) -> list[int]:
    return [j for j in range(len(y)) if y[j] != y[i]]


def _mean(terms: list[float], nonzero: bool) -> float:
    kept = [t for t in terms if t > 0] if nonzero else terms
    return sum(kept) / len(kept) if kept else 0.0


def ref_ms(e: torch.Tensor, y: np.ndarray, a: float, b: float, lam: float, eps: float
           ) -> np.ndarray:
    s, out = _sim(e), []
    for i in range(len(y)):
        ps, ns = [s[i, j] for j in _pos(y, i)], [s[i, j] for j in _neg(y, i)]
        kept_n = [v for v in ns if v + eps > min(ps)]
        kept_p = [v for v in ps if v - eps < max(ns)]
        if not kept_n or not kept_p:
            out.append(0.0)
            continue
        out.append(math.log(1 + sum(math.exp(-a * (v - lam)) for v in kept_p)) / a
                   + math.log(1 + sum(math.exp(b * (v - lam)) for v in kept_n)) / b)
    return np.array(out)


def ref_contrastive(e: torch.Tensor, y: np.ndarray, mp: float, mn: float, nonzero: bool
                    ) -> float:
    d = _dist(e)
    pulls = [max(0.0, d[i, j] - mp) for i in range(len(y)) for j in _pos(y, i)]
    pushes = [max(0.0, mn - d[i, j]) for i in range(len(y)) for j in _neg(y, i)]
    return _mean(pulls, nonzero) + _mean(pushes, nonzero)


def ref_triplet(e: torch.Tensor, y: np.ndarray, margin: float, mining: str, nonzero: bool
                ) -> float:
    d, terms = _dist(e), []
    for a in range(len(y)):
        ps, ns = _pos(y, a), _neg(y, a)
        if not ps or not ns:
            continue
        if mining == "all":
            terms += [max(0.0, d[a, p] - d[a, n] + margin) for p in ps for n in ns]
        elif mining == "batch-hard":
            terms.append(max(0.0, max(d[a, p] for p in ps) - min(d[a, n] for n in ns) + margin))
        else:  # semi-hard: nearest negative beyond the positive, else the farthest negative
            for p in ps:
                beyond = [d[a, n] for n in ns if d[a, n] > d[a, p]]
                dn = min(beyond) if beyond else max(d[a, n] for n in ns)
                terms.append(max(0.0, d[a, p] - dn + margin))
    return _mean(terms, nonzero)


def ref_infonce(e: torch.Tensor, y: np.ndarray, t: float) -> float:
    s, terms = _sim(e), []
    for i in range(len(y)):
        for p in _pos(y, i):
            den = math.exp(s[i, p] / t) + sum(math.exp(s[i, n] / t) for n in _neg(y, i))
            terms.append(-math.log(math.exp(s[i, p] / t) / den))
    return sum(terms) / len(terms)


def ref_supcon(e: torch.Tensor, y: np.ndarray, t: float) -> np.ndarray:
    s, out = _sim(e), []
    for i in range(len(y)):
        den = sum(math.exp(s[i, k] / t) for k in range(len(y)) if k != i)
        ps = _pos(y, i)
        out.append(-sum(math.log(math.exp(s[i, p] / t) / den) for p in ps) / len(ps)
                   if ps else 0.0)
    return np.array(out)


def ref_mw(e: torch.Tensor, y: np.ndarray, t: float, pairs: str) -> float:
    s = _sim(e)
    pos = [(i, p) for i in range(len(y)) for p in _pos(y, i)]
    neg = [(i, n) for i in range(len(y)) for n in _neg(y, i)]
    terms = [math.log(1 + math.exp(-(s[i, p] - s[j, n]) / t))
             for i, p in pos for j, n in neg if pairs == "global" or i == j]
    return sum(terms) / len(terms)


def ref_proxy_anchor(e: torch.Tensor, y: np.ndarray, proxies: torch.Tensor, alpha: float,
                     delta: float) -> float:
    z, w = _unit(e), _unit(proxies)
    cos = z @ w.T
    present = sorted(set(y.tolist()))
    pos = sum(math.log(1 + sum(math.exp(-alpha * (cos[i, c] - delta))
                               for i in range(len(y)) if y[i] == c)) for c in present)
    neg = sum(math.log(1 + sum(math.exp(alpha * (cos[i, c] + delta))
                               for i in range(len(y)) if y[i] != c)) for c in range(len(w)))
    return pos / len(present) + neg / len(w)


def _softmax_nll(logits: list[float], k: int) -> float:
    top = max(logits)
    return -(logits[k] - top - math.log(sum(math.exp(v - top) for v in logits)))


def ref_margin_softmax(e: torch.Tensor, y: np.ndarray, weight: torch.Tensor, scale: float,
                       target_logit: Callable[[float], float]) -> np.ndarray:
    """Cross-entropy of ``scale * cos`` with the target cosine replaced by ``target_logit``."""
    z, w = _unit(e), _unit(weight)
    out = []
    for i in range(len(y)):
        cos = [float(np.dot(z[i], w[c])) for c in range(len(w))]
        cos[y[i]] = target_logit(cos[y[i]])
        out.append(_softmax_nll([scale * c for c in cos], int(y[i])))
    return np.array(out)


def _arc(m: float) -> Callable[[float], float]:
    def target(c: float) -> float:
        theta = math.acos(c)
        return math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m)

    return target


# ---------------------------------------------------------------------------------------------
# Per-example references (losses defined per anchor).
# ---------------------------------------------------------------------------------------------

Y = LABELS.numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params", [{}, {"alpha": 3.0, "beta": 20.0, "lambda": 0.2,
                                         "epsilon": 0.3}])
def test_ms_matches_reference(seed: int, params: dict[str, float]) -> None:
    e = batch(seed)
    p = {"alpha": 2.0, "beta": 40.0, "lambda": 0.5, "epsilon": 0.1} | params
    out = build("ms", **params)(e, LABELS)
    want = ref_ms(e, Y, p["alpha"], p["beta"], p["lambda"], p["epsilon"])
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-12, atol=1e-14)


def test_ms_drops_anchor_without_mined_pairs() -> None:
    # Two tight, far-apart classes: no negative is within epsilon of the hardest positive.
    e = torch.tensor([[1.0, 0.0], [0.99, 0.05], [-1.0, 0.0], [-0.99, 0.05]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    assert torch.all(build("ms")(e, y) == 0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_supcon_matches_reference(seed: int, t: float) -> None:
    e = batch(seed)
    np.testing.assert_allclose(build("supcon", temperature=t)(e, LABELS).detach().numpy(),
                               ref_supcon(e, Y, t), rtol=1e-12)


def test_supcon_anchor_without_positive_is_zero() -> None:
    y = torch.tensor([0, 0, 1, 2, 2, 3])
    out = build("supcon")(batch(3, 6), y)
    assert out[2] == 0 and out[5] == 0 and torch.all(out[[0, 1, 3, 4]] > 0)
    np.testing.assert_allclose(out.detach().numpy(), ref_supcon(batch(3, 6), y.numpy(), 0.1),
                               rtol=1e-12)


@pytest.mark.parametrize("name,params,target", [
    ("norm-softmax", {"temperature": 0.05}, lambda c: c),
    ("cosface", {}, lambda c: c - 0.35),
    ("arcface", {}, _arc(0.5)),
    ("arcface", {"margin": 1.2, "scale": 8.0}, _arc(1.2)),
])
def test_classifier_losses_match_reference(name: str, params: dict[str, float],
                                           target: Callable[[float], float]) -> None:
    e = batch(4)
    loss = build(name, **params)
    scale = 1 / params["temperature"] if name == "norm-softmax" else params.get("scale", 64.0)
    want = ref_margin_softmax(e, Y, loss.weight.detach(), scale, target)
    np.testing.assert_allclose(loss(e, LABELS).detach().numpy(), want, rtol=1e-11)


def test_arcface_uses_fallback_beyond_pi() -> None:
    # Embeddings opposite to their class weight: theta + m > pi, the monotone fallback applies.
    loss = build("arcface", margin=0.5, scale=4.0)
    e = -loss.weight.detach()[LABELS] + 1e-3 * batch(5)
    want = ref_margin_softmax(e, Y, loss.weight.detach(), 4.0, _arc(0.5))
    np.testing.assert_allclose(loss(e, LABELS).detach().numpy(), want, rtol=1e-11)


# ---------------------------------------------------------------------------------------------
# Batch-level references: the mean of the per-example spread is the paper's batch loss.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("average", ["all", "nonzero"])
@pytest.mark.parametrize("margins", [(0.0, 1.0), (0.3, 1.2)])
def test_contrastive_matches_reference(seed: int, average: str,
                                       margins: tuple[float, float]) -> None:
    e = batch(seed)
    loss = build("contrastive", pos_margin=margins[0], neg_margin=margins[1], average=average)
    want = ref_contrastive(e, Y, *margins, nonzero=average == "nonzero")
    assert loss(e, LABELS).mean().item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mining", ["all", "batch-hard", "semi-hard"])
@pytest.mark.parametrize("average", ["all", "nonzero"])
def test_triplet_matches_reference(seed: int, mining: str, average: str) -> None:
    e = batch(seed)
    loss = build("triplet", margin=0.3, mining=mining, average=average)
    want = ref_triplet(e, Y, 0.3, mining, nonzero=average == "nonzero")
    assert loss(e, LABELS).mean().item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_infonce_matches_reference(t: float) -> None:
    e = batch(6)
    assert build("infonce", temperature=t)(e, LABELS).mean().item() == pytest.approx(
        ref_infonce(e, Y, t), rel=1e-12)


@pytest.mark.parametrize("pairs", ["global", "anchor"])
@pytest.mark.parametrize("t", [0.1, 1.0])
def test_mw_matches_reference(pairs: str, t: float) -> None:
    e = batch(7)
    assert build("mw", temperature=t, pairs=pairs)(e, LABELS).mean().item() == pytest.approx(
        ref_mw(e, Y, t, pairs), rel=1e-12)


@pytest.mark.parametrize("y", [LABELS, torch.tensor([0, 0, 0, 2, 2, 2, 2, 0, 0, 2, 2, 2])])
def test_proxy_anchor_matches_reference(y: torch.Tensor) -> None:
    e = batch(8)
    loss = build("proxy-anchor", alpha=8.0, margin=0.2)
    want = ref_proxy_anchor(e, y.numpy(), loss.proxies.detach(), 8.0, 0.2)
    assert loss(e, y).mean().item() == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Gradients, invariances, robustness, parameters.
# ---------------------------------------------------------------------------------------------

ALL = [
    ("ms", {}), ("contrastive", {"average": "all"}), ("contrastive", {}),
    ("triplet", {}), ("triplet", {"mining": "batch-hard"}), ("triplet", {"mining": "semi-hard"}),
    ("infonce", {}), ("supcon", {}), ("mw", {}), ("mw", {"pairs": "anchor"}),
    ("proxy-anchor", {}), ("norm-softmax", {}), ("cosface", {}), ("arcface", {}),
]


@pytest.mark.parametrize("name,params", ALL)
def test_gradcheck(name: str, params: dict[str, Any]) -> None:
    loss = build(name, **params)
    e = batch(9).requires_grad_()
    extra = [p for p in loss.parameters()]
    assert torch.autograd.gradcheck(lambda x, *_: loss(x, LABELS), (e, *extra))


@pytest.mark.parametrize("name,params", ALL)
def test_scale_invariant_finite_and_float32(name: str, params: dict[str, Any]) -> None:
    loss = build(name, **params)
    e = batch(10)
    out = loss(e, LABELS)
    assert out.shape == (N,) and torch.isfinite(out).all() and torch.all(out >= 0)
    torch.testing.assert_close(loss(3.7 * e, LABELS), out)
    low = loss.float()(e.to(torch.bfloat16), LABELS)
    assert low.dtype == torch.float32


@pytest.mark.parametrize("name,params", ALL)
def test_duplicates_and_singletons_have_finite_gradients(name: str, params: dict[str, Any]
                                                         ) -> None:
    loss = build(name, **params)
    e = batch(11)
    e[1] = e[0]  # exact duplicate within a class
    y = LABELS.clone()
    y[-1] = C - 1
    y[-2] = C - 2  # ... and classes 2, 3 reshaped so that one class has a single member
    y[-3] = 0
    e.requires_grad_()
    loss(e, y).mean().backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()


def test_triplet_batch_hard_bounds_batch_all() -> None:
    # In a P x K batch every anchor has as many triplets; the hardest one bounds their mean.
    for seed in range(3):
        e = batch(seed)
        all_ = build("triplet", mining="all", average="all")(e, LABELS).mean()
        hard = build("triplet", mining="batch-hard", average="all")(e, LABELS).mean()
        assert hard >= all_


def test_supcon_equals_infonce_with_one_positive() -> None:
    y = torch.arange(N // 2).repeat_interleave(2)
    e = batch(12)
    torch.testing.assert_close(build("supcon", temperature=0.2)(e, y).mean(),
                               build("infonce", temperature=0.2)(e, y).mean())


def test_mw_bounds_one_minus_auc() -> None:
    # softplus(-x) >= log(2) [x <= 0]: the MW loss / log 2 upper-bounds the in-batch AoC (T = 1).
    for seed in range(3):
        e = batch(seed)
        s = _sim(e)
        pos = [s[i, p] for i in range(N) for p in _pos(Y, i)]
        neg = [s[i, n] for i in range(N) for n in _neg(Y, i)]
        aoc = np.mean([[float(p <= n) for n in neg] for p in pos])
        assert build("mw", temperature=1.0)(e, LABELS).mean().item() / math.log(2) >= aoc


def test_zero_margin_classifiers_reduce_to_norm_softmax() -> None:
    e = batch(13)
    base = build("norm-softmax", temperature=1 / 30)
    for name in ("cosface", "arcface"):
        loss = build(name, scale=30.0, margin=0.0)
        loss.weight.data.copy_(base.weight.data)
        torch.testing.assert_close(loss(e, LABELS), base(e, LABELS))


def test_proxy_anchor_spread_sums_to_batch_loss_per_class() -> None:
    e = batch(14)
    loss = build("proxy-anchor")
    out = loss(e, LABELS)
    # Every example of one class receives the same share.
    for c in range(C):
        members = out[LABELS.eq(c)]
        torch.testing.assert_close(members, members[0].expand_as(members))


@pytest.mark.parametrize("name,params,match", [
    ("ms", {"alpha": 0}, "alpha must be > 0"),
    ("contrastive", {"pos_margin": 1.0, "neg_margin": 0.5}, "neg_margin"),
    ("triplet", {"mining": "hardest"}, "accepted: all, batch-hard, semi-hard"),
    ("supcon", {"temperature": -1}, "temperature"),
    ("mw", {"pairs": "row"}, "accepted: global, anchor"),
    ("arcface", {"margin": 2.0}, "margin"),
    ("ms", {"gamma": 1}, "unknown parameter 'gamma'"),
])
def test_bad_parameters_are_user_errors(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(UserError, match=match):
        LOSSES.get(name).build(params, num_classes=C, embedding_dim=D, num_train=N)


def test_registered_as_embedding_losses_with_papers() -> None:
    names = {"ms", "contrastive", "triplet", "infonce", "supcon", "mw", "proxy-anchor",
             "norm-softmax", "cosface", "arcface"}
    for name in names:
        entry = LOSSES.get(name)
        assert entry.tags["consumes"] == "embeddings" and entry.tags["paper"]
        assert entry.summary


# ---------------------------------------------------------------------------------------------
# Agreement with pytorch-metric-learning (values and gradients on the same batch).
# ---------------------------------------------------------------------------------------------


def _agree(ours: Loss, theirs: Callable[..., torch.Tensor], e: torch.Tensor, y: torch.Tensor
           ) -> tuple[float, float]:
    """|value difference| and max |gradient difference| of mean(ours) vs PML's reduced loss."""
    a, b = e.clone().requires_grad_(), e.clone().requires_grad_()
    va, vb = ours(a, y).mean(), theirs(b, y)
    va.backward()
    vb.backward()
    assert a.grad is not None and b.grad is not None
    return abs(va.item() - vb.item()), (a.grad - b.grad).abs().max().item()


PML_N, PML_D, PML_C = 24, 8, 6
PML_LABELS = torch.arange(PML_C).repeat_interleave(PML_N // PML_C)
Maker = Callable[[Loss], Callable[..., torch.Tensor]]


def pml_counterparts() -> list[tuple[str, dict[str, Any], Maker]]:
    """(our loss, its params, the PML loss with reducer settings matching our mean)."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses as L
    from pytorch_metric_learning import miners as M
    from pytorch_metric_learning import reducers as R

    def classifier(cls: Any, **kw: Any) -> Maker:
        def make(ours: Loss) -> Callable[..., torch.Tensor]:
            theirs = cls(num_classes=PML_C, embedding_size=PML_D, **kw).double()
            theirs.W.data = ours.weight.data.T.clone()  # PML stores W as [D, C]
            return theirs

        return make

    def proxy_anchor(ours: Loss) -> Callable[..., torch.Tensor]:
        theirs = L.ProxyAnchorLoss(PML_C, PML_D, margin=0.1, alpha=32).double()
        theirs.proxies.data = ours.proxies.data.clone()
        return theirs

    def mined(loss: Any, miner: Any) -> Maker:
        return lambda _: lambda e, y: loss(e, y, miner(e, y))

    return [
        ("ms", {}, mined(L.MultiSimilarityLoss(alpha=2, beta=40, base=0.5),
                         M.MultiSimilarityMiner(epsilon=0.1))),
        ("contrastive", {"average": "all", "pos_margin": 0.2},
         lambda _: L.ContrastiveLoss(pos_margin=0.2, neg_margin=1.0, reducer=R.MeanReducer())),
        ("contrastive", {"pos_margin": 0.2}, lambda _: L.ContrastiveLoss(0.2, 1.0)),
        ("triplet", {"average": "all"},
         lambda _: L.TripletMarginLoss(margin=0.1, reducer=R.MeanReducer())),
        ("triplet", {}, lambda _: L.TripletMarginLoss(margin=0.1)),
        ("triplet", {"mining": "batch-hard", "margin": 0.3, "average": "all"},
         mined(L.TripletMarginLoss(margin=0.3, reducer=R.MeanReducer()), M.BatchHardMiner())),
        ("infonce", {}, lambda _: L.NTXentLoss(temperature=0.07)),
        ("supcon", {}, lambda _: L.SupConLoss(temperature=0.1, reducer=R.MeanReducer())),
        ("proxy-anchor", {}, proxy_anchor),
        ("norm-softmax", {}, classifier(L.NormalizedSoftmaxLoss, temperature=0.05)),
        ("cosface", {}, classifier(L.CosFaceLoss, margin=0.35, scale=64)),
        ("arcface", {}, classifier(L.ArcFaceLoss, margin=math.degrees(0.5), scale=64)),
    ]


def _ms_mines_both_sides(e: torch.Tensor, y: torch.Tensor) -> bool:
    """Every anchor keeps a positive and a negative (PML and the official code then agree)."""
    s = torch.as_tensor(_sim(e))
    pos = (y[:, None] == y[None]) & ~torch.eye(len(y), dtype=torch.bool)
    neg = y[:, None] != y[None]
    keep_neg = neg & (s + 0.1 > s.masked_fill(~pos, 9).amin(1, keepdim=True))
    keep_pos = pos & (s - 0.1 < s.masked_fill(~neg, -9).amax(1, keepdim=True))
    return bool(keep_neg.any(1).all() and keep_pos.any(1).all())


def test_agrees_with_pytorch_metric_learning() -> None:
    worst_value = worst_grad = 0.0
    for name, params, make in pml_counterparts():
        for seed in range(3):
            e = batch(100 + seed, PML_N, PML_D)
            ours = LOSSES.get(name).build(params, num_classes=PML_C, embedding_dim=PML_D)
            ours = ours.double()
            if name == "ms":
                assert _ms_mines_both_sides(e, PML_LABELS)
            dv, dg = _agree(ours, make(ours), e, PML_LABELS)
            assert dv < 1e-12 and dg < 1e-12, (name, params, dv, dg)
            worst_value, worst_grad = max(worst_value, dv), max(worst_grad, dg)
    print(f"PML agreement: max |value diff| {worst_value:.2e}, max |grad diff| {worst_grad:.2e}")


# ---------------------------------------------------------------------------------------------
# Degenerate batches: no positive pair, or no negative.
# ---------------------------------------------------------------------------------------------

DEGENERATE = {
    "one-example": torch.tensor([3]),
    "all-labels-distinct": torch.arange(6),
    "one-label": torch.zeros(6, dtype=torch.long),
}
NO_SIGNAL = [  # (loss, params, batch kind): batches that give the loss nothing to compare
    *[pytest.param("triplet", {"mining": m, "average": a}, kind, id=f"triplet-{m}-{a}-{kind}")
      for m in ("all", "semi-hard", "batch-hard") for a in ("nonzero", "all")
      for kind in DEGENERATE],
    *[pytest.param("supcon", {}, kind, id=f"supcon-{kind}") for kind in DEGENERATE],
]


@pytest.mark.parametrize(("name", "params", "kind"), NO_SIGNAL)
def test_batches_without_pairs_to_compare_give_zero_with_a_gradient_path(
        name: str, params: dict[str, Any], kind: str) -> None:
    # No positive pair (one example; all labels distinct) or no negative (one label): a finite
    # zero loss whose backward runs and gives zero gradients, as PML and batch-hard mining do.
    y = DEGENERATE[kind]
    e = batch(20, len(y)).requires_grad_()
    out = build(name, **params)(e, y)
    assert out.shape == (len(y),) and torch.all(out == 0) and out.requires_grad
    out.mean().backward()
    assert e.grad is not None and torch.all(e.grad == 0)


def test_degenerate_batches_agree_with_pytorch_metric_learning() -> None:
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses as L
    from pytorch_metric_learning import miners as M

    semi = M.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")
    theirs = {
        ("triplet", "all"): L.TripletMarginLoss(margin=0.1),
        ("triplet", "semi-hard"): lambda e, y: L.TripletMarginLoss(margin=0.1)(e, y, semi(e, y)),
        ("triplet", "batch-hard"): lambda e, y: L.TripletMarginLoss(margin=0.1)(
            e, y, M.BatchHardMiner()(e, y)),
        ("supcon", ""): L.SupConLoss(temperature=0.1),
    }
    for (name, mining), ref in theirs.items():
        ours = build(name, **({"mining": mining} if mining else {}))
        for y in DEGENERATE.values():
            e = batch(21, len(y))
            dv, dg = _agree(ours, ref, e, y)
            assert dv == 0 and dg == 0, (name, mining, y.tolist())
