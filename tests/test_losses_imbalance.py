"""Imbalance losses: independent float64 references (plain Python loops over the papers'
equations), gradients (gradcheck), and the papers' stated properties."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from lossbench.errors import UserError
from lossbench.losses import LOSSES
from lossbench.losses.base import Loss
from lossbench.losses.imbalance import ensloss_derivatives
from lossbench.registry import check_params

COUNTS = (50, 20, 8, 3, 1)


def build(name: str, params: dict[str, Any] | None = None, k: int = 5, seed: int = 0) -> Loss:
    counts = COUNTS if k == len(COUNTS) else tuple(range(k, 0, -1))
    return LOSSES.get(name).build(params or {}, num_classes=k, num_train=10,
                                  class_counts=counts, seed=seed).double()


def problem(seed: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 1.5
    y = torch.randint(0, k, (n,), generator=g)
    y[:k] = torch.arange(k)  # every class present
    return z, y


def softmax_row(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


# --- references --------------------------------------------------------------------------------


def ref_ldam(z: torch.Tensor, y: torch.Tensor, counts: tuple[int, ...], c: float, s: float
             ) -> list[float]:
    inv = [n ** -0.25 for n in counts]
    delta = [c * v / max(inv) for v in inv]
    out = []
    for row, t in zip(z.tolist(), y.tolist(), strict=True):
        adj = [s * (v - (delta[t] if j == t else 0.0)) for j, v in enumerate(row)]
        out.append(-math.log(math.exp(adj[t]) / sum(math.exp(v) for v in adj)))
    return out


def ref_la_ce(z: torch.Tensor, y: torch.Tensor, counts: tuple[int, ...], tau: float
              ) -> list[float]:
    prior = [n / sum(counts) for n in counts]
    out = []
    for row, t in zip(z.tolist(), y.tolist(), strict=True):
        p = softmax_row([v + tau * math.log(pi) for v, pi in zip(row, prior, strict=True)])
        out.append(-math.log(p[t]))
    return out


def ref_dice(z: torch.Tensor, y: torch.Tensor, alpha: float, gamma: float, square: bool
             ) -> list[float]:
    out = []
    for row, t in zip(z.tolist(), y.tolist(), strict=True):
        total = 0.0
        for k, p in enumerate(softmax_row(row)):
            label = 1.0 if k == t else 0.0
            q = (1 - p) ** alpha * p
            den = q**2 + label**2 if square else q + label
            total += 1 - (2 * q * label + gamma) / (den + gamma)
        out.append(total)
    return out


def ref_anyloss(z: torch.Tensor, y: torch.Tensor, metric: str, amp: float) -> float:
    n, k = z.shape
    if k == 2:
        columns = [([r[1] - r[0] for r in z.tolist()], y.tolist())]
    else:
        columns = [([r[j] for r in z.tolist()], [int(t == j) for t in y.tolist()])
                   for j in range(k)]
    eps = 1e-5
    values = []
    for scores, labels in columns:
        a = [1 / (1 + math.exp(-amp * (1 / (1 + math.exp(-s)) - 0.5))) for s in scores]
        tp = sum(ai for ai, t in zip(a, labels, strict=True) if t)
        fn = sum(1 - ai for ai, t in zip(a, labels, strict=True) if t)
        fp = sum(ai for ai, t in zip(a, labels, strict=True) if not t)
        tn = sum(1 - ai for ai, t in zip(a, labels, strict=True) if not t)
        pos, neg = tp + fn, fp + tn
        values.append({
            "accuracy": (tp + tn) / n,
            "f1": 2 * tp / (2 * tp + fp + fn + eps),
            "balanced-accuracy": 0.5 * (tp / pos + tn / neg) * (2 * pos * neg)
            / (2 * pos * neg + eps),
            "gmean": math.sqrt((tp / pos) * (tn / neg)),  # the official code's tf.sqrt form
        }[metric])
    return 1 - sum(values) / len(values)


def ref_ensloss_grad(margins: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The EnsLoss derivative at each margin: rank-matched clipped -exp draws, 1/m tail."""
    draws = sorted(max(-math.exp(e), -1.0) for e in noise)
    g = np.empty(len(margins))
    for rank, i in enumerate(sorted(range(len(margins)), key=lambda j: margins[j])):
        g[i] = draws[rank]
    return np.where(margins > 1, g / np.maximum(margins, 1), g) - 1e-6


# --- values against the references -------------------------------------------------------------

LOGIT_CASES = [
    ("ldam", {}, lambda z, y: ref_ldam(z, y, COUNTS, 0.5, 1.0)),
    ("ldam", {"margin": 1.0, "scale": 3.0}, lambda z, y: ref_ldam(z, y, COUNTS, 1.0, 3.0)),
    ("la-ce", {}, lambda z, y: ref_la_ce(z, y, COUNTS, 1.0)),
    ("la-ce", {"tau": 0.5}, lambda z, y: ref_la_ce(z, y, COUNTS, 0.5)),
    ("dice", {}, lambda z, y: ref_dice(z, y, 0.0, 1.0, True)),
    ("dice", {"gamma": 0.1, "square": False}, lambda z, y: ref_dice(z, y, 0.0, 0.1, False)),
    ("dsc", {}, lambda z, y: ref_dice(z, y, 1.0, 1.0, False)),
    ("dsc", {"alpha": 0.5, "square": True}, lambda z, y: ref_dice(z, y, 0.5, 1.0, True)),
]


@pytest.mark.parametrize(("name", "params", "ref"), LOGIT_CASES)
def test_logit_losses_match_reference_and_gradcheck(name: str, params: dict, ref: Any) -> None:
    z, y = problem(0, 9, 5)
    loss = build(name, params)
    assert loss(z, y).tolist() == pytest.approx(ref(z, y), rel=1e-10, abs=1e-12)
    zg = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (zg,))


@pytest.mark.parametrize("metric", ["accuracy", "f1", "balanced-accuracy", "gmean"])
@pytest.mark.parametrize("k", [2, 4])
def test_anyloss_matches_reference_and_gradcheck(metric: str, k: int) -> None:
    z, y = problem(1, 12, k)
    z = z * 0.3  # keep p near 1/2, where the amplified sigmoid is not saturated
    loss = build("anyloss", {"metric": metric, "L": 20.0}, k=k)
    out = loss(z, y)
    assert out.shape == (12,) and torch.all(out == out[0])  # the batch value on every row
    assert out[0].item() == pytest.approx(ref_anyloss(z, y, metric, 20.0), rel=1e-9)
    zg = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (zg,))


def test_anyloss_on_confident_outputs_is_one_minus_the_metric() -> None:
    # Saturated scores: A(p) is 0 or 1 up to e^-36, the soft confusion matrix is the hard one.
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    pred = torch.tensor([1, 1, 0, 1, 0, 0, 0, 0, 1, 0])
    z = torch.stack([torch.zeros(10), 30.0 * (2 * pred - 1)], dim=1).double()
    f1 = skm.f1_score(y.numpy(), pred.numpy())
    bacc = skm.balanced_accuracy_score(y.numpy(), pred.numpy())
    assert build("anyloss", {"metric": "f1"}, k=2)(z, y)[0].item() == pytest.approx(1 - f1,
                                                                                   abs=1e-6)
    assert build("anyloss", {"metric": "balanced-accuracy"}, k=2)(z, y)[0].item() == (
        pytest.approx(1 - bacc, abs=1e-6))
    recall = skm.recall_score(y.numpy(), pred.numpy())
    specificity = skm.recall_score(y.numpy(), pred.numpy(), pos_label=0)
    assert build("anyloss", {"metric": "gmean"}, k=2)(z, y)[0].item() == (
        pytest.approx(1 - math.sqrt(recall * specificity), abs=1e-6))


def test_anyloss_gmean_of_a_column_without_positives_is_zero_with_finite_gradients() -> None:
    # K = 4 one-vs-rest, class 3 absent from the batch: its G-mean is undefined (n1 = 0) and
    # counts as 0; sqrt'(0) must not turn the zero gradient into NaN.
    z, _ = problem(2, 10, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    z = (z * 0.3).requires_grad_(True)
    out = build("anyloss", {"metric": "gmean", "L": 20.0}, k=4)(z, y)
    present = ref_anyloss(z.detach()[:, :3], y, "gmean", 20.0)  # mean of 1 - G over 3 columns
    assert out[0].item() == pytest.approx(1 - (3 * (1 - present) + 0.0) / 4, rel=1e-12)
    out[0].backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert torch.all(z.grad[:, 3] == 0)


# --- properties --------------------------------------------------------------------------------


def test_ldam_margins_follow_counts_and_reduce_to_ce() -> None:
    loss = build("ldam", {"margin": 0.7})
    m = loss.margins.tolist()
    assert m[-1] == pytest.approx(0.7) and m == sorted(m)  # rarest class: the largest margin
    assert m[0] / m[-1] == pytest.approx((COUNTS[-1] / COUNTS[0]) ** 0.25)
    z, y = problem(2, 8, 5)
    assert torch.allclose(build("ldam", {"margin": 0.0})(z, y), F.cross_entropy(
        z, y, reduction="none"))


def test_logit_adjustment_is_ce_for_uniform_priors_or_tau_zero() -> None:
    z, y = problem(3, 8, 5)
    ce = F.cross_entropy(z, y, reduction="none")
    uniform = LOSSES.get("la-ce").build({}, class_counts=(7,) * 5).double()
    assert torch.allclose(uniform(z, y), ce)
    assert torch.allclose(build("la-ce", {"tau": 0.0})(z, y), ce)


def test_dice_is_zero_at_perfect_predictions_and_dsc_alpha0_is_dice() -> None:
    y = torch.tensor([0, 2, 1])
    z = 60.0 * F.one_hot(y, 3).double()
    assert build("dice", k=3)(z, y).abs().max() < 1e-12
    z2, y2 = problem(4, 6, 3)
    plain = build("dice", {"square": False}, k=3)(z2, y2)
    assert torch.allclose(build("dsc", {"alpha": 0.0}, k=3)(z2, y2), plain)


def test_losses_promote_low_precision_and_stay_finite_on_large_logits() -> None:
    z, y = problem(5, 6, 5)
    for name in ("ldam", "la-ce", "dice", "dsc", "anyloss", "ensloss"):
        loss = build(name).float()
        half = loss(z.to(torch.bfloat16), y)
        assert half.dtype == torch.float32
        big = (z * 1e4).float().requires_grad_(True)
        out = loss(big, y)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(big.grad).all(), name


def test_ensloss_derivatives_match_reference_and_are_convex_calibrated() -> None:
    g = torch.Generator().manual_seed(0)
    margins = torch.randn(40, generator=g, dtype=torch.float64) * 2
    noise = torch.randn(40, generator=g, dtype=torch.float64)
    d = ensloss_derivatives(margins, noise, 0.0)
    assert d.numpy() == pytest.approx(ref_ensloss_grad(margins.numpy(), noise.numpy()))
    order = margins.argsort()
    assert torch.all(d[order].diff() >= 0)  # non-decreasing in the margin: a convex loss
    assert torch.all(d < 0) and torch.all(d >= -1 - 1e-6)  # calibrated: phi'(0) < 0


@pytest.mark.parametrize("k", [2, 4])
def test_ensloss_gradient_is_the_drawn_derivative(k: int) -> None:
    z, y = problem(6, 10, k)
    loss = build("ensloss", k=k, seed=3)
    state = loss.generator.get_state()
    zg = z.clone().requires_grad_(True)
    loss(zg, y).sum().backward()
    replay = torch.Generator()
    replay.set_state(state)
    if k == 2:
        sign = (2.0 * y - 1.0).numpy()
        margins = sign * (z[:, 1] - z[:, 0]).numpy()
        noise = torch.randn(10, generator=replay, dtype=torch.float64).numpy()
        d = ref_ensloss_grad(margins, noise)
        expected = np.stack([-sign * d, sign * d], axis=1)
    else:
        sign = (2.0 * F.one_hot(y, k) - 1.0).numpy()
        margins = sign * z.numpy()
        noise = torch.randn(10 * k, generator=replay, dtype=torch.float64).numpy()
        expected = sign * ref_ensloss_grad(margins.reshape(-1), noise).reshape(10, k)
    assert zg.grad.numpy() == pytest.approx(expected)


def test_ensloss_is_deterministic_given_the_seed_and_random_across_batches() -> None:
    z, y = problem(7, 16, 2)

    def grads(seed: int, calls: int = 2) -> list[torch.Tensor]:
        loss, out = build("ensloss", k=2, seed=seed), []
        for _ in range(calls):
            zg = z.clone().requires_grad_(True)
            loss(zg, y).sum().backward()
            out.append(zg.grad)
        return out

    a, b, c = grads(5), grads(5), grads(6)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])  # a new random derivative for every batch
    assert not torch.equal(a[0], c[0])


# --- registry ----------------------------------------------------------------------------------


def test_registration_kinds_context_and_citations() -> None:
    kinds = {"ldam": "logits", "la-ce": "logits", "dice": "logits", "dsc": "logits",
             "anyloss": "binary", "ensloss": "binary"}
    for name, kind in kinds.items():
        entry = LOSSES.get(name)
        assert entry.tags["consumes"] == kind == entry.factory.consumes
        assert entry.tags["paper"] and entry.summary
    assert LOSSES.get("ldam").context == ("class_counts",)
    assert LOSSES.get("ensloss").context == ("seed",)
    assert LOSSES.get("anyloss").param("L").default == 73.0


@pytest.mark.parametrize(("name", "params", "message"), [
    ("ldam", {"margin": "-1"}, "ldam: margin must be >= 0"),
    ("la-ce", {"tau": "-0.5"}, "la-ce: tau must be >= 0"),
    ("dsc", {"gamma": "0"}, "dsc: gamma must be > 0"),
    ("anyloss", {"metric": "auc"}, "accepted: accuracy, f1, balanced-accuracy, gmean"),
    ("anyloss", {"L": "0"}, "anyloss: L must be > 0"),
])
def test_bad_parameters_are_one_line_user_errors(name: str, params: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        entry = LOSSES.get(name)
        check_params(entry, params)
        entry.build(params, class_counts=COUNTS, seed=0)
