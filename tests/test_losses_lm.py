"""Language-modelling losses: Cut Cross-Entropy against CE on materialised logits, EMO against
its formula and the earth mover distance it bounds, DCO against -log pass@N and its gradient
factor."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linprog

from lossbench.losses import LOSSES
from lossbench.losses.coverage import coverage_loss
from lossbench.losses.lm import cut_cross_entropy, demd
from lossbench.memory import peak_bytes


def hidden_and_head(n: int, v: int, d: int, seed: int = 0, scale: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = scale * torch.randn(v, d, generator=g, dtype=torch.float64)
    return h, w, torch.randint(0, v, (n,), generator=g)


def test_registry_kinds_and_papers() -> None:
    for name, kind in (("cce", "lm-hidden"), ("emo", "lm-hidden"), ("dco", "logits")):
        entry = LOSSES.get(name)
        assert entry.tags["consumes"] == kind == entry.factory.consumes
        assert "arXiv" in entry.tags["paper"] and entry.summary


# ---------------------------------------------------------------------------------------------
# Cut Cross-Entropy.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("token_block", "vocab_block"), [(2, 3), (5, 7), (64, 3), (1000, 1000)])
def test_cce_equals_ce_on_materialised_logits(token_block: int, vocab_block: int) -> None:
    h, w, y = hidden_and_head(23, 37, 6, scale=2.0)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    cce = cut_cross_entropy(h1, w1, y, token_block, vocab_block)
    ce = F.cross_entropy(h2 @ w2.T, y, reduction="none")
    np.testing.assert_allclose(cce.detach().numpy(), ce.detach().numpy(), rtol=1e-12, atol=1e-12)
    upstream = torch.rand(len(y), dtype=torch.float64)  # not a plain mean: per-token weights
    (cce * upstream).sum().backward()
    (ce * upstream).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-12, atol=1e-12)


def test_cce_gradcheck() -> None:
    h, w, y = hidden_and_head(6, 9, 4, seed=1)
    h.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: cut_cross_entropy(a, b, y, 4, 4), (h, w))


def test_cce_one_input_without_gradient() -> None:
    """A frozen head (or hidden states) gets no gradient and the other one is still exact."""
    h, w, y = hidden_and_head(8, 11, 3, seed=2)
    h.requires_grad_()
    cut_cross_entropy(h, w, y, 3, 4).sum().backward()
    expected = torch.autograd.grad(F.cross_entropy(h @ w.T, y, reduction="sum"), h)[0]
    torch.testing.assert_close(h.grad, expected)


def test_cce_is_stable_for_large_logits() -> None:
    h, w, y = hidden_and_head(10, 50, 4, seed=3, scale=30.0)
    h, w = h.float(), w.float()
    out = cut_cross_entropy(h, w, y, 4, 8)
    ref = F.cross_entropy(h @ w.T, y, reduction="none")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-3)


def test_cce_gradient_filtering_skips_negligible_tiles_only() -> None:
    """Filtering skips tiles whose softmax is below eps everywhere: with one dominant token per
    row the skipped mass is tiny, so gradients move by far less than eps times the norm."""
    g = torch.Generator().manual_seed(4)
    v, d = 64, 8
    w = 0.1 * torch.randn(v, d, generator=g, dtype=torch.float64)
    w[:8] = 3.0 * torch.eye(d, dtype=torch.float64)  # the first tile: targets, orthogonal
    y = torch.randint(0, 8, (16,), generator=g)
    h = (4.0 * w[y]).requires_grad_()  # softmax ~1 on the target, ~e^-36 beyond the first tile
    exact = torch.autograd.grad(cut_cross_entropy(h, w, y, 16, 8).sum(), h)[0]
    stats: dict[str, int] = {}
    eps = 1e-6
    filtered = torch.autograd.grad(
        cut_cross_entropy(h, w, y, 16, 8, filter_eps=eps, stats=stats).sum(), h)[0]
    assert stats == {"tiles": 8, "skipped": 7}
    bound = eps * v * w.norm(dim=1).max() * len(y)
    assert (filtered - exact).abs().max() <= bound
    loss = LOSSES.get("cce").build({"filter_eps": eps, "token_block": 16, "vocab_block": 8})
    loss(h, y, weight=w).sum().backward()
    assert loss.run_info()["cce_skipped_tiles"] == stats["skipped"]


def test_cce_holds_one_tile_not_the_logits() -> None:
    """The loss's own memory: CE allocates several [N, V] matrices, CCE a few tiles."""
    n, v, d = 512, 8192, 16
    g = torch.Generator().manual_seed(5)
    h0, w0 = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g)
    y = torch.randint(0, v, (n,), generator=g)

    def peak(fn) -> int:  # type: ignore[no-untyped-def]
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        return peak_bytes(lambda: fn(h, w).sum().backward(), torch.device("cpu"))

    ce = peak(lambda h, w: F.cross_entropy(h @ w.T, y, reduction="none"))
    cce = peak(lambda h, w: cut_cross_entropy(h, w, y, 128, 512))
    logits = n * v * 4
    grads = (n + v) * d * 4
    assert ce >= 2 * logits
    assert cce - grads < logits / 8


def test_peak_bytes_counts_what_is_alive_at_the_peak() -> None:
    def work() -> None:
        a = torch.ones(2**18)  # 1 MiB
        b = torch.ones(2**18)
        del a, b
        torch.ones(2**17)

    assert 2 * 2**20 <= peak_bytes(work, torch.device("cpu")) < 2.2 * 2**20


def test_cce_rejects_bad_parameters() -> None:
    from lossbench.errors import UserError

    with pytest.raises(UserError, match="vocab_block"):
        LOSSES.get("cce").build({"vocab_block": 0})
    with pytest.raises(UserError, match="filter_eps"):
        LOSSES.get("cce").build({"filter_eps": -1.0})


# ---------------------------------------------------------------------------------------------
# EMO.
# ---------------------------------------------------------------------------------------------


def naive_demd(z: np.ndarray, y: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """sum_k q_k (1 - cos(e_k, e_y)) by explicit loops."""
    out = []
    for i in range(len(y)):
        q = np.exp(z[i] - z[i].max())
        q /= q.sum()
        ey = emb[y[i]]
        cost = [1 - emb[k] @ ey / (np.linalg.norm(emb[k]) * np.linalg.norm(ey))
                for k in range(len(q))]
        out.append(float(np.dot(q, cost)))
    return np.array(out)


def test_demd_matches_the_explicit_transport_sum() -> None:
    h, w, y = hidden_and_head(9, 13, 5, seed=6)
    z = h @ w.T
    np.testing.assert_allclose(demd(z, y, w).numpy(), naive_demd(z.numpy(), y.numpy(), w.numpy()),
                               rtol=1e-12, atol=1e-12)


def emd(q: np.ndarray, p: np.ndarray, cost: np.ndarray) -> float:
    """The earth mover distance by linear programming: min <T, C> with marginals q and p."""
    k = len(q)
    rows = np.kron(np.eye(k), np.ones(k))
    cols = np.kron(np.ones(k), np.eye(k))
    res = linprog(cost.ravel(), A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([q, p]),
                  bounds=(0, None), method="highs")
    return float(res.fun)


def test_demd_bounds_the_emd_and_is_exact_for_a_one_hot_target() -> None:
    """The paper's bound: the product plan is feasible, so DEMD >= EMD; for a one-hot data
    distribution every plan moves all of q to y, so they are equal."""
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(6, 4))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cost = 1 - unit @ unit.T
    for _ in range(5):
        q = rng.dirichlet(np.ones(6))
        y = int(rng.integers(6))
        one_hot = np.eye(6)[y]
        z = torch.tensor(np.log(q)).unsqueeze(0)
        bound = float(demd(z, torch.tensor([y]), torch.tensor(emb))[0])
        assert bound == pytest.approx(emd(q, one_hot, cost), abs=1e-9)
        p = rng.dirichlet(np.ones(6))  # a soft data distribution: strict upper bound
        assert float(q @ cost @ p) >= emd(q, p, cost) - 1e-9


def test_emo_value_is_ce_and_gradient_is_the_dynamic_mix() -> None:
    """L = (CE + sg(CE/DEMD) DEMD) / 2: value CE, gradient (grad CE + CE/DEMD grad DEMD) / 2,
    the cost read from the head without a gradient through it (official code's detach)."""
    h, w, y = hidden_and_head(7, 11, 4, seed=8)
    h.requires_grad_()
    w.requires_grad_()
    loss = LOSSES.get("emo").build({})
    out = loss(h, y, weight=w)
    ce = F.cross_entropy(h @ w.T, y, reduction="none")
    torch.testing.assert_close(out, ce)
    gh, gw = torch.autograd.grad(out.sum(), (h, w))
    ce_h, ce_w = torch.autograd.grad(ce.sum(), (h, w))
    bound = demd(h @ w.T, y, w.detach())
    ratio = (ce / bound).detach()
    d_h, d_w = torch.autograd.grad((ratio * bound).sum(), (h, w))
    torch.testing.assert_close(gh, 0.5 * (ce_h + d_h))
    torch.testing.assert_close(gw, 0.5 * (ce_w + d_w))


def test_emo_init_cost_is_frozen_at_the_first_step() -> None:
    h, w, y = hidden_and_head(5, 9, 4, seed=9)
    frozen = LOSSES.get("emo").build({"cost": "init"})
    live = LOSSES.get("emo").build({"cost": "live"})
    frozen(h, y, weight=w)
    w2 = w + torch.randn_like(w)
    h2 = h.clone().requires_grad_()
    h3 = h.clone().requires_grad_()
    g_frozen = torch.autograd.grad(frozen(h2, y, weight=w2).sum(), h2)[0]
    g_live = torch.autograd.grad(live(h3, y, weight=w2).sum(), h3)[0]
    h4 = h.clone().requires_grad_()
    ce = F.cross_entropy(h4 @ w2.T, y, reduction="none")
    bound = demd(h4 @ w2.T, y, w)  # the cost of the first step's head
    expected = torch.autograd.grad((ce + (ce / bound).detach() * bound).sum() / 2, h4)[0]
    assert not torch.allclose(g_frozen, g_live)
    torch.testing.assert_close(g_frozen, expected)


# ---------------------------------------------------------------------------------------------
# DCO.
# ---------------------------------------------------------------------------------------------


def logits(n: int, k: int, seed: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, k, generator=g, dtype=torch.float64),
            torch.randint(0, k, (n,), generator=g))


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_dco_is_minus_log_pass_at_n(n: int) -> None:
    z, y = logits(40, 7, seed=n)
    p = np.array([math.exp(r[t]) / sum(math.exp(v) for v in r)
                  for r, t in zip(z.tolist(), y.tolist(), strict=True)])
    expected = -np.log(1 - (1 - p) ** n)
    out = LOSSES.get("dco").build({"n": n})(z, y)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_dco_with_n_1_is_ce() -> None:
    z, y = logits(20, 50, seed=11, scale=5.0)
    torch.testing.assert_close(coverage_loss(z, y, 1), F.cross_entropy(z, y, reduction="none"))


@pytest.mark.parametrize("n", [2, 4, 16])
def test_dco_gradient_is_ce_gradient_times_the_confidence_factor(n: int) -> None:
    """The paper's confidence regulariser: grad L_cov = F(N, p) grad CE,
    F(N, p) = N p (1 - p)^(N-1) / (1 - (1 - p)^N)."""
    z, y = logits(12, 6, seed=12)
    z.requires_grad_()
    g_dco = torch.autograd.grad(coverage_loss(z, y, n).sum(), z)[0]
    g_ce = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), z)[0]
    p = z.detach().softmax(1).gather(1, y.unsqueeze(1))
    factor = n * p * (1 - p) ** (n - 1) / (1 - (1 - p) ** n)
    torch.testing.assert_close(g_dco, factor * g_ce)
    assert ((factor > 0) & (factor <= 1 + 1e-12)).all()


def test_dco_gradcheck() -> None:
    z, y = logits(5, 4, seed=13)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: coverage_loss(a, y, 8), (z,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dco_is_finite_at_the_extremes(dtype: torch.dtype) -> None:
    """p_y rounding to 1, p_y too small for exp, and the middle: finite values and gradients,
    and the small-p expansion -log(N p) where N p underflows."""
    z = torch.tensor([[200.0, 0.0, 0.0], [-900.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype,
                     requires_grad=True)
    y = torch.tensor([0, 0, 0])
    coverage_loss(z, y, 16).sum().backward()
    out = coverage_loss(z.detach(), y, 16)
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()
    assert float(out[0]) == pytest.approx(0.0, abs=1e-30)
    assert float(out[1]) == pytest.approx(900 + math.log(2) - math.log(16), rel=1e-6)
    assert float(out[2]) == pytest.approx(-math.log(1 - (2 / 3) ** 16), rel=1e-6)


def test_dco_decreases_with_n() -> None:
    """-log pass@N falls as N grows: more samples cover more."""
    z, y = logits(30, 9, seed=14)
    values = [coverage_loss(z, y, n) for n in (1, 2, 8, 32)]
    for a, b in itertools.pairwise(values):
        assert (b < a).all()


def test_dco_rejects_n_below_one() -> None:
    from lossbench.errors import UserError

    with pytest.raises(UserError, match="n must be >= 1"):
        LOSSES.get("dco").build({"n": 0})
