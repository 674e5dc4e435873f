"""Global contrastive losses with per-example state: SogCLR and iSogCLR.

Both optimise a *global* contrastive objective -- every anchor contrasted with every negative of
the data set, not only those in its batch -- with small batches, by keeping per training example
``i`` a moving average ``u_i`` of the mean exponentiated negative similarity. The state is keyed
by the example ids the engine passes as ``index`` (like ALDR-KL's lambda_i): a buffer of
``num_train`` values per loss module, so packed runs (each member owns its loss) keep their own,
and the same seed gives the same state. ``index=None`` (evaluation) reads no state and writes
none: every row then uses a fresh batch estimate and the initial temperature.

Rows and pairs: ``output`` [R, D] holds R rows (L2-normalised here); rows with the same
``target`` are positives of each other, rows with different targets negatives. In the
self-supervised retrieval mode the rows are the two augmented views of B images and ``target``
is the image id, so each row has exactly one positive (its other view) and ``2B - 2``
negatives: the two-view setting of the papers and of LibAUC's ``GCLoss_v1``. With class labels
(supervised retrieval) positives are the other rows of the class and the positive term is their
mean; that labelled generalisation is ours, not the papers'.

Notation per row r: ``s_rj = z_r . z_j``; ``N(r)`` its negatives; the batch estimate
``g_r(z) = 1/|N(r)| sum_{n in N(r)} exp(s_rn / tau_r)``; ``u_r = (1 - gamma) u_i + gamma g_r``
with ``i`` the row's example (``gamma = 1`` on the example's first visit: nothing to average
yet, as LibAUC and the official SogCLR code do); ``s_r+`` the mean similarity to its positives.
The stored ``u_i`` is the mean of its rows' ``u_r`` (LibAUC: ``(u1 + u2) / 2``).

The papers' stochastic gradient is ``(1/u_r) 1/|N(r)| sum_n exp(s_rn/tau) grad s_rn - grad
s_r+``: the gradient of ``tau log g_r`` with the moving average standing in for ``g_r``. Each
row's value here is the function whose gradient that is, the first-order expansion of
``tau log g`` around ``u``::

    L_r = tau_r (log u_r + g_r(z) / u_r - 1) - s_r+        (u_r held fixed)

It equals the mini-batch global contrastive loss ``tau log g_r - s_r+`` when ``u_r = g_r``
(first visit, or ``gamma = 1``) and lies above it otherwise (``log x <= x - 1`` at ``x = g/u``).
With ``gamma < 1`` the training gradient is therefore not the derivative of this value in
``u``'s dependence on the batch: ``u`` is a stop-gradient, as in the papers' algorithms.
LibAUC returns a surrogate with the same gradient but no meaning as a value
(``-s_r+ + 1/|N| sum p s``).

Scale: the engine averages rows, so the batch loss is the mean over the 2B rows; LibAUC and the
official code return ``mean_i (L_i^a + L_i^b)``, twice that (an lr factor of 2 for SGD, none for
Adam). Paper equations are cited as LibAUC's docstring numbers them; the papers' text could not
be read where this was written, and the formulas were checked against the official code
(Optimization-AI/SogCLR ``sogclr/builder.py``, zhqiu/contrastive-learning-iSogCLR
``unimodal_exps/losses.py``) and LibAUC 2.0.1 ``losses/contrastive.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lossbench.losses.base import LOSSES, Loss
from lossbench.losses.embeddings import _check, _masked_logsumexp, _masks, _unit

_SOGCLR_PAPER = (
    "Yuan, Wu, Qiu, Du, Zhang, Zhou, Yang, Provable Stochastic Optimization for Global "
    "Contrastive Learning: Small Batch Does Not Harm Performance, ICML 2022 (global contrastive "
    "objective; Algorithm 1, SogCLR)"
)
_ISOGCLR_PAPER = (
    "Qiu, Hu, Yuan, Zhou, Zhang, Yang, Not All Semantics are Created Equal: Contrastive "
    "Self-supervised Learning with Automatic Temperature Individualization, ICML 2023 (robust "
    "global contrastive objective, Eq. 6; Algorithm 1, iSogCLR)"
)

# --------------------------------------------------------------------------------------------
# Pure functions.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GclRows:
    """One batch of the global contrastive loss, per row."""

    value: Tensor
    """[R] ``L_r`` (module docstring), differentiable in the embeddings; 0 for a row with no
    positive or no negative."""
    log_u: Tensor
    """[R] log of each row's updated moving average ``u_r`` (detached); for a row without
    negatives, its previous value."""
    tau_grad: Tensor
    """[R] derivative of the row's robust objective in ``tau_r`` at ``u_r`` (detached):
    ``log u_r + rho - 1/|N| sum_n (exp(s_rn/tau)/u_r) s_rn/tau`` (iSogCLR's tau gradient)."""
    valid: Tensor
    """[R] bool: the row has negatives, so its estimates are real."""


def gcl_rows(z: Tensor, target: Tensor, tau: Tensor, log_u_prev: Tensor, gamma: float,
             rho: float = 0.0) -> GclRows:
    """The global contrastive loss of unit rows ``z`` [R, D] with row temperatures ``tau`` [R].

    ``log_u_prev`` [R]: log of each row's example's stored ``u_i``, ``-inf`` for an example
    never seen (then ``gamma = 1`` for that row). Everything is in log space, so ``u`` neither
    overflows nor underflows at small ``tau`` (LibAUC exponentiates ``s / tau`` directly).
    ``rho`` only enters ``tau_grad`` (and the value, as ``tau rho``): iSogCLR's Eq. 6 term.
    """
    pos, neg = _masks(target)
    n_neg, n_pos = neg.sum(dim=1), pos.sum(dim=1)
    valid = n_neg > 0
    s = z @ z.T
    a = s / tau[:, None]
    log_g = _masked_logsumexp(a, neg) - n_neg.clamp_min(1).to(a.dtype).log()
    with torch.no_grad():
        rate = torch.where(torch.isfinite(log_u_prev), torch.full_like(log_u_prev, gamma),
                           torch.ones_like(log_u_prev))  # a first visit takes the estimate
        log_u = torch.logaddexp(torch.log1p(-rate) + log_u_prev, torch.log(rate) + log_g)
        log_u = torch.where(valid, log_u, log_u_prev)
    # g_r(z) / u_r, differentiable through g_r; rows without negatives get a constant 1.
    ratio = torch.exp(torch.where(valid, log_g - log_u, torch.zeros_like(log_g)))
    s_pos = torch.where(pos, s, torch.zeros_like(s)).sum(dim=1) / n_pos.clamp_min(1).to(s.dtype)
    scored = valid & (n_pos > 0)
    log_u_or_0 = torch.where(scored, log_u, torch.zeros_like(log_u))
    value = torch.where(scored, tau * (log_u_or_0 + ratio - 1.0 + rho) - s_pos,
                        torch.zeros_like(s_pos))
    with torch.no_grad():
        weights = torch.softmax(a.masked_fill(~neg, -math.inf), dim=1).nan_to_num(0.0)
        mean_a = (weights * a.masked_fill(~neg, 0.0)).sum(dim=1)
        tau_grad = torch.where(valid, log_u + rho - ratio * mean_a, torch.zeros_like(log_u))
    return GclRows(value, log_u, tau_grad, valid)


def per_example_mean(values: Tensor, ids: Tensor, log_space: bool = False
                     ) -> tuple[Tensor, Tensor]:
    """(unique ids, mean of ``values`` over each id's rows); ``log_space``: the values are logs
    and the mean is taken of their exponentials (``log mean exp``).

    Sums are a one-hot matrix product, not scatter-adds, so the result does not depend on the
    order a GPU's atomics would add the rows in.
    """
    unique, inverse = torch.unique(ids, return_inverse=True)
    onehot = (inverse[None, :] == torch.arange(len(unique), device=ids.device)[:, None])
    weights = onehot.to(values.dtype)
    counts = weights.sum(dim=1)
    if not log_space:
        return unique, weights @ values / counts
    top = torch.full((len(unique),), -math.inf, dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(0, inverse, values, "amax")  # a max: the same in any order
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = weights @ torch.exp(values - top[inverse])
    return unique, top + torch.log(total / counts)


# --------------------------------------------------------------------------------------------
# The losses.
# --------------------------------------------------------------------------------------------


class _GlobalContrastive(Loss):
    """Shared state handling: ``log_u`` [num_train] (``-inf``: never seen)."""

    consumes = "embeddings"
    log_u: Tensor

    def __init__(self, num_train: int, gamma: float) -> None:
        super().__init__()
        _check(num_train >= 1, f"num_train must be >= 1, got {num_train}")
        _check(0.0 < gamma <= 1.0, f"gamma must be in (0, 1], got {gamma}")
        self.gamma = gamma
        self.register_buffer("log_u", torch.full((num_train,), -math.inf))

    def row_state(self, index: Tensor | None, rows: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
        """Each row's stored ``log u_i``; all ``-inf`` (a fresh estimate) for ``index=None``."""
        if index is None:
            return torch.full((rows,), -math.inf, dtype=dtype, device=device)
        return self.log_u[index.to(self.log_u.device).long()].to(device=device, dtype=dtype)

    def store_u(self, index: Tensor, step: GclRows) -> None:
        """``u_i`` = mean of its rows' ``u_r`` (rows without negatives keep the old value)."""
        ids = index.to(self.log_u.device).long()
        if not bool(step.valid.any()):
            return
        unique, log_u = per_example_mean(step.log_u[step.valid].to(self.log_u.device),
                                         ids[step.valid.to(ids.device)], log_space=True)
        self.log_u[unique] = log_u.to(self.log_u.dtype)

    def example_state(self) -> dict[str, Tensor]:
        """Per-example state for reports (the SSL family summarises it by class)."""
        return {"u": self.log_u.exp()}


@LOSSES.register("sogclr", consumes="embeddings", self_supervised=True, paper=_SOGCLR_PAPER,
                 space={"temperature": (0.1, 0.2, 0.5), "gamma": (0.5, 0.9)})
class SogCLR(_GlobalContrastive):
    """SogCLR: the global contrastive loss with a per-example moving average of its negatives.

    Objective (LibAUC ``GCLoss_v1``): ``F(w) = 1/n sum_i tau log E_{z in S_i^-} exp(h_i(z)/tau)``
    with ``h_i(z) = s(x_i, z) - s(x_i, x_i^+)``; Algorithm 1 (SogCLR) keeps ``u_i <- (1 - gamma)
    u_i + gamma g_i(w; B)`` and steps along ``1/u_i grad g_i - grad s_i+``. Per-row value and
    gradient: module docstring. Defaults are the official code's and LibAUC's: ``temperature``
    0.1, ``gamma`` 0.9 (the official README: tune in [0.1, 0.99]). ``gamma`` weights the *new*
    batch estimate, as in the paper and both codes.

    Differences from the official code and LibAUC: the first visit (``gamma = 1``) is decided
    per example, not per batch (LibAUC: when every ``u`` of the batch is still 0); ``u`` is
    kept in log space (the same values; no overflow at small temperatures).
    """

    def __init__(self, num_train: int, temperature: float = 0.1, gamma: float = 0.9) -> None:
        super().__init__(num_train, gamma)
        _check(temperature > 0, f"temperature must be > 0, got {temperature}")
        self.t = temperature

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _unit(output)
        tau = torch.full((len(z),), self.t, dtype=z.dtype, device=z.device)
        step = gcl_rows(z, target, tau, self.row_state(index, len(z), z.dtype, z.device),
                        self.gamma)
        if index is not None:
            self.store_u(index, step)
        return step.value


@LOSSES.register("isogclr", consumes="embeddings", self_supervised=True, paper=_ISOGCLR_PAPER,
                 space={"rho": (0.1, 0.3, 0.5)})
class ISogCLR(_GlobalContrastive):
    """iSogCLR: the robust (DRO) global contrastive loss with a learned temperature per example.

    Objective (Eq. 6; LibAUC ``GCLoss_v1(enable_isogclr=True)``): ``F(w, tau) = 1/n sum_i
    tau_i log E_{z in S_i^-} exp(h_i(z)/tau_i) + tau_i rho``, ``tau_i`` in ``[tau_min,
    tau_max]`` -- the dual of ``max_p sum_z p_z h_i(z)`` over distributions with ``KL(p ||
    uniform) <= rho``, so ``tau_i`` is the Lagrange multiplier of that constraint. The network
    is trained as in SogCLR with each row's ``tau_i`` (module docstring; the value includes
    ``tau_i rho``).

    ``tau_i`` are not trained by the run's optimizer: they are buffers, updated inside the
    training call by the official code's own rule (``SogCLR_DRO_Loss``), after the loss is
    computed with the old ``tau``:

    * ``d_i = mean over i's rows of tau_grad`` (``log u + rho - 1/|N| sum_n p_n s_n/tau``,
      the derivative of the objective in ``tau_i`` with ``u`` for ``g``), clipped to
      ``[-grad_clip, grad_clip]``;
    * momentum ``m_i <- (1 - beta) m_i + beta d_i`` (``beta`` weights the new gradient);
    * ``tau_i <- clip(tau_i - eta m_i, tau_min, tau_max)`` (projected step, constant ``eta``).

    Defaults are the official repository's CIFAR run (unimodal README and ``SogCLR_DRO_Loss``):
    ``tau_init`` 0.1, ``gamma`` 0.8, ``rho`` 0.4, ``eta`` 0.03, ``beta`` 0.5, bounds [0.05,
    1.0], ``grad_clip`` 3. LibAUC's defaults differ (``gamma`` 0.9, ``rho`` 0.3, ``eta`` 0.01,
    ``beta`` 0.9, bounds [0.05, 0.7], no clipping; ``grad_clip=inf`` turns clipping off). The
    official code applies ``gamma`` from the first visit (``u = gamma g`` there: its
    ``epoch == 0`` branch never runs, epochs count from 1); we use ``gamma = 1`` on the first
    visit, as SogCLR's code and LibAUC do.
    """

    tau: Tensor
    tau_momentum: Tensor

    def __init__(
        self,
        num_train: int,
        tau_init: float = 0.1,
        gamma: float = 0.8,
        rho: float = 0.4,
        eta: float = 0.03,
        beta: float = 0.5,
        tau_min: float = 0.05,
        tau_max: float = 1.0,
        grad_clip: float = 3.0,
    ) -> None:
        super().__init__(num_train, gamma)
        _check(0 < tau_min <= tau_max, f"need 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
        _check(tau_min <= tau_init <= tau_max,
               f"tau_init must be in [tau_min, tau_max] = [{tau_min}, {tau_max}], got {tau_init}")
        _check(rho >= 0, f"rho must be >= 0, got {rho}")
        _check(eta >= 0, f"eta must be >= 0, got {eta}")
        _check(0.0 < beta <= 1.0, f"beta must be in (0, 1], got {beta}")
        _check(grad_clip > 0, f"grad_clip must be > 0, got {grad_clip}")
        self.tau_init, self.rho, self.eta, self.beta = tau_init, rho, eta, beta
        self.tau_min, self.tau_max, self.grad_clip = tau_min, tau_max, grad_clip
        self.register_buffer("tau", torch.full((num_train,), float(tau_init)))
        self.register_buffer("tau_momentum", torch.zeros(num_train))

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _unit(output)
        if index is None:
            tau = torch.full((len(z),), self.tau_init, dtype=z.dtype, device=z.device)
        else:
            tau = self.tau[index.to(self.tau.device).long()].to(device=z.device, dtype=z.dtype)
        step = gcl_rows(z, target, tau, self.row_state(index, len(z), z.dtype, z.device),
                        self.gamma, self.rho)
        if index is not None:
            self.store_u(index, step)
            self.step_tau(index, step)
        return step.value

    @torch.no_grad()
    def step_tau(self, index: Tensor, step: GclRows) -> None:
        """The official projected momentum step on each example's ``tau_i``."""
        if not bool(step.valid.any()):
            return
        ids = index.to(self.tau.device).long()[step.valid.to(self.tau.device)]
        unique, grad = per_example_mean(step.tau_grad[step.valid].to(self.tau.device), ids)
        grad = grad.clamp(-self.grad_clip, self.grad_clip).to(self.tau.dtype)
        m = (1.0 - self.beta) * self.tau_momentum[unique] + self.beta * grad
        self.tau_momentum[unique] = m
        self.tau[unique] = (self.tau[unique] - self.eta * m).clamp(self.tau_min, self.tau_max)

    def example_state(self) -> dict[str, Tensor]:
        return super().example_state() | {"tau": self.tau.clone()}
