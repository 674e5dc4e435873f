"""Distillation losses: independent float64 references (explicit loops over rows and classes),
gradients, and the papers' stated properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lossbench.errors import UserError
from lossbench.losses import LOSSES
from lossbench.losses.distill import (
    kd_term,
    nckd,
    plackett_luce_nll,
    tckd,
    teacher_optimal_order,
)

N, K = 6, 5


def _softmax(row: np.ndarray, temp: float = 1.0) -> np.ndarray:
    e = np.array([math.exp(v / temp) for v in row])
    return e / e.sum()


def _kl(q: np.ndarray, p: np.ndarray) -> float:
    return float(sum(qk * math.log(qk / pk) for qk, pk in zip(q, p, strict=True)))


def kd_ref(z: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, temp: float) -> np.ndarray:
    """Hinton et al. 2015: (1 - alpha) CE + alpha T^2 KL(softmax(t/T) || softmax(z/T))."""
    out = []
    for zi, ti, yi in zip(z, t, y, strict=True):
        ce = -math.log(_softmax(zi)[yi])
        out.append((1 - alpha) * ce + alpha * temp**2 * _kl(_softmax(ti, temp),
                                                            _softmax(zi, temp)))
    return np.array(out)


def dkd_ref(z: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, beta: float,
            temp: float) -> np.ndarray:
    """Zhao et al. 2022, Eq. 1-2 (as the official code weights it): CE + T^2 (alpha TCKD +
    beta NCKD), b = [p_t, 1 - p_t], p_hat the softmax over the non-target logits alone."""
    out = []
    for zi, ti, yi in zip(z, t, y, strict=True):
        ps, pt = _softmax(zi, temp), _softmax(ti, temp)
        b_s, b_t = np.array([ps[yi], 1 - ps[yi]]), np.array([pt[yi], 1 - pt[yi]])
        rest = [k for k in range(len(zi)) if k != yi]
        hat_s, hat_t = _softmax(zi[rest], temp), _softmax(ti[rest], temp)
        ce = -math.log(_softmax(zi)[yi])
        out.append(ce + temp**2 * (alpha * _kl(b_t, b_s) + beta * _kl(hat_t, hat_s)))
    return np.array(out)


def pld_ref(z: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float) -> np.ndarray:
    """Sum over ranks of the teacher-optimal ranking (label first, then teacher order) of
    teacher probability x -log(student's PL choice probability among the classes left)."""
    out = []
    for zi, ti, yi in zip(z, t, y, strict=True):
        order = [int(yi), *sorted((k for k in range(len(zi)) if k != yi), key=lambda k: -ti[k])]
        q = _softmax(ti, temp)
        total = 0.0
        for pos, cls in enumerate(order):
            left = order[pos:]
            total += q[cls] * -math.log(math.exp(zi[cls]) / sum(math.exp(zi[c]) for c in left))
        out.append(total)
    return np.array(out)


def _inputs(seed: int = 0, k: int = K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, k, generator=g, dtype=torch.float64) * 2
    t = torch.randn(N, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, k, (N,), generator=g)
    return z, t, y


def _build(name: str, teacher: torch.Tensor, **params: object) -> torch.nn.Module:
    return LOSSES.get(name).build(params, teacher_logits=teacher)


def _call(loss: torch.nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return loss(z, y, index=torch.arange(len(y)))


CASES = [
    ("kd", {"alpha": 0.7, "temperature": 3.0},
     lambda z, t, y: kd_ref(z, t, y, 0.7, 3.0)),
    ("dkd", {"alpha": 1.5, "beta": 6.0, "temperature": 2.0},
     lambda z, t, y: dkd_ref(z, t, y, 1.5, 6.0, 2.0)),
    ("pld", {"temperature": 2.0}, lambda z, t, y: pld_ref(z, t, y, 2.0)),
    ("pld", {}, lambda z, t, y: pld_ref(z, t, y, 1.0)),
]


@pytest.mark.parametrize(("name", "params", "ref"), CASES)
def test_matches_float64_reference(name: str, params: dict, ref) -> None:
    for seed in range(3):
        z, t, y = _inputs(seed)
        got = _call(_build(name, t, **params), z, y)
        want = ref(z.numpy(), t.numpy(), y.numpy())
        assert got.shape == (N,)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "params", "ref"), CASES)
def test_gradcheck(name: str, params: dict, ref) -> None:
    z, t, y = _inputs(5)
    loss = _build(name, t, **params)
    z = z.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: _call(loss, v, y), (z,))


def test_reads_the_teacher_rows_of_its_batch_by_index() -> None:
    z, t, y = _inputs(1)
    table = torch.cat([torch.randn(3, K, dtype=torch.float64), t])  # rows 3.. are the batch's
    for name in ("kd", "dkd", "pld"):
        by_index = LOSSES.get(name).build({}, teacher_logits=table)(z, y, index=torch.arange(3, 9))
        direct = _call(_build(name, t), z, y)
        torch.testing.assert_close(by_index, direct)
        with pytest.raises(ValueError, match="index"):
            _build(name, t)(z, y)


def test_kd_alpha_zero_is_ce() -> None:
    z, t, y = _inputs(2)
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    torch.testing.assert_close(_call(_build("kd", t, alpha=0.0), z, y), ce)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_term_vanishes_with_its_gradient_when_student_equals_teacher(temp: float) -> None:
    z, _, y = _inputs(3)
    z = z.requires_grad_()
    soft = _call(_build("kd", z.detach().clone(), alpha=1.0, temperature=temp), z, y)
    (grad,) = torch.autograd.grad(soft.sum(), z)
    assert soft.abs().max() < 1e-12 and grad.abs().max() < 1e-12
    # with alpha in (0, 1) what is left is exactly the CE part's gradient, scaled by 1 - alpha
    mixed = _call(_build("kd", z.detach().clone(), alpha=0.4, temperature=temp), z, y)
    (grad_mixed,) = torch.autograd.grad(mixed.sum(), z)
    ce = torch.nn.functional.cross_entropy(z, y, reduction="sum")
    (grad_ce,) = torch.autograd.grad(ce, z)
    torch.testing.assert_close(grad_mixed, 0.6 * grad_ce)


def test_kd_soft_gradient_scales_as_one_over_t_without_the_t2_factor() -> None:
    """Hinton et al., Sec. 2.1: at high T the soft gradient is (z - t) / (K T^2) for zero-mean
    logits; the T^2 factor keeps it at (z - t) / K."""
    z, t, y = _inputs(4)
    z, t = z - z.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    z = z.requires_grad_()
    temp = 1e4  # the approximation's error is O(|z|^2 / T)
    (grad,) = torch.autograd.grad(
        _call(_build("kd", t, alpha=1.0, temperature=temp), z, y).sum(), z)
    torch.testing.assert_close(grad, (z.detach() - t) / K, rtol=0, atol=2e-3)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_decomposition_reformulates_kd(temp: float) -> None:
    """DKD Eq. 1: KD = TCKD + (1 - p_t^T) NCKD, with p_t^T the teacher's target probability."""
    for seed in range(3):
        z, t, y = _inputs(seed)
        q_target = torch.softmax(t / temp, 1).gather(1, y[:, None]).squeeze(1)
        torch.testing.assert_close(kd_term(z, t, temp),
                                   tckd(z, t, y, temp) + (1 - q_target) * nckd(z, t, y, temp))


def test_dkd_at_alpha1_beta1_is_ce_plus_the_decoupled_terms_and_kd_only_reweights() -> None:
    z, t, y = _inputs(6)
    temp = 2.0
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    dkd = _call(_build("dkd", t, alpha=1.0, beta=1.0, temperature=temp), z, y)
    decoupled = (dkd - ce) / temp**2
    torch.testing.assert_close(decoupled, tckd(z, t, y, temp) + nckd(z, t, y, temp))
    # KD couples NCKD with 1 - p_t <= 1, so DKD(1, 1) bounds KD's KL from above
    assert (kd_term(z, t, temp) <= decoupled + 1e-12).all()


def test_dkd_is_stable_when_the_target_probability_is_one() -> None:
    z, t, y = _inputs(7)
    big = 1e4 * torch.nn.functional.one_hot(y, K).double()
    z = (z + big).requires_grad_()
    out = _call(_build("dkd", t + big), z, y)
    (grad,) = torch.autograd.grad(out.sum(), z)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()


def test_dkd_warmup_ramps_the_decoupled_term_linearly() -> None:
    z, t, y = _inputs(8)
    loss = _build("dkd", t, warmup=4)
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    full = _call(_build("dkd", t), z, y) - ce
    for epoch in range(6):
        torch.testing.assert_close(_call(loss, z, y) - ce, min((epoch + 1) / 4, 1.0) * full)
        loss.on_epoch_end(epoch)


def test_pld_is_translation_invariant_and_convex() -> None:
    z, t, y = _inputs(9)
    loss = _build("pld", t)
    torch.testing.assert_close(_call(loss, z + 7.5, y), _call(loss, z, y))
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        a, b = torch.randn(2, N, K, generator=g, dtype=torch.float64) * 3
        lam = float(torch.rand(1, generator=g))
        mix = _call(loss, lam * a + (1 - lam) * b, y)
        assert (mix <= lam * _call(loss, a, y) + (1 - lam) * _call(loss, b, y) + 1e-12).all()


def test_pld_first_rank_is_teacher_weighted_ce_and_a_certain_teacher_gives_ce() -> None:
    z, t, y = _inputs(10)
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    q_y = torch.softmax(t, 1).gather(1, y[:, None]).squeeze(1)
    rest = _call(_build("pld", t), z, y) - q_y * ce  # the later ranks: non-negative
    assert (rest >= 0).all()
    certain = t + 100.0 * torch.nn.functional.one_hot(y, K).double()
    torch.testing.assert_close(_call(_build("pld", certain), z, y), ce)


def test_pld_weights_recover_ce_and_listmle() -> None:
    """PLD Sec. 4.2: weights (1, 0, ..., 0) give CE; unit weights give ListMLE's -log P(pi*)."""
    z, t, y = _inputs(11)
    ranked = z.gather(1, teacher_optimal_order(t, y))
    first = torch.zeros_like(z)
    first[:, 0] = 1.0
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    torch.testing.assert_close(plackett_luce_nll(ranked, first), ce)
    order = teacher_optimal_order(t, y)
    listmle = torch.stack([sum(torch.logsumexp(z[i, order[i, k:]], 0) - z[i, order[i, k]]
                               for k in range(K)) for i in range(N)])
    torch.testing.assert_close(plackett_luce_nll(ranked, torch.ones_like(z)), listmle)
    assert (order[:, 0] == y).all()


def test_plackett_luce_likelihood_sums_to_one_over_rankings() -> None:
    """With unit weights the PL negative log-likelihood is that of a distribution over all K!
    rankings (ListMLE's model)."""
    s = torch.randn(4, dtype=torch.float64)
    total = sum(math.exp(-float(plackett_luce_nll(s[list(p)][None], torch.ones(1, 4))))
                for p in itertools.permutations(range(4)))
    assert total == pytest.approx(1.0, abs=1e-12)


def test_distillation_losses_are_named_not_all_and_check_their_parameters() -> None:
    for name in ("kd", "dkd", "pld"):
        entry = LOSSES.get(name)
        assert entry.tags["explicit"] and "teacher_logits" in entry.context
    with pytest.raises(UserError, match="alpha must be in"):
        LOSSES.get("kd").build({"alpha": 1.5}, teacher_logits=torch.zeros(2, 3))
    with pytest.raises(UserError, match="temperature must be > 0"):
        LOSSES.get("pld").build({"temperature": 0}, teacher_logits=torch.zeros(2, 3))
    with pytest.raises(UserError, match="warmup"):
        LOSSES.get("dkd").build({"warmup": -1}, teacher_logits=torch.zeros(2, 3))
