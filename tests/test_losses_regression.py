"""Regression losses: independent float64 references, gradients, and the papers' properties."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.stats import norm

from lossbench.errors import UserError
from lossbench.losses import LOSSES
from lossbench.losses.regression import RegressionLoss, parse_levels

N = 9
REGRESSION = ("mse", "l1", "huber", "logcosh", "gauss-nll", "pinball", "hl-gauss", "cs-div")


def build(name: str, inputs: torch.Tensor | None = None, **params: object) -> RegressionLoss:
    x = inputs if inputs is not None else torch.zeros(N, 3, dtype=torch.float64)
    loss = LOSSES.get(name).build(params, train_inputs=x, num_train=len(x))
    assert isinstance(loss, RegressionLoss)
    return loss


def sample(head: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(N, head, generator=g, dtype=torch.float64) * 1.5
    y = torch.randn(N, generator=g, dtype=torch.float64)
    return out, y


def per_row(fn: Callable[[list[float], float], float]
            ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def ref(out: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([fn([float(v) for v in out[i]], float(y[i])) for i in range(len(y))])

    return ref


def ref_huber(delta: float) -> Callable[[list[float], float], float]:
    def one(o: list[float], y: float) -> float:
        r = abs(o[0] - y)
        return 0.5 * r * r if r <= delta else delta * r - 0.5 * delta * delta

    return one


def ref_gauss(o: list[float], y: float) -> float:
    mu, var = o[0], math.exp(o[1])
    return -math.log(math.exp(-((y - mu) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var))


def ref_pinball(levels: tuple[float, ...]) -> Callable[[list[float], float], float]:
    def one(o: list[float], y: float) -> float:
        total = 0.0
        for tau, q in zip(levels, o, strict=True):
            r = y - q
            total += tau * r if r >= 0 else (tau - 1) * r
        return total / len(levels)

    return one


def ref_hl_gauss(bins: int, lo: float, hi: float, ratio: float
                 ) -> Callable[[list[float], float], float]:
    width = (hi - lo) / bins
    sigma = ratio * width

    def one(o: list[float], y: float) -> float:
        yc = min(max(y, lo), hi)
        edges = [lo + k * width for k in range(bins + 1)]
        mass = [norm.cdf(edges[k + 1], yc, sigma) - norm.cdf(edges[k], yc, sigma)
                for k in range(bins)]
        total = sum(mass)
        log_z = math.log(sum(math.exp(v) for v in o))
        return -sum(m / total * (o[k] - log_z) for k, m in enumerate(mass))

    return one


REFERENCES = {
    "mse": ({}, 1, per_row(lambda o, y: (o[0] - y) ** 2)),
    "l1": ({}, 1, per_row(lambda o, y: abs(o[0] - y))),
    "huber": ({"delta": 0.7}, 1, per_row(ref_huber(0.7))),
    "logcosh": ({}, 1, per_row(lambda o, y: math.log(math.cosh(o[0] - y)))),
    "gauss-nll": ({}, 2, per_row(ref_gauss)),
    "pinball": ({"quantiles": "0.1/0.5/0.8/0.95"}, 4, per_row(ref_pinball((0.1, 0.5, 0.8, 0.95)))),
    "hl-gauss": ({"bins": 12, "vmin": -2.5, "vmax": 2.0}, 12,
                 per_row(ref_hl_gauss(12, -2.5, 2.0, 0.75))),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_reference_and_gradcheck(name: str) -> None:
    params, head, ref = REFERENCES[name]
    loss = build(name, **params)
    assert loss.head_dim == head
    out, y = sample(head)
    got = loss(out, y).numpy()
    np.testing.assert_allclose(got, ref(out.numpy(), y.numpy()), rtol=1e-9, atol=1e-12)
    probe = out.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda o: loss(o, y), (probe,))


def test_every_regression_loss_is_registered_and_consumes_regression() -> None:
    names = {e.name for e in LOSSES if e.tags["consumes"] == "regression"
             and not e.tags.get("explicit")}
    assert names == set(REGRESSION)
    # The aggregate-response losses need a bagged task and are named explicitly (test_bags.py).
    explicit = {e.name for e in LOSSES if e.tags["consumes"] == "regression"} - names
    assert explicit == {"bag-level", "instance-level", "bag-interp"}
    # The classification MAE keeps its name; the regression MAE is ``l1``.
    assert LOSSES.get("mae").tags["consumes"] == "logits"
    for name in REGRESSION:
        assert LOSSES.get(name).tags["paper"]


@pytest.mark.parametrize("name", REGRESSION)
def test_predict_shapes_and_float32_training_values(name: str) -> None:
    loss = build(name, torch.randn(N, 3))
    out = torch.randn(N, loss.head_dim)
    y = torch.randn(N)
    value = loss(out, y, index=torch.arange(N))
    assert value.shape == (N,) and value.dtype == torch.float32 and torch.isfinite(value).all()
    pred = loss.predict(out)
    assert pred["mean"].shape == (N,)
    for key in ("var", "lower", "upper"):
        if key in pred:
            assert pred[key].shape == (N,)
    assert ("var" in pred) == (name in ("gauss-nll", "hl-gauss"))
    assert ("lower" in pred) == (name == "pinball")


# ---------------------------------------------------------------------------------------------
# Point losses: known identities.
# ---------------------------------------------------------------------------------------------


def test_huber_is_half_squared_inside_delta_and_linear_outside() -> None:
    loss = build("huber", delta=0.5)
    y = torch.zeros(4, dtype=torch.float64)
    out = torch.tensor([[0.3], [-0.5], [2.0], [-3.0]], dtype=torch.float64)
    expected = [0.045, 0.125, 0.5 * 2.0 - 0.125, 0.5 * 3.0 - 0.125]
    np.testing.assert_allclose(loss(out, y).numpy(), expected, rtol=1e-12)
    with pytest.raises(UserError, match="delta"):
        build("huber", delta=0.0)


def test_logcosh_limits_and_stability() -> None:
    loss = build("logcosh")
    small = torch.tensor([[1e-3]], dtype=torch.float64)
    assert loss(small, torch.zeros(1)).item() == pytest.approx(0.5e-6, rel=1e-6)
    big = torch.tensor([[1e4], [-1e4]])  # cosh overflows float32 long before this
    np.testing.assert_allclose(loss(big, torch.zeros(2)).numpy(), 1e4 - math.log(2), rtol=1e-6)


def test_mse_and_l1_minimisers_are_mean_and_median() -> None:
    y = torch.tensor([0.0, 1.0, 1.5, 4.0, 10.0], dtype=torch.float64)
    grid = torch.linspace(-1, 11, 2401, dtype=torch.float64)

    def best(name: str) -> float:
        loss = build(name)
        risks = [loss(c.expand(len(y), 1), y).mean().item() for c in grid]
        return grid[int(np.argmin(risks))].item()

    assert best("mse") == pytest.approx(y.mean().item(), abs=5e-3)
    assert best("l1") == pytest.approx(y.median().item(), abs=5e-3)


# ---------------------------------------------------------------------------------------------
# Gaussian NLL and beta-NLL (Seitzer et al., ICLR 2022).
# ---------------------------------------------------------------------------------------------


def test_gauss_nll_is_torch_normal_log_prob() -> None:
    out, y = sample(2, seed=3)
    expected = -torch.distributions.Normal(out[:, 0], torch.exp(0.5 * out[:, 1])).log_prob(y)
    torch.testing.assert_close(build("gauss-nll")(out, y), expected)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_beta_nll_gradients_use_a_detached_variance_weight(beta: float) -> None:
    out, y = sample(2, seed=4)
    probe = out.clone().requires_grad_(True)
    build("gauss-nll", beta=beta)(probe, y).sum().backward()
    assert probe.grad is not None
    mu, s = out[:, 0], out[:, 1]
    weight = torch.exp(beta * s)  # sigma^(2 beta), a constant for the gradient
    d_mu = weight * (mu - y) * torch.exp(-s)
    d_s = weight * 0.5 * (1 - (y - mu) ** 2 * torch.exp(-s))
    torch.testing.assert_close(probe.grad, torch.stack([d_mu, d_s], dim=1))
    if beta == 1.0:  # the mean gets exactly the gradient of (mu - y)^2 / 2
        torch.testing.assert_close(probe.grad[:, 0], mu - y)


def test_beta_out_of_range_is_a_user_error() -> None:
    with pytest.raises(UserError, match="beta"):
        build("gauss-nll", beta=1.5)


# ---------------------------------------------------------------------------------------------
# Pinball (Koenker & Bassett 1978) and post-sorting (Fakoor et al., JMLR 2023).
# ---------------------------------------------------------------------------------------------


def test_pinball_minimiser_is_the_empirical_quantile() -> None:
    y = torch.tensor(np.random.default_rng(0).normal(size=41))
    loss = build("pinball", quantiles="0.25")
    risks = [loss(c.reshape(1, 1).expand(len(y), 1), y).mean().item() for c in y]
    assert y[int(np.argmin(risks))].item() == pytest.approx(float(np.quantile(y.numpy(), 0.25)))


def test_pinball_symmetric_levels_sum_to_absolute_error() -> None:
    out, y = sample(1, seed=5)
    two = build("pinball", quantiles="0.3/0.7")
    torch.testing.assert_close(2 * two(out.expand(N, 2), y), (out[:, 0] - y).abs())


def test_pinball_predict_sorts_crossing_quantiles() -> None:
    loss = build("pinball", quantiles="0.05/0.5/0.95")
    out = torch.tensor([[2.0, 0.0, 1.0], [-1.0, 3.0, 1.0]])
    pred = loss.predict(out)
    torch.testing.assert_close(pred["lower"], torch.tensor([0.0, -1.0]))
    torch.testing.assert_close(pred["mean"], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(pred["upper"], torch.tensor([2.0, 3.0]))
    assert loss.interval_level == pytest.approx(0.9)


def test_pinball_point_prediction_interpolates_the_median() -> None:
    loss = build("pinball", quantiles="0.2/0.6/0.9")
    pred = loss.predict(torch.tensor([[0.0, 2.0, 5.0]]))
    assert pred["mean"].item() == pytest.approx(1.5)  # 0.5 is 3/4 of the way from 0.2 to 0.6


@pytest.mark.parametrize("text", ["", "0.5/0.5", "1.2", "0/0.5", "a/b"])
def test_bad_quantiles_are_user_errors(text: str) -> None:
    with pytest.raises(UserError, match="quantiles"):
        build("pinball", quantiles=text)


def test_parse_levels_accepts_cli_friendly_separators() -> None:
    assert parse_levels("0.9/0.1;0.5") == (0.1, 0.5, 0.9)
    assert parse_levels("0.1, 0.9") == (0.1, 0.9)


# ---------------------------------------------------------------------------------------------
# HL-Gauss (Farebrother et al., ICML 2024).
# ---------------------------------------------------------------------------------------------


def test_hl_gauss_target_is_a_normalised_smoothed_histogram_centred_on_y() -> None:
    loss = build("hl-gauss")
    y = torch.linspace(-3, 3, 13, dtype=torch.float64)
    p = loss.target_probs(y)
    width = 8.0 / 100
    assert loss.sigma == pytest.approx(0.75 * width)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(13, dtype=torch.float64))
    pred = loss.predict(p.log())  # decoding the target itself recovers y ...
    torch.testing.assert_close(pred["mean"], y, atol=1e-5, rtol=0)
    # ... with the variance of a binned N(y, sigma^2): sigma^2 + width^2 / 12 (Sheppard).
    torch.testing.assert_close(pred["var"], torch.full_like(y, loss.sigma**2 + width**2 / 12),
                               rtol=1e-3, atol=0)


def test_hl_gauss_is_minimised_at_the_target_distribution() -> None:
    loss = build("hl-gauss", bins=16)
    y = torch.tensor([0.3], dtype=torch.float64)
    p = loss.target_probs(y)
    # Bins beyond ~8 sigma have mass 0 (erf rounds to 1); a finite logit stands in for log 0.
    logits = p.clamp_min(1e-300).log()
    at_target = loss(logits, y)
    torch.testing.assert_close(at_target, -torch.special.xlogy(p, p).sum(dim=1))
    other = logits + 0.1 * torch.randn(1, 16, dtype=torch.float64)
    assert loss(other, y).item() > at_target.item()


def test_hl_gauss_float32_training_value_matches_float64() -> None:
    # The target is built in the head's dtype (the paper's float32 erf listing): the value
    # agrees with the float64 computation to float32 precision (a 100-way CE: ~1e-6 relative).
    loss = build("hl-gauss")
    g = torch.Generator().manual_seed(3)
    out = torch.randn(64, 100, generator=g, dtype=torch.float64) * 2
    y = torch.randn(64, generator=g, dtype=torch.float64)
    y[:2] = torch.tensor([3.9, -6.0])  # near and beyond the support's edge
    torch.testing.assert_close(loss(out.float(), y.float()).double(), loss(out, y),
                               rtol=5e-6, atol=0.0)


def test_hl_gauss_clips_targets_outside_the_support() -> None:
    loss = build("hl-gauss", bins=10)
    far = loss.target_probs(torch.tensor([50.0, -50.0], dtype=torch.float64))
    torch.testing.assert_close(far, loss.target_probs(torch.tensor([4.0, -4.0],
                                                                   dtype=torch.float64)))
    assert torch.isfinite(loss(torch.zeros(2, 10), torch.tensor([50.0, -50.0]))).all()


@pytest.mark.parametrize("params", [{"bins": 1}, {"vmin": 1.0, "vmax": 1.0},
                                    {"sigma_ratio": 0.0}])
def test_hl_gauss_bad_parameters_are_user_errors(params: dict[str, object]) -> None:
    with pytest.raises(UserError):
        build("hl-gauss", **params)


# ---------------------------------------------------------------------------------------------
# CS divergence (Yu et al., ICLR 2024): explicit loops over the kernel sums.
# ---------------------------------------------------------------------------------------------


def ref_cs(x: np.ndarray, y: np.ndarray, yh: np.ndarray, sx: float, sy: float,
           weights: str) -> float:
    n = len(y)

    def kx(a: int, b: int) -> float:
        return math.exp(-sum((x[a, d] - x[b, d]) ** 2 for d in range(x.shape[1])) / (2 * sx * sx))

    def ky(u: float, v: float) -> float:
        return math.exp(-((u - v) ** 2) / (2 * sy * sy))

    def weight(j: int) -> float:
        if weights == "paper":  # KDE of p(x_j)^2 (up to constants), squared row sum
            return 1.0 / sum(kx(j, i) for i in range(n)) ** 2
        return 1.0 / sum(kx(j, i) ** 2 for i in range(n))  # official CS_Div: sum of squares

    def term(a: np.ndarray, b: np.ndarray) -> float:
        return math.log(sum(weight(j) * sum(kx(j, i) * ky(a[j], b[i]) for i in range(n))
                            for j in range(n)))

    return term(y, y) + term(yh, yh) - 2 * term(yh, y)


@pytest.mark.parametrize(("weights", "sx", "sy"), [("paper", 1.0, 1.0), ("code", 1.5, 0.6),
                                                   ("paper", 0.8, 2.0)])
def test_cs_div_matches_loop_reference_and_gradcheck(weights: str, sx: float, sy: float) -> None:
    g = torch.Generator().manual_seed(7)
    inputs = torch.randn(20, 3, generator=g, dtype=torch.float64)
    index = torch.tensor([3, 0, 11, 7, 19, 5, 2, 14, 8])
    out, y = sample(1, seed=8)
    loss = build("cs-div", inputs, sigma_x=sx, sigma_y=sy, weights=weights)
    value = loss(out, y, index=index)
    expected = ref_cs(inputs[index].numpy(), y.numpy(), out[:, 0].numpy(), sx, sy, weights)
    torch.testing.assert_close(value, torch.full((N,), expected, dtype=torch.float64))
    probe = out.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda o: loss(o, y, index=index), (probe,))


def test_cs_div_is_zero_at_the_truth_with_finite_gradients() -> None:
    inputs = torch.randn(N, 4, dtype=torch.float64)
    y = torch.randn(N, dtype=torch.float64)
    probe = y[:, None].clone().requires_grad_(True)
    value = build("cs-div", inputs)(probe, y, index=torch.arange(N))
    assert abs(value[0].item()) < 1e-12
    value.mean().backward()
    assert probe.grad is not None and torch.isfinite(probe.grad).all()


def test_cs_div_with_a_narrow_input_kernel_is_minus_twice_log_mean_correntropy() -> None:
    # sigma_x -> 0 makes K the identity: D = -2 log mean_j k(y_hat_j, y_j) >= 0.
    inputs = torch.randn(N, 2, dtype=torch.float64) * 10
    out, y = sample(1, seed=9)
    value = build("cs-div", inputs, sigma_x=1e-3)(out, y, index=torch.arange(N))[0]
    correntropy = torch.exp(-(out[:, 0] - y) ** 2 / 2).mean()
    assert value.item() == pytest.approx(-2 * math.log(correntropy.item()), rel=1e-9)
    assert value.item() > 0


def test_cs_div_needs_example_ids_and_positive_widths() -> None:
    loss = build("cs-div")
    with pytest.raises(ValueError, match="index"):
        loss(torch.zeros(N, 1), torch.zeros(N))
    with pytest.raises(UserError, match="sigma"):
        build("cs-div", sigma_x=0.0)
