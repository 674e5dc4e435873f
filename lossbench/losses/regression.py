"""Regression losses on a head ``output`` [N, H] with real targets ``y`` [N].

Targets arrive standardised (training-split mean and standard deviation), so every default
(Huber's delta, the HL-Gauss support, the CS kernel widths) is in units of one target standard
deviation. Each loss declares ``head_dim`` (the width ``H`` of the model's output) and
``predict(output)``: a dict with the point prediction ``mean`` and, where the loss models
uncertainty, ``var`` (a predictive variance) or ``lower``/``upper`` (an interval whose nominal
coverage is the loss's ``interval_level``). The family maps these back to original units.

Names: ``l1`` is the regression MAE; ``mae`` is already the classification MAE on probabilities
(Ghosh et al., AAAI 2017) in ``logits.py``, and loss names are global.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.losses.base import LOSSES, Loss

Prediction = dict[str, Tensor]
"""``mean`` [N], optional ``var`` [N], optional ``lower``/``upper`` [N] (standardised units)."""

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class RegressionLoss(Loss):
    """Base for regression losses: one output column is the point prediction unless overridden."""

    consumes = "regression"
    head_dim: int = 1
    interval_level: float | None = None
    """Nominal coverage of ``lower``/``upper`` when ``predict`` returns them."""

    def predict(self, output: Tensor) -> Prediction:
        return {"mean": output[:, 0]}


def _as_float(output: Tensor) -> Tensor:
    """Promote half/bfloat16 heads to float32; float32/float64 pass through unchanged."""
    return output.float() if output.dtype in (torch.float16, torch.bfloat16) else output


def _residual(output: Tensor, target: Tensor) -> Tensor:
    """``prediction - y`` for a one-column head."""
    out = _as_float(output)
    return out[:, 0] - target.to(out.dtype)


# --------------------------------------------------------------------------------------------
# Point losses.
# --------------------------------------------------------------------------------------------


@LOSSES.register("mse", consumes="regression", paper="least squares (Legendre 1805; Gauss 1809)")
class MSE(RegressionLoss):
    """Squared error (f(x) - y)^2: its minimiser is the conditional mean."""

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        return _residual(output, target).square()


@LOSSES.register(
    "l1", consumes="regression", paper="least absolute deviations (Laplace 1774; Boscovich 1757)"
)
class L1(RegressionLoss):
    """Absolute error |f(x) - y| (regression MAE): its minimiser is the conditional median.

    Named ``l1`` because ``mae`` is the classification MAE on probabilities.
    """

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        return _residual(output, target).abs()


@LOSSES.register(
    "huber", consumes="regression",
    paper="Huber, Robust Estimation of a Location Parameter, Ann. Math. Statist. 1964",
)
class Huber(RegressionLoss):
    """Huber loss: quadratic within ``delta`` of the target, linear beyond (robust to outliers).

    ``rho(r) = r^2 / 2`` for ``|r| <= delta``, ``delta (|r| - delta / 2)`` otherwise (Huber's
    rho, 1964); ``delta`` is in target standard deviations.
    """

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        if not delta > 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self.delta = delta

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        r = _residual(output, target)
        return F.huber_loss(r, torch.zeros_like(r), reduction="none", delta=self.delta)


@LOSSES.register(
    "logcosh", consumes="regression",
    paper="Neuneier & Zimmermann, How to Train Neural Networks, Neural Networks: Tricks of the "
    "Trade 1998 (ln cosh error)",
)
class LogCosh(RegressionLoss):
    """log cosh(f(x) - y): about r^2 / 2 near zero and |r| - log 2 far out, smooth everywhere.

    Evaluated as ``|r| + softplus(-2|r|) - log 2``, which is finite for any residual
    (``cosh`` itself overflows past |r| ~ 89 in float32).
    """

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        a = _residual(output, target).abs()
        return a + F.softplus(-2.0 * a) - math.log(2.0)


# --------------------------------------------------------------------------------------------
# Probabilistic losses.
# --------------------------------------------------------------------------------------------


@LOSSES.register(
    "gauss-nll", consumes="regression",
    paper="Nix & Weigend, Estimating the Mean and Variance of the Target Probability "
    "Distribution, ICNN 1994; beta-NLL: Seitzer et al., On the Pitfalls of Heteroscedastic "
    "Uncertainty Estimation with Probabilistic Neural Networks, ICLR 2022",
)
class GaussNLL(RegressionLoss):
    """Heteroscedastic Gaussian NLL on a (mean, log-variance) head; ``beta`` > 0 gives beta-NLL.

    ``L = w * (s/2 + (y - mu)^2 / (2 e^s)) + log(2 pi) / 2`` with ``s = log sigma^2`` and
    ``w = stopgrad(sigma^(2 beta))``: the beta-NLL objective of Seitzer et al. 2022 (``beta = 0``
    is the plain NLL of Nix & Weigend; ``beta = 1`` gives the mean the gradient of MSE; the paper
    recommends 0.5). The weight is detached as in the paper, so it rescales gradients without
    being optimised itself.
    """

    head_dim = 2

    def __init__(self, beta: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        out = _as_float(output)
        mu, s = out[:, 0], out[:, 1]
        nll = 0.5 * (s + (target.to(out.dtype) - mu).square() * torch.exp(-s))
        if self.beta:
            nll = torch.exp(self.beta * s).detach() * nll
        return nll + _HALF_LOG_2PI

    def predict(self, output: Tensor) -> Prediction:
        return {"mean": output[:, 0], "var": torch.exp(output[:, 1])}


def parse_levels(text: str) -> tuple[float, ...]:
    """``"0.05/0.5/0.95"`` (``/``, ``;``, ``,`` or spaces) -> sorted distinct levels in (0, 1).

    On the command line commas separate loss parameters, so write quantiles with ``/``.
    """
    parts = [p for p in re.split(r"[/;,\s]+", text.strip()) if p]
    try:
        levels = tuple(sorted(float(p) for p in parts))
    except ValueError:
        raise ValueError(f"quantiles must be numbers like 0.05/0.5/0.95, got {text!r}") from None
    if not levels or not all(0.0 < q < 1.0 for q in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"quantiles must be distinct levels in (0, 1), got {text!r}")
    return levels


def interpolate_quantile(levels: tuple[float, ...], values: Tensor, at: float) -> Tensor:
    """Linear interpolation of sorted quantile curves ``values`` [N, Q] at level ``at``.

    Outside ``[levels[0], levels[-1]]`` the nearest end value is used (no extrapolation).
    """
    if at <= levels[0]:
        return values[:, 0]
    if at >= levels[-1]:
        return values[:, -1]
    hi = bisect.bisect_left(levels, at)
    lo = hi - 1
    t = (at - levels[lo]) / (levels[hi] - levels[lo])
    return values[:, lo] + t * (values[:, hi] - values[:, lo])


@LOSSES.register(
    "pinball", consumes="regression",
    paper="Koenker & Bassett, Regression Quantiles, Econometrica 1978; post-sorting: Fakoor et "
    "al., Flexible Model Aggregation for Quantile Regression, JMLR 2023",
)
class Pinball(RegressionLoss):
    """Multi-quantile pinball loss, averaged over the levels; quantiles post-sorted at predict.

    ``rho_tau(r) = max(tau r, (tau - 1) r)`` with ``r = y - q_tau(x)`` (the check function of
    Koenker & Bassett 1978); the head has one output per level. Predicted quantiles can cross, so
    ``predict`` sorts them (the post-sorting rearrangement of Fakoor et al., JMLR 2023). The point
    prediction is the sorted curve at 0.5 (linear interpolation) and the interval is
    [lowest, highest] level, with nominal coverage ``max - min`` level.
    """

    def __init__(self, quantiles: str = "0.05/0.5/0.95") -> None:
        super().__init__()
        levels = parse_levels(quantiles)
        self.level_values = levels
        self.head_dim = len(levels)
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float64), persistent=False)
        self.interval_level = levels[-1] - levels[0] if len(levels) > 1 else None

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        out = _as_float(output)
        tau = self.levels.to(out.dtype)
        r = target.to(out.dtype)[:, None] - out
        return torch.maximum(tau * r, (tau - 1.0) * r).mean(dim=1)

    def predict(self, output: Tensor) -> Prediction:
        q = output.sort(dim=1).values
        pred = {"mean": interpolate_quantile(self.level_values, q, 0.5)}
        if self.interval_level is not None:
            pred |= {"lower": q[:, 0], "upper": q[:, -1]}
        return pred


# --------------------------------------------------------------------------------------------
# Distributional losses.
# --------------------------------------------------------------------------------------------


def hl_gauss_probs(y: Tensor, edges: Tensor, sigma: float) -> Tensor:
    """HL-Gauss target: mass of N(y, sigma^2) in each bin, renormalised to the support.

    ``p_k = (erf(u_{k+1}) - erf(u_k)) / (erf(u_K) - erf(u_0))``, ``u_k = (e_k - y) / (sqrt 2
    sigma)``: the paper's listing (Farebrother et al. 2024, ``transform_to_probs``), in the dtype
    of ``y`` and ``edges``. ``y`` is clipped to the support first (the listing does not): far
    outside it every difference rounds to 0/0. Bins more than ~5.4 sigma (float32; ~8.3 in
    float64) from ``y`` get mass 0 where erf has rounded to +-1: their true mass is below the
    dtype's resolution near 1, and the loss value is unchanged at that precision.
    """
    y = y.clamp(float(edges[0]), float(edges[-1]))
    cdf = torch.special.erf((edges[None, :] - y[:, None]) * (1.0 / (math.sqrt(2.0) * sigma)))
    return (cdf[:, 1:] - cdf[:, :-1]) / (cdf[:, -1:] - cdf[:, :1])


@LOSSES.register(
    "hl-gauss", consumes="regression",
    paper="Farebrother et al., Stop Regressing: Training Value Functions via Classification for "
    "Scalable Deep RL, ICML 2024 (HL-Gauss)",
)
class HLGauss(RegressionLoss):
    """Regression as classification: cross-entropy to a Gaussian-smoothed histogram target.

    ``bins`` equal bins cover ``[vmin, vmax]`` (standardised units: +-4 target standard deviations
    by default); the target distribution puts on each bin the mass of ``N(y, sigma^2)``,
    ``sigma = sigma_ratio * bin width`` (0.75, the ratio Farebrother et al. 2024 recommend),
    renormalised to the support; the loss is ``-sum_k p_k log softmax(z)_k``.
    Decoding is the expectation over bin centres; ``var`` is the histogram's variance over the
    centres (the family's NLL for this loss is that of the moment-matched Gaussian).
    """

    def __init__(
        self, bins: int = 100, vmin: float = -4.0, vmax: float = 4.0, sigma_ratio: float = 0.75
    ) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        if not vmin < vmax:
            raise ValueError(f"vmin must be < vmax, got {vmin} and {vmax}")
        if not sigma_ratio > 0:
            raise ValueError(f"sigma_ratio must be > 0, got {sigma_ratio}")
        self.head_dim = bins
        self.sigma = sigma_ratio * (vmax - vmin) / bins
        edges = torch.linspace(vmin, vmax, bins + 1, dtype=torch.float64)
        self.register_buffer("edges", edges, persistent=False)
        self.register_buffer("centres", (edges[1:] + edges[:-1]) / 2, persistent=False)

    def target_probs(self, target: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """The smoothed histogram target [N, bins] for standardised targets [N], in ``dtype``."""
        return hl_gauss_probs(target.to(dtype), self.edges.to(dtype), self.sigma)

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        out = _as_float(output)
        return F.cross_entropy(out, self.target_probs(target, out.dtype), reduction="none")

    def predict(self, output: Tensor) -> Prediction:
        p = output.softmax(dim=1)
        c = self.centres.to(p.dtype)
        mean = p @ c
        var = (p * (c[None, :] - mean[:, None]).square()).sum(dim=1)
        return {"mean": mean, "var": var}


def gaussian_gram(a: Tensor, b: Tensor, sigma: float) -> Tensor:
    """``exp(-(a_j - b_i)^2 / (2 sigma^2))`` [len(a), len(b)] for scalar samples a [N], b [M].

    Formed from differences, not ``cdist``, whose gradient at zero distance (every diagonal entry
    of a target Gram matrix) is not finite.
    """
    return torch.exp((a[:, None] - b[None, :]).square() * (-0.5 / sigma**2))


def input_gram(x: Tensor, sigma: float) -> Tensor:
    """``exp(-||x_j - x_i||^2 / (2 sigma^2))`` [N, N] for rows x [N, D] that take no gradient:
    distances from ``cdist`` (no [N, N, D] difference tensor; 2-6x faster at D = 8-64), computed
    directly rather than by the matmul expansion, which loses ~1e-6 in float32 and leaves the
    diagonal off 0."""
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    return torch.exp(d.square() * (-0.5 / sigma**2))


CsWeights = Literal["paper", "code"]


def cs_conditional_divergence(
    x: Tensor, y: Tensor, y_hat: Tensor, sigma_x: float, sigma_y: float, weights: str = "paper"
) -> Tensor:
    """Kernel estimate of D_CS(p(y|x) || q(y_hat|x)) from paired samples (x_i, y_i, y_hat_i).

    With ``K`` the Gram matrix of ``x``, ``L1``/``L2`` of ``y``/``y_hat`` and ``L21_ji =
    k(y_hat_j, y_i)``: ``log sum_j w_j sum_i K_ji L1_ji + log sum_j w_j sum_i K_ji L2_ji
    - 2 log sum_j w_j sum_i K_ji L21_ji``, the conditional CS divergence estimator (Yu et al.,
    arXiv:2301.08970, 2023) with the conditioning variable shared by both conditionals, as used
    for the CS-IB prediction term (the official ``loss_cs.CS_Div``, commented "Eq. 18").
    ``weights="paper"``: ``w_j = (sum_i K_ji)^-2``, the kernel estimate of 1/p(x_j)^2 that the
    derivation calls for; ``"code"``: ``w_j = (sum_i K_ji^2)^-1``, what ``CS_Div`` computes.
    Natural log (``CS_Div`` reports bits: a constant factor 1/ln 2).
    """
    k = input_gram(x.detach(), sigma_x)  # the conditioning inputs are data, not parameters
    denominator = k.sum(dim=1).square() if weights == "paper" else k.square().sum(dim=1)
    weighted = k / denominator[:, None]  # w_j K_ji, shared by the three terms

    def term(gram: Tensor) -> Tensor:
        return torch.log((weighted * gram).sum())

    return (
        term(gaussian_gram(y, y, sigma_y)) + term(gaussian_gram(y_hat, y_hat, sigma_y))
        - 2.0 * term(gaussian_gram(y_hat, y, sigma_y))
    )


@LOSSES.register(
    "cs-div", consumes="regression",
    paper="Yu, Yu, Løkse, Jenssen, Príncipe, Cauchy-Schwarz Divergence Information Bottleneck "
    "for Regression, ICLR 2024 (prediction term)",
)
class CSDivergence(RegressionLoss):
    """Cauchy-Schwarz divergence between p(y|x) and the predicted q(y_hat|x), Gaussian kernels.

    The prediction term of CS-IB (Yu et al., ICLR 2024): no distributional assumption on the
    decoder. It is a batch-level estimate (Gram matrices over the batch, conditioned on the
    batch's standardised *inputs*, read by ``index`` from ``train_inputs``), returned as the same
    value for every example so the engine's mean is the estimate. Kernel widths: the official
    script (``CS_IB_Housing.py``) fixes sigma = 1 for inputs and targets, on standardised inputs;
    the defaults do the same here, where targets are standardised too.
    """

    def __init__(
        self, train_inputs: Tensor, sigma_x: float = 1.0, sigma_y: float = 1.0,
        weights: CsWeights = "paper",
    ) -> None:
        super().__init__()
        if not (sigma_x > 0 and sigma_y > 0):
            raise ValueError(f"sigma_x and sigma_y must be > 0, got {sigma_x} and {sigma_y}")
        self.sigma_x, self.sigma_y, self.weights = sigma_x, sigma_y, weights
        self.register_buffer("inputs", train_inputs.flatten(1), persistent=False)

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        if index is None:
            raise ValueError("cs-div needs the batch's example ids (index) to read its inputs")
        out = _as_float(output)
        x = self.inputs[index].to(out.dtype)
        value = cs_conditional_divergence(
            x, target.to(out.dtype), out[:, 0], self.sigma_x, self.sigma_y, self.weights
        )
        return value.expand(len(target))
