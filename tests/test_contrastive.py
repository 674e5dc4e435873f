"""SogCLR / iSogCLR (lossbench.losses.contrastive) against float64 formulas written out row by
row, gradcheck, the papers' properties, and the per-example state's rules (update, determinism,
evaluation leaves it alone); LibAUC's GCLoss_v1 when it is installed."""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from lossbench.losses import LOSSES
from lossbench.losses.base import Loss

ROOT = Path(__file__).resolve().parents[1]


def two_views(b: int, d: int, seed: int, noise: float = 0.5) -> torch.Tensor:
    """[2B, D] float64: view 1 of B examples, then a noisy view 2."""
    g = torch.Generator().manual_seed(seed)
    h1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    return torch.cat([h1, h1 + noise * torch.randn(b, d, generator=g, dtype=torch.float64)])


def build(name: str, n: int, **params: object) -> Loss:
    return LOSSES.get(name).build(params, num_train=n).double()


# --------------------------------------------------------------------------------------------
# Reference: the global contrastive loss written out per row, in float64.
# --------------------------------------------------------------------------------------------


def reference_step(out: torch.Tensor, ids: torch.Tensor, tau: list[float], u_prev: list[float],
                   gamma: float, rho: float = 0.0
                   ) -> tuple[list[float], list[float], list[float], torch.Tensor]:
    """Per row r of two views (rows r and r +- B share an id): values ``tau_r (log u_r + g_r/u_r
    - 1 + rho) - s_r+``, the new ``u_i`` (mean over the id's two rows), the tau gradient of
    each id (``log u + rho - mean_n p_n s_n / tau``, averaged over its two rows), and the
    papers' stochastic gradient of the row-mean in ``out``: ``1/R sum_r [1/|N| sum_n
    exp(s_rn/tau)/u_r grad s_rn - grad s_r+]`` (by autograd of that surrogate, ``p`` fixed).
    ``u_prev[i] = 0`` marks a first visit (then ``u_r = g_r``)."""
    z = out / out.norm(dim=1, keepdim=True)
    rows, b = len(out), len(out) // 2
    s = z @ z.T
    sd = s.detach()
    values, u_rows, tg_rows = [], [], []
    surrogate = out.new_zeros(())
    for r in range(rows):
        i = r % b
        neg = [j for j in range(rows) if ids[j] != ids[r]]
        pos = [j for j in range(rows) if ids[j] == ids[r] and j != r]
        t = tau[i]
        g = sum(math.exp(float(sd[r, n]) / t) for n in neg) / len(neg)
        u = g if u_prev[i] == 0 else (1 - gamma) * u_prev[i] + gamma * g
        s_pos = sum(float(sd[r, p]) for p in pos) / len(pos)
        values.append(t * (math.log(u) + g / u - 1 + rho) - s_pos)
        u_rows.append(u)
        p = [math.exp(float(sd[r, n]) / t) / u for n in neg]
        tg_rows.append(math.log(u) + rho - sum(pk * float(sd[r, n]) / t
                                               for pk, n in zip(p, neg, strict=True)) / len(neg))
        weights = torch.zeros(rows, dtype=out.dtype)
        weights[neg] = torch.tensor(p, dtype=out.dtype) / len(neg)
        surrogate = surrogate + (weights * s[r]).sum() - s[r, pos].mean()
    u_new = [(u_rows[i] + u_rows[i + b]) / 2 for i in range(b)]
    tau_grad = [(tg_rows[i] + tg_rows[i + b]) / 2 for i in range(b)]
    (grad,) = torch.autograd.grad(surrogate / rows, out)
    return values, u_new, tau_grad, grad


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("temperature,gamma", [(0.1, 0.9), (0.5, 0.3)])
def test_sogclr_matches_the_row_formula_over_several_steps(seed: int, temperature: float,
                                                           gamma: float) -> None:
    """Values, stored u and gradients over three steps; the second and third revisit ids, so
    the moving average with gamma < 1 is exercised."""
    n, b = 8, 4
    loss = build("sogclr", n, temperature=temperature, gamma=gamma)
    u = [0.0] * n
    for step, batch in enumerate([[0, 1, 2, 3], [2, 3, 4, 5], [0, 5, 1, 3]]):
        ids = torch.tensor(batch)
        out = two_views(b, 5, seed * 10 + step).requires_grad_()
        values, u_new, _, grad = reference_step(out, ids.repeat(2), [temperature] * b,
                                                [u[i] for i in batch], gamma)
        mine = loss(out, ids.repeat(2), index=ids.repeat(2))
        torch.testing.assert_close(mine, torch.tensor(values, dtype=torch.float64))
        (my_grad,) = torch.autograd.grad(mine.mean(), out)
        torch.testing.assert_close(my_grad, grad)
        for i, value in zip(batch, u_new, strict=True):
            u[i] = value
        torch.testing.assert_close(loss.log_u.exp()[ids], torch.tensor(u_new, dtype=torch.float64))
    assert torch.isinf(loss.log_u[6:]).all()  # never seen


@pytest.mark.parametrize("seed", [0, 1])
def test_isogclr_matches_the_row_formula_and_the_official_tau_step(seed: int) -> None:
    """Values (with the tau rho term), stored u, gradients with each example's tau, and the
    projected momentum step: d = clip(mean tau-gradient), m <- (1-beta) m + beta d,
    tau <- clip(tau - eta m, tau_min, tau_max)."""
    n, b = 6, 4
    params = {"tau_init": 0.2, "gamma": 0.6, "rho": 0.3, "eta": 0.5, "beta": 0.7,
              "tau_min": 0.05, "tau_max": 0.6, "grad_clip": 2.0}
    loss = build("isogclr", n, **params)
    # tau_i start at tau_init as stored (a float32 buffer cast to float64: 0.2 rounded)
    u, tau, mom = [0.0] * n, loss.tau.tolist(), [0.0] * n
    for step, batch in enumerate([[0, 1, 2, 3], [2, 3, 4, 5], [0, 5, 1, 3]]):
        ids = torch.tensor(batch)
        out = two_views(b, 5, seed * 10 + step, noise=1.0).requires_grad_()
        values, u_new, tau_grad, grad = reference_step(
            out, ids.repeat(2), [tau[i] for i in batch], [u[i] for i in batch],
            params["gamma"], params["rho"])
        mine = loss(out, ids.repeat(2), index=ids.repeat(2))
        torch.testing.assert_close(mine, torch.tensor(values, dtype=torch.float64))
        (my_grad,) = torch.autograd.grad(mine.mean(), out)
        torch.testing.assert_close(my_grad, grad)
        for k, i in enumerate(batch):
            u[i] = u_new[k]
            d = min(max(tau_grad[k], -params["grad_clip"]), params["grad_clip"])
            mom[i] = (1 - params["beta"]) * mom[i] + params["beta"] * d
            tau[i] = min(max(tau[i] - params["eta"] * mom[i], params["tau_min"]),
                         params["tau_max"])
        torch.testing.assert_close(loss.log_u.exp()[ids], torch.tensor(u_new, dtype=torch.float64))
        torch.testing.assert_close(loss.tau_momentum, torch.tensor(mom, dtype=torch.float64))
        torch.testing.assert_close(loss.tau, torch.tensor(tau, dtype=torch.float64))
    assert len(set(tau)) > 2, "the tau step was not exercised"


# --------------------------------------------------------------------------------------------
# gradcheck (on a copy of the loss per evaluation, so every evaluation sees the same state).
#
# With a stored state and gamma < 1 the training gradient holds u fixed (the papers' update, not
# the derivative of the value); those gradients are checked against the formula above. gradcheck
# covers where the value's derivative is the training gradient: evaluation (index=None), first
# visits and gamma = 1 over a stored state (u = g).
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", [
    ("infonce", {"temperature": 0.3}),
    ("sogclr", {"temperature": 0.3, "gamma": 0.5}),
    ("sogclr", {"temperature": 0.3, "gamma": 1.0}),
    ("isogclr", {"tau_init": 0.3, "gamma": 0.5, "rho": 0.2, "eta": 0.1}),
    ("isogclr", {"tau_init": 0.3, "gamma": 1.0, "rho": 0.2, "eta": 0.1}),
])
@pytest.mark.parametrize("index", ["none", "first-visit", "stored"])
def test_gradcheck(name: str, params: dict[str, float], index: str) -> None:
    n, b = 5, 3
    loss = LOSSES.get(name).build(params, num_train=n, num_classes=n, embedding_dim=4).double()
    ids = torch.tensor([0, 2, 4]).repeat(2)
    if index == "stored":
        if params.get("gamma", 1.0) < 1.0:
            pytest.skip("u held fixed: checked against the update formula instead")
        loss(two_views(b, 4, 7), ids, index=ids)  # a past state (and moved tau_i)

    def f(out: torch.Tensor) -> torch.Tensor:
        fresh = copy.deepcopy(loss)
        return fresh(out, ids, index=None if index == "none" else ids)

    assert torch.autograd.gradcheck(f, (two_views(b, 4, 8).requires_grad_(),))


# --------------------------------------------------------------------------------------------
# The papers' properties.
# --------------------------------------------------------------------------------------------


def minibatch_gcl(out: torch.Tensor, b: int, tau: float) -> torch.Tensor:
    """``tau log (1/|N| sum_n exp(s_rn / tau)) - s_r+`` per row: the mini-batch estimate of the
    global contrastive loss (SogCLR Eq. 3 with the batch for the data set)."""
    z = torch.nn.functional.normalize(out, dim=1)
    s = z @ z.T
    rows = torch.arange(2 * b)
    partner = (rows + b) % (2 * b)
    neg = torch.ones_like(s, dtype=torch.bool)
    neg[rows, rows] = False
    neg[rows, partner] = False
    log_g = torch.logsumexp(s.masked_fill(~neg, -math.inf) / tau, dim=1) - math.log(2 * b - 2)
    return tau * log_g - s[rows, partner]


def test_sogclr_with_gamma_one_is_the_minibatch_loss_whatever_the_state() -> None:
    b, tau = 4, 0.2
    loss = build("sogclr", 8, temperature=tau, gamma=1.0)
    ids = torch.tensor([0, 1, 2, 3]).repeat(2)
    loss(two_views(b, 6, 0), ids, index=ids)  # a different past: irrelevant at gamma = 1
    out = two_views(b, 6, 1)
    torch.testing.assert_close(loss(out, ids, index=ids), minibatch_gcl(out, b, tau))
    torch.testing.assert_close(loss(out, ids), minibatch_gcl(out, b, tau))  # evaluation


def test_sogclr_value_is_an_upper_bound_touching_at_u_equal_g() -> None:
    """With gamma < 1 the row value is the first-order expansion of tau log g around u, which
    lies above the mini-batch loss tau log g - s+ (log x <= x - 1) and equals it on a first
    visit; the stored u moved from its first value."""
    b, tau = 4, 0.2
    loss = build("sogclr", 4, temperature=tau, gamma=0.3)
    ids = torch.arange(b).repeat(2)
    first = two_views(b, 6, 0)
    torch.testing.assert_close(loss(first, ids, index=ids), minibatch_gcl(first, b, tau))
    log_u_prev = loss.log_u.clone()
    second = two_views(b, 6, 1)
    value = loss(second, ids, index=ids)
    batch = minibatch_gcl(second, b, tau)
    assert (value >= batch - 1e-12).all() and (value > batch + 1e-6).any()
    assert not torch.equal(loss.log_u, log_u_prev)


def second_pos(out: torch.Tensor, b: int) -> torch.Tensor:
    z = torch.nn.functional.normalize(out, dim=1)
    rows = torch.arange(2 * b)
    return (z * z[(rows + b) % (2 * b)]).sum(dim=1)


def test_isogclr_with_frozen_tau_and_no_rho_is_sogclr() -> None:
    """eta = 0 keeps every tau_i at tau_init; rho = 0 drops the DRO term: then iSogCLR's values,
    gradients and u are SogCLR's at temperature tau_init."""
    sog = build("sogclr", 6, temperature=0.3, gamma=0.7)
    iso = build("isogclr", 6, tau_init=0.3, gamma=0.7, rho=0.0, eta=0.0)
    for step, batch in enumerate([[0, 1, 2], [1, 2, 3], [3, 4, 5]]):
        ids = torch.tensor(batch).repeat(2)
        out = two_views(3, 5, step).requires_grad_()
        a, c = sog(out, ids, index=ids), iso(out, ids, index=ids)
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(*(torch.autograd.grad(v.mean(), out)[0] for v in (a, c)))
    torch.testing.assert_close(sog.log_u, iso.log_u)
    assert torch.equal(iso.tau, build("isogclr", 6, tau_init=0.3).tau)  # never moved


def test_isogclr_tau_gradient_is_the_derivative_in_tau() -> None:
    """At u = g (a first visit) the recorded tau gradient is d/dtau [tau log g(tau) + tau rho]
    (the objective's derivative), checked by finite differences: eta = 1, beta = 1 and no
    clipping make the step tau_init - tau_new equal to it."""
    b, rho, eta = 3, 0.2, 1e-3
    out = two_views(b, 5, 3)
    loss = build("isogclr", b, tau_init=0.3, rho=rho, eta=eta, beta=1.0, grad_clip=math.inf,
                 tau_min=0.05, tau_max=1.0)
    tau0 = loss.tau.clone()  # 0.3 as stored (float32-rounded)
    t = float(tau0[0])
    ids = torch.arange(b).repeat(2)
    loss(out, ids, index=ids)
    recorded = (tau0 - loss.tau) / eta

    def objective(tau: float) -> torch.Tensor:
        per_row = minibatch_gcl(out, b, tau) + second_pos(out, b) + tau * rho
        return (per_row[:b] + per_row[b:]) / 2

    h = 1e-6
    numeric = (objective(t + h) - objective(t - h)) / (2 * h)
    torch.testing.assert_close(recorded, numeric, rtol=1e-5, atol=1e-6)


def test_infonce_on_two_views_is_simclr_nt_xent() -> None:
    """The mean over the 2B rows is SimCLR's loss 1/2N sum_k [l(2k-1,2k) + l(2k,2k-1)]."""
    b, tau = 4, 0.5
    out = two_views(b, 6, 0)
    z = torch.nn.functional.normalize(out, dim=1)
    sim = z @ z.T / tau
    terms = []
    for r in range(2 * b):
        others = [j for j in range(2 * b) if j != r]
        terms.append(-(sim[r, (r + b) % (2 * b)] - torch.logsumexp(sim[r, others], dim=0)))
    loss = LOSSES.get("infonce").build({"temperature": tau})
    ids = torch.arange(b).repeat(2)
    torch.testing.assert_close(loss(out, ids).mean(), torch.stack(terms).mean())


# --------------------------------------------------------------------------------------------
# State: determinism, order, evaluation.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sogclr", "isogclr"])
def test_state_is_deterministic_and_does_not_depend_on_row_order(name: str) -> None:
    a, c = build(name, 8, gamma=0.5), build(name, 8, gamma=0.5)
    out = two_views(4, 6, 0)
    ids = torch.tensor([5, 1, 7, 2])
    perm = torch.tensor([2, 0, 3, 1])
    for _ in range(3):
        va = a(out, ids.repeat(2), index=ids.repeat(2))
        vc = c(torch.cat([out[:4][perm], out[4:][perm]]), ids[perm].repeat(2),
               index=ids[perm].repeat(2))
        torch.testing.assert_close(vc, torch.cat([va[:4][perm], va[4:][perm]]))
    for key, value in a.state_dict().items():
        torch.testing.assert_close(c.state_dict()[key], value, rtol=1e-14, atol=0)
    again = build(name, 8, gamma=0.5)
    for _ in range(3):
        again(out, ids.repeat(2), index=ids.repeat(2))
    for key, value in a.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["sogclr", "isogclr"])
def test_evaluation_reads_and_writes_no_state(name: str) -> None:
    loss = build(name, 6, gamma=0.5)
    ids = torch.tensor([0, 1, 2]).repeat(2)
    loss(two_views(3, 5, 0), ids, index=ids)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    fresh = build(name, 6, gamma=0.5)
    out = two_views(3, 5, 1)
    torch.testing.assert_close(loss(out, ids), fresh(out, ids))  # no state read
    for key, value in loss.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_parameters_are_one_line_errors() -> None:
    from lossbench.errors import UserError

    for name, params, match in [
        ("sogclr", {"gamma": 0.0}, "gamma must be in"),
        ("sogclr", {"temperature": -1.0}, "temperature must be > 0"),
        ("isogclr", {"tau_init": 2.0}, "tau_init must be in"),
        ("isogclr", {"tau_min": 0.5, "tau_max": 0.1}, "tau_min <= tau_max"),
        ("isogclr", {"beta": 0.0}, "beta must be in"),
    ]:
        with pytest.raises((UserError, ValueError), match=match):
            LOSSES.get(name).build(params, num_train=4)


# --------------------------------------------------------------------------------------------
# LibAUC (optional): the same inputs, step after step.
# --------------------------------------------------------------------------------------------


def test_matches_libauc_gcloss_v1() -> None:
    pytest.importorskip("libauc.losses.contrastive")
    spec = importlib.util.spec_from_file_location("libauc_crosscheck",
                                                  ROOT / "benchmarks" / "libauc_crosscheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["libauc_crosscheck"] = module
    spec.loader.exec_module(module)
    for case in module.CASES:
        worst = module.compare(case, n=24, batch=6, dim=8, passes=3, seed=0,
                               dtype=torch.float32)
        assert worst["grad"] < 1e-5 and worst["u_rel"] < 1e-4, (case, worst)
        if "tau" in worst:
            assert worst["tau"] < 1e-4 and worst["tau_moved"] > 0, (case, worst)
