"""Logit losses: independent float64 references, gradients, stability and known identities."""

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

N = 7
KS = (2, 5, 100)

# ---------------------------------------------------------------------------------------------
# Naive references: explicit loops over examples/classes, plain exp on small logits.
# ---------------------------------------------------------------------------------------------

Ref = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _softmax_row(row: np.ndarray) -> np.ndarray:
    e = np.array([math.exp(v) for v in row])
    return e / e.sum()


def _per_row(fn: Callable[[np.ndarray, int], float]) -> Ref:
    def ref(z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([fn(z[i], int(y[i])) for i in range(len(y))])

    return ref


def _diffs(row: np.ndarray, y: int, c: float) -> list[float]:
    return [(c if k != y else 0.0) + row[k] - row[y] for k in range(len(row))]


def _ref_ldr(lam: float, c: float, transform: str = "none") -> Ref:
    def one(row: np.ndarray, y: int) -> float:
        if transform == "softplus-mean":
            sp = np.array([math.log(1 + math.exp(v)) for v in row])
            row = sp / sp.mean()
        d = _diffs(row, y, c)
        return lam * math.log(sum(math.exp(v / lam) for v in d) / len(d))

    return _per_row(one)


def _ref_ce(row: np.ndarray, y: int) -> float:
    return -math.log(_softmax_row(row)[y])


def _ref_gce(q: float) -> Ref:
    return _per_row(lambda r, y: (1 - _softmax_row(r)[y] ** q) / q)


def _rce_row(row: np.ndarray, y: int, a: float) -> float:
    p = _softmax_row(row)
    return -sum(p[k] * (0.0 if k == y else a) for k in range(len(row)))


def _mae_row(row: np.ndarray, y: int) -> float:
    p = _softmax_row(row)
    return sum(abs(p[k] - (1.0 if k == y else 0.0)) for k in range(len(row)))


def _rce_official_row(row: np.ndarray, y: int) -> float:
    """RCE as both official codes compute it: ``-sum_k p_k log(clamp(onehot_k, 1e-4, 1))``
    (SCE's loss.py, APL's ReverseCrossEntropy), without their clamp of p at 1e-7."""
    p = _softmax_row(row)
    return -sum(p[k] * math.log(max(1.0 if k == y else 0.0, 1e-4)) for k in range(len(row)))


def _mae_reduced_row(row: np.ndarray, y: int) -> float:
    """APL's MeanAbsoluteError, "Reduced MAE": ``1 - sum_k onehot_k p_k``."""
    p = _softmax_row(row)
    return 1.0 - sum(p[k] * (1.0 if k == y else 0.0) for k in range(len(row)))


def _nce_row(row: np.ndarray, y: int) -> float:
    p = _softmax_row(row)
    return math.log(p[y]) / sum(math.log(v) for v in p)


def _ref_sce(alpha: float, beta: float, a: float | None = None) -> Ref:
    """``a = None``: the official codes' clamped one-hot."""
    def one(r: np.ndarray, y: int) -> float:
        rce = _rce_official_row(r, y) if a is None else _rce_row(r, y, a)
        return alpha * _ref_ce(r, y) + beta * rce

    return _per_row(one)


def _ref_nce_rce(alpha: float, beta: float, a: float | None = None) -> Ref:
    """``a = None``: the official codes' clamped one-hot."""
    def one(r: np.ndarray, y: int) -> float:
        rce = _rce_official_row(r, y) if a is None else _rce_row(r, y, a)
        return alpha * _nce_row(r, y) + beta * rce

    return _per_row(one)


def _ref_nce_mae(alpha: float, beta: float, form: str = "reduced") -> Ref:
    mae = _mae_reduced_row if form == "reduced" else _mae_row
    return _per_row(lambda r, y: alpha * _nce_row(r, y) + beta * mae(r, y))


def _ref_focal(gamma: float) -> Ref:
    def one(row: np.ndarray, y: int) -> float:
        p = _softmax_row(row)[y]
        return -((1 - p) ** gamma) * math.log(p)

    return _per_row(one)


def _ref_ls(eps: float) -> Ref:
    def one(row: np.ndarray, y: int) -> float:
        p, k = _softmax_row(row), len(row)
        soft = [(1 - eps) * (j == y) + eps / k for j in range(k)]
        return -sum(soft[j] * math.log(p[j]) for j in range(k))

    return _per_row(one)


def _ref_tce(order: int) -> Ref:
    def one(row: np.ndarray, y: int) -> float:
        p = _softmax_row(row)[y]
        return sum((1 - p) ** i / i for i in range(1, order + 1))

    return _per_row(one)


def _ref_zloss(a: float, b: float) -> Ref:
    def one(row: np.ndarray, y: int) -> float:
        zn = (row[y] - np.mean(row)) / np.std(row)  # numpy std: population (ddof=0)
        return math.log(1 + math.exp(a * (b - zn))) / a

    return _per_row(one)


def _ref_comp_sum(tau: float) -> Ref:
    def one(row: np.ndarray, y: int) -> float:
        u = sum(math.exp(row[k] - row[y]) for k in range(len(row)) if k != y)
        if tau == 1:
            return math.log(1 + u)
        return ((1 + u) ** (1 - tau) - 1) / (1 - tau)

    return _per_row(one)


def _ref_cs(m: float) -> Ref:
    return _per_row(lambda r, y: max(0.0, max(m + r[k] - r[y] for k in range(len(r)) if k != y)))


def _ref_ww(m: float) -> Ref:
    return _per_row(lambda r, y: sum(max(0.0, m + r[k] - r[y]) for k in range(len(r)) if k != y))


# (name, params, reference); several settings per loss. ALDR is tested separately (stateful).
CASES: list[tuple[str, dict[str, Any], Ref]] = [
    ("ce", {}, _per_row(_ref_ce)),
    ("ldr", {}, _ref_ldr(10.0, 0.1, "softplus-mean")),
    ("ldr", {"lambda": 0.3, "margin": 0.5, "transform": "none"}, _ref_ldr(0.3, 0.5)),
    ("ldr", {"lambda": 2.0, "transform": "softplus-mean"}, _ref_ldr(2.0, 0.1, "softplus-mean")),
    ("ldr", {"lambda": 0.05, "margin": 0.5, "transform": "none"}, _ref_ldr(0.05, 0.5)),
    ("gce", {}, _ref_gce(0.7)),
    ("gce", {"q": 0.2}, _ref_gce(0.2)),
    ("sce", {}, _ref_sce(0.1, 1.0)),
    ("sce", {"alpha": 0.5, "beta": 2.0, "A": -6.0}, _ref_sce(0.5, 2.0, -6.0)),
    ("nce+rce", {}, _ref_nce_rce(1.0, 1.0)),
    ("nce+rce", {"alpha": 5.0, "beta": 0.3, "A": -4.0}, _ref_nce_rce(5.0, 0.3, -4.0)),
    ("nce+mae", {}, _ref_nce_mae(1.0, 1.0)),
    ("nce+mae", {"alpha": 0.5, "beta": 3.0}, _ref_nce_mae(0.5, 3.0)),
    ("nce+mae", {"beta": 2.0, "mae_form": "l1"}, _ref_nce_mae(1.0, 2.0, "l1")),
    ("mae", {}, _per_row(_mae_row)),
    ("focal", {}, _ref_focal(2.0)),
    ("focal", {"gamma": 0.5}, _ref_focal(0.5)),
    ("ls", {}, _ref_ls(0.1)),
    ("ls", {"epsilon": 0.4}, _ref_ls(0.4)),
    ("tce", {}, _ref_tce(2)),
    ("tce", {"order": 1}, _ref_tce(1)),
    ("tce", {"order": 6}, _ref_tce(6)),
    ("zloss", {}, _ref_zloss(1.0, 1.0)),
    ("zloss", {"a": 0.3, "b": 2.5}, _ref_zloss(0.3, 2.5)),
    ("comp-sum", {}, _ref_comp_sum(1.0)),
    ("comp-sum", {"kind": "exp"}, _ref_comp_sum(0.0)),
    ("comp-sum", {"kind": "gce", "tau": 1.3}, _ref_comp_sum(1.3)),
    ("comp-sum", {"kind": "mae"}, _ref_comp_sum(2.0)),
    ("cs-hinge", {}, _ref_cs(1.0)),
    ("cs-hinge", {"margin": 0.2}, _ref_cs(0.2)),
    ("ww-hinge", {}, _ref_ww(1.0)),
    ("ww-hinge", {"margin": 0.2}, _ref_ww(0.2)),
]
CASE_IDS = [f"{n}-{','.join(f'{k}={v}' for k, v in p.items()) or 'default'}" for n, p, _ in CASES]
ALL_LOSSES = sorted({n for n, _, _ in CASES} | {"aldr"})


def build(name: str, params: dict[str, Any] | None = None, num_train: int = 50) -> Loss:
    return LOSSES.get(name).build(params or {}, num_classes=10, num_train=num_train)


def logits(k: int, seed: int = 0, scale: float = 2.0, n: int = N) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed * 1000 + k)
    z = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    return z, y


def test_every_logits_loss_is_covered() -> None:
    mine = {e.name for e in LOSSES if e.factory.__module__ == "lossbench.losses.logits"}
    assert mine == set(ALL_LOSSES)
    for name in mine:
        entry = LOSSES.get(name)
        assert entry.tags["consumes"] == "logits" and entry.tags["paper"]
        assert entry.summary and entry.factory.consumes == "logits"


# ---------------------------------------------------------------------------------------------
# Reference values, shape, gradients, stability.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(("name", "params", "ref"), CASES, ids=CASE_IDS)
def test_matches_reference(name: str, params: dict[str, Any], ref: Ref, k: int) -> None:
    z, y = logits(k)
    out = build(name, params)(z, y)
    assert out.shape == (N,) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ref(z.numpy(), y.numpy()), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("k", (2, 5))
@pytest.mark.parametrize(("name", "params", "ref"), CASES, ids=CASE_IDS)
def test_gradcheck(name: str, params: dict[str, Any], ref: Ref, k: int) -> None:
    z, y = logits(k, seed=1)
    loss = build(name, params)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (z,), eps=1e-6, atol=1e-6)


def _extreme(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(k)
    z = 1e4 * torch.randint(0, 2, (N, k), generator=g).float().mul(2).sub(1)
    y = torch.randint(0, k, (N,), generator=g)
    z[0] = -1e4
    z[0, y[0]] = 1e4  # confidently right
    z[1] = 1e4
    z[1, y[1]] = -1e4  # confidently wrong
    z[2] = 0.0  # all equal
    return z, y


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(("name", "params", "ref"), CASES, ids=CASE_IDS)
def test_finite_on_extreme_float32(name: str, params: dict[str, Any], ref: Ref, k: int) -> None:
    if params.get("kind") == "exp":
        pytest.skip("comp-sum exp = 1/p_y - 1 is unbounded; it overflows by definition")
    z, y = _extreme(k)
    z.requires_grad_(True)
    out = build(name, params)(z, y)
    assert out.shape == (N,) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("k", KS)
def test_aldr_finite_on_extreme_float32(k: int) -> None:
    z, y = _extreme(k)
    for transform in ("none", "softplus-mean", "mean-abs"):
        loss = build("aldr", {"transform": transform}, num_train=N)
        for _ in range(2):
            zz = z.clone().requires_grad_(True)
            out = loss(zz, y, index=torch.arange(N))
            assert torch.isfinite(out).all()
            out.sum().backward()
            assert zz.grad is not None and torch.isfinite(zz.grad).all()
        assert torch.isfinite(loss.lambdas).all()


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 10)
    x = torch.randn(N, 8)
    y = torch.randint(0, 10, (N,))
    loss = build(name, num_train=N)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_logits = layer(x)
        assert out_logits.dtype == torch.bfloat16
        out = loss(out_logits, y, index=torch.arange(N))
    assert out.dtype == torch.float32 and out.shape == (N,) and torch.isfinite(out).all()
    out.sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_cuda_matches_cpu(name: str) -> None:
    z, y = logits(10, seed=3)
    cpu = build(name, num_train=N)
    gpu = build(name, num_train=N).to("cuda")
    idx = torch.arange(N)
    expect = cpu(z, y, index=idx)
    got = gpu(z.cuda(), y.cuda(), index=idx.cuda())
    torch.testing.assert_close(got.cpu(), expect, rtol=1e-10, atol=1e-12)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(z.float().cuda(), y.cuda(), index=idx.cuda())
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# Identities and limits.
# ---------------------------------------------------------------------------------------------


def _ce_t(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(z, y, reduction="none")


def _p_y(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)


def _d(z: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    off = torch.ones_like(z)
    off[torch.arange(len(y)), y] = 0
    return c * off + z - z.gather(1, y[:, None])


@pytest.mark.parametrize("lam", [0.01, 0.25, 10.0])
def test_ldr_float32_matches_float64_on_confident_rows(lam: float) -> None:
    """Margins from 0 to 100 lambda, half of the rows predicting their target by a wide gap:
    float32 stays within float32 rounding of the float64 definition."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2048, 10, generator=g, dtype=torch.float64) * 4 * lam
    y = torch.randint(0, 10, (2048,), generator=g)
    y[:1024] = z[:1024].argmax(dim=1)
    for margin in (0.0, lam, 100 * lam):
        want = lam * (torch.logsumexp(_d(z, y, margin) / lam, dim=1) - math.log(10))
        got = build("ldr", {"lambda": lam, "margin": margin, "transform": "none"})(z.float(), y)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * lam)


@pytest.mark.parametrize("k", KS)
def test_ldr_special_cases(k: int) -> None:
    z, y = logits(k, seed=4)
    close = torch.testing.assert_close
    close(
        build("ldr", {"lambda": 1.0, "margin": 0.0, "transform": "none"})(z, y),
        _ce_t(z, y) - math.log(k),
    )
    small = build("ldr", {"lambda": 1e-3, "margin": 0.3, "transform": "none"})(z, y)
    # lambda -> 0: max-margin loss; the gap is in [0, lambda log K].
    gap = small - _d(z, y, 0.3).amax(dim=1)
    assert (gap <= 1e-12).all() and (gap >= -1e-3 * math.log(k) - 1e-12).all()
    big = build("ldr", {"lambda": 1e6, "margin": 0.3, "transform": "none"})(z, y)
    close(big, _d(z, y, 0.3).mean(dim=1), rtol=0, atol=1e-4)


@pytest.mark.parametrize("k", KS)
def test_symmetric_losses_sum_to_constant(k: int) -> None:
    mae, rce = build("mae"), build("sce", {"alpha": 0.0, "beta": 1.0, "A": -4.0})
    nce = build("nce+mae", {"alpha": 1.0, "beta": 0.0})
    for seed in range(3):
        z, _ = logits(k, seed=seed, scale=3.0)
        per_class = [torch.full((N,), j) for j in range(k)]
        sums = {
            "mae": sum(mae(z, t) for t in per_class),
            "rce": sum(rce(z, t) for t in per_class),
            "nce": sum(nce(z, t) for t in per_class),
        }
        torch.testing.assert_close(sums["mae"], torch.full_like(sums["mae"], 2.0 * k - 2))
        torch.testing.assert_close(sums["rce"], torch.full_like(sums["rce"], 4.0 * (k - 1)))
        torch.testing.assert_close(sums["nce"], torch.ones_like(sums["nce"]))


@pytest.mark.parametrize("k", KS)
def test_probability_losses_reduce_to_ce_and_mae(k: int) -> None:
    z, y = logits(k, seed=5)
    close = torch.testing.assert_close
    ce, one_minus = _ce_t(z, y), 1 - _p_y(z, y)
    close(build("gce", {"q": 1e-7})(z, y), ce, rtol=1e-5, atol=1e-6)
    close(build("gce", {"q": 1.0})(z, y), one_minus)
    close(build("gce", {"q": 1.0})(z, y), build("mae")(z, y) / 2)
    close(build("focal", {"gamma": 0.0})(z, y), ce)
    close(build("ls", {"epsilon": 0.0})(z, y), ce)
    close(build("ce")(z, y), ce)
    close(build("tce", {"order": 1})(z, y), one_minus)
    # Taylor CE -> CE as the order grows (the remainder is small where p_y is not tiny).
    ok = _p_y(z, y) > 0.05
    close(build("tce", {"order": 400})(z, y)[ok], ce[ok], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("k", KS)
def test_comp_sum_members(k: int) -> None:
    z, y = logits(k, seed=6)
    close = torch.testing.assert_close
    p = _p_y(z, y)
    close(build("comp-sum", {"kind": "log"})(z, y), _ce_t(z, y))
    close(build("comp-sum", {"kind": "mae"})(z, y), 1 - p)
    close(build("comp-sum", {"kind": "exp"})(z, y), 1 / p - 1)
    for q in (0.1, 0.5, 0.9):
        # tau = 1 + q: ((1+u)^(-q) - 1)/(-q) = (1 - p_y^q)/q, i.e. exactly GCE(q) (not q*GCE).
        close(build("comp-sum", {"kind": "gce", "tau": 1 + q})(z, y), build("gce", {"q": q})(z, y))
    # tau is only used by kind=gce.
    close(build("comp-sum", {"kind": "log", "tau": 1.9})(z, y), _ce_t(z, y))


@pytest.mark.parametrize("k", (3, 5, 100))
def test_zloss_shift_and_scale_invariant(k: int) -> None:
    z, y = logits(k, seed=7)
    loss = build("zloss", {"a": 0.5, "b": 1.5})
    base = loss(z, y)
    for scale, shift in ((3.7, 2.1), (1e-3, -50.0), (250.0, 1e3)):
        torch.testing.assert_close(loss(scale * z + shift, y), base)
    assert torch.isfinite(loss(torch.zeros(N, k), y[:N])).all()


def test_hinges_zero_when_margin_met() -> None:
    z = torch.tensor([[5.0, 0.0, 3.9], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1])
    torch.testing.assert_close(build("cs-hinge")(z, y), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(build("ww-hinge")(z, y), torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(build("cs-hinge", {"margin": 1.2})(z, y), torch.tensor([0.1, 1.2]))


# ---------------------------------------------------------------------------------------------
# ALDR-KL: per-example state.
# ---------------------------------------------------------------------------------------------


def _aldr_ref(
    z: np.ndarray, y: np.ndarray, lam_old: np.ndarray, lam0: float, alpha: float, c: float
) -> tuple[np.ndarray, np.ndarray]:
    """Loop reference for one ALDR-KL step: (loss, new lambda)."""
    k = z.shape[1]
    losses, lams = [], []
    for i in range(len(y)):
        q = _softmax_row(z[i] / lam_old[i])
        kl = sum(qk * math.log(k * qk) for qk in q)
        lam = lam0 * (1 - kl / (alpha * math.log(k)))
        d = _diffs(z[i], int(y[i]), c)
        ldr = lam * math.log(sum(math.exp(v / lam) for v in d) / k)
        losses.append(ldr - alpha * math.log(k) / (2 * lam0) * (lam - lam0) ** 2)
        lams.append(lam)
    return np.array(losses), np.array(lams)


@pytest.mark.parametrize("k", KS)
def test_aldr_matches_reference_over_two_steps(k: int) -> None:
    lam0, alpha, c = 1.5, 3.0, 0.2
    loss = build(
        "aldr", {"lambda0": lam0, "alpha": alpha, "margin": c, "transform": "none"}, num_train=20
    )
    loss.double()
    index = torch.tensor([4, 0, 19, 7, 11, 2, 13])
    lam = np.full(N, lam0)
    for step in range(2):
        z, y = logits(k, seed=10 + step)
        expect, lam = _aldr_ref(z.numpy(), y.numpy(), lam, lam0, alpha, c)
        np.testing.assert_allclose(loss(z, y, index=index).numpy(), expect, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(loss.lambdas[index].numpy(), lam, rtol=1e-12)


@pytest.mark.parametrize("k", KS)
def test_aldr_state(k: int) -> None:
    lam0, alpha = 2.0, 1.5
    loss = build("aldr", {"lambda0": lam0, "alpha": alpha, "transform": "none"}, num_train=30)
    visited = torch.tensor([1, 5, 8, 13, 21, 22, 29])
    for seed in range(4):
        z, y = logits(k, seed=seed, scale=10.0 ** (seed - 1))  # flat to very peaked
        loss(z, y, index=visited)
        lams = loss.lambdas
        assert (lams >= lam0 * (1 - 1 / alpha) - 1e-6).all() and (lams <= lam0 + 1e-6).all()
    untouched = torch.ones(30, dtype=torch.bool)
    untouched[visited] = False
    assert (loss.lambdas[untouched] == lam0).all()
    assert (loss.lambdas[visited] < lam0).all()
    # Evaluation: lambda0 everywhere, no state change; equals LDR-KL(lambda0).
    before = loss.lambdas.clone()
    z, y = logits(k, seed=9)
    ldr = build("ldr", {"lambda": lam0, "margin": 0.1, "transform": "none"})
    torch.testing.assert_close(loss(z, y), ldr(z, y))
    assert torch.equal(loss.lambdas, before)


@pytest.mark.parametrize("k", KS)
def test_aldr_equals_ldr_at_new_lambda_plus_constant(k: int) -> None:
    lam0, alpha, c = 1.0, 2.0, 0.1
    loss = build(
        "aldr", {"lambda0": lam0, "alpha": alpha, "margin": c, "transform": "none"}, num_train=N
    )
    index = torch.arange(N)
    z0, y = logits(k, seed=12)
    loss(z0, y, index=index)  # move lambda_i away from lambda0 first
    z = (z0 + 0.5 * logits(k, seed=13)[0]).requires_grad_(True)
    out = loss(z, y, index=index)
    lam = loss.lambdas.double()
    z2 = z.detach().clone().requires_grad_(True)
    rows = [
        build("ldr", {"lambda": float(lam[i]), "margin": c, "transform": "none"})(
            z2[i : i + 1], y[i : i + 1]
        )
        for i in range(N)
    ]
    ldr = torch.cat(rows)
    const = alpha * math.log(k) / (2 * lam0) * (lam - lam0) ** 2
    torch.testing.assert_close(out, ldr - const, rtol=1e-6, atol=1e-7)
    out.sum().backward()
    ldr.sum().backward()
    torch.testing.assert_close(z.grad, z2.grad, rtol=1e-6, atol=1e-7)
    # Evaluation mode (index=None) is a plain LDR-KL at lambda0: gradcheck it too.
    zc = z.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (zc,))


def test_aldr_mean_abs_transform() -> None:
    z, y = logits(6, seed=14)
    got = build("aldr", {"transform": "mean-abs", "lambda0": 0.7})(z, y)
    zn = z / z.abs().mean(dim=1, keepdim=True)
    torch.testing.assert_close(got, build("ldr", {"lambda": 0.7, "transform": "none"})(zn, y))


# ---------------------------------------------------------------------------------------------
# Parameter validation through the registry.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("gce", {"q": "1.5"}, r"gce: q must be in \(0, 1\], got 1.5"),
        ("gce", {"q": "0"}, "q must be in"),
        ("gce", {"qq": "0.5"}, "gce: unknown parameter 'qq'; accepted: q"),
        ("ce", {"q": "0.5"}, "unknown parameter 'q'"),
        ("ldr", {"lambda": "0"}, "lambda must be > 0"),
        ("ldr", {"margin": "-1"}, "margin must be >= 0"),
        ("ldr", {"transform": "mean-abs"}, "accepted: none, softplus-mean"),
        ("aldr", {"alpha": "1"}, "alpha must be > 1"),
        ("aldr", {"lambda0": "-2"}, "lambda0 must be > 0"),
        ("sce", {"A": "4"}, "A must be < 0"),
        ("nce+rce", {"A": "0"}, "A must be < 0"),
        ("nce+mae", {"mae_form": "half"}, "accepted: reduced, l1"),
        ("focal", {"gamma": "-1"}, "gamma must be >= 0"),
        ("ls", {"epsilon": "1"}, r"epsilon must be in \[0, 1\)"),
        ("tce", {"order": "0"}, "order must be >= 1"),
        ("tce", {"order": "1.5"}, "expected int"),
        ("zloss", {"a": "0"}, "a must be > 0"),
        ("comp-sum", {"kind": "gce", "tau": "2"}, r"tau must be in \(1, 2\)"),
        ("comp-sum", {"kind": "hinge"}, "accepted: exp, log, gce, mae"),
    ],
)
def test_bad_params_are_user_errors(name: str, params: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        LOSSES.get(name).build(params, num_classes=10, num_train=5)


def test_schema() -> None:
    assert [p.name for p in LOSSES.get("ldr").params] == ["lambda", "margin", "transform"]
    aldr = LOSSES.get("aldr")
    assert aldr.context == ("num_train",)
    assert aldr.param("transform").choices == ("none", "softplus-mean", "mean-abs")
    assert LOSSES.get("comp-sum").resolve({}) == {"kind": "log", "tau": 1.5}


def test_rce_constant_is_one_parameter_with_the_official_default() -> None:
    # Both official codes clamp the one-hot label at 1e-4 before the (natural) log.
    for name in ("sce", "nce+rce"):
        assert LOSSES.get(name).param("A").default == pytest.approx(math.log(1e-4), rel=1e-15)
    assert LOSSES.get("nce+mae").param("mae_form").default == "reduced"


@pytest.mark.parametrize("name", ["ldr", "aldr"])
def test_softplus_mean_survives_very_negative_logits(name: str) -> None:
    """Rows whose logits are all far below 0 (a CNN reached them in its first epoch on
    Fashion-MNIST) keep the transform's exact value and finite gradients in float32, where
    softplus itself underflows to 0."""
    torch.manual_seed(0)
    base = torch.randn(6, 10, dtype=torch.float64)
    for shift in (0.0, -60.0, -120.0, -400.0):
        z32 = (base + shift).float().requires_grad_(True)
        z64 = z32.detach().double().requires_grad_(True)  # the same (float32-rounded) inputs
        y = torch.arange(6) % 10
        loss = LOSSES.get(name).build({}, num_classes=10, num_train=6)
        ref = LOSSES.get(name).build({}, num_classes=10, num_train=6).double()
        value = loss(z32, y, index=torch.arange(6)).sum()
        value.backward()
        expected = ref(z64, y, index=torch.arange(6)).sum()
        expected.backward()
        assert torch.isfinite(value) and torch.isfinite(z32.grad).all()
        assert torch.allclose(value.double(), expected, rtol=1e-5, atol=1e-5)
        assert torch.allclose(z32.grad.double(), z64.grad, rtol=1e-4, atol=1e-6)
    # The float64 path is the transform's definition where softplus does not underflow:
    z = torch.randn(4, 7, dtype=torch.float64) - 30.0
    sp = torch.log1p(torch.exp(z))
    from lossbench.losses.logits import _transform

    t, c = _transform(z, "softplus-mean")
    assert torch.allclose(t * c, sp / sp.mean(dim=1, keepdim=True), rtol=1e-12)
