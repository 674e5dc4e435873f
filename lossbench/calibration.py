"""Post-hoc calibration: a temperature fitted on validation logits, applied to test logits.

Both calibrators divide the logits by one temperature ``T > 0`` (accuracy-preserving: the argmax
never changes) and differ in the objective minimised on the validation set:

* ``ts`` -- temperature scaling, validation NLL (Guo, Pleiss, Sun, Weinberger, On Calibration of
  Modern Neural Networks, ICML 2017, Sec. 4.2);
* ``ca`` -- the correctness-aware (CA) objective of Liu, Wang, Zou, Zou, Zheng, Optimizing
  Calibration by Gaining Aware of Prediction Correctness (arXiv:2404.13016, 2024): the squared
  gap between the top-label confidence and the prediction's correctness,
  ``sum_i w_i (max_k softmax(z_i / T)_k - 1[argmax z_i = y_i])^2 / sum_i w_i``, with the official
  code's balancing weights ``w_i = 1 - acc`` on correct and ``acc`` on wrong predictions (acc =
  validation accuracy), so both groups weigh the same; unweighted when every prediction is right
  (or every one wrong). The paper feeds its calibrator predictions on transformed copies of each
  input (rotations, greyscale, colour jitter) and predicts a per-example temperature; those need
  image transforms and a second network, so here the CA objective fits one global temperature
  -- the objective is the paper's, the calibrator is temperature scaling's. Mind what the
  balancing does to one global temperature: at any confidence level its optimum is
  ``(1 - acc) a / ((1 - acc) a + acc (1 - a))`` for a bin of accuracy ``a``, i.e. 1/2 where
  ``a = acc``, so a model more often right than wrong ends up underconfident (on digits-lt and
  digits-binary it raises test ECE well above temperature scaling's). It is reported as the
  paper's objective, not as a recommended calibrator.

The temperature is found by a search over ``log T`` (a log-spaced grid on [1e-3, 1e4], then
golden-section refinement around the best grid point): deterministic, no learning rate, and the
global minimum for NLL, which is convex in ``1 / T``.

A task's ``[calibration] method`` picks what runs: ``none``; ``temperature`` (``ts``);
``correctness-aware`` (``ca``, with ``ts`` beside it as the reference). Each calibrator ``c``
adds ``test_ece_c``, ``test_ada_ece_c``, ``test_nll_c``, ``test_brier_c`` and ``temperature_c``
to the run's metrics, next to the uncalibrated ``test_ece``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lossbench.errors import require
from lossbench.metrics import adaptive_calibration_error, brier, expected_calibration_error, nll

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(temperature-scaled logits [N, K], labels [N]) -> scalar to minimise."""


def nll_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood (temperature scaling's objective)."""
    return F.cross_entropy(logits, y)


def correctness_aware_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Weighted squared gap between top-label confidence and correctness (Liu et al. 2024)."""
    conf, pred = logits.softmax(dim=1).max(dim=1)
    correct = (pred == y).to(logits.dtype)
    acc = correct.mean()
    weights = torch.where(correct > 0, 1.0 - acc, acc)
    if weights.sum() <= 0:  # all right or all wrong: nothing to balance
        weights = torch.ones_like(weights)
    return (weights * (conf - correct) ** 2).sum() / weights.sum()


CALIBRATORS: dict[str, Objective] = {"ts": nll_objective, "ca": correctness_aware_objective}
"""Calibrator suffix -> validation objective for its temperature."""

METHODS: dict[str, tuple[str, ...]] = {
    "none": (),
    "temperature": ("ts",),
    "correctness-aware": ("ts", "ca"),
}
"""``[calibration] method`` -> the calibrators it runs (and reports)."""


def check_method(method: str) -> None:
    require(method in METHODS,
            f"unknown calibration.method '{method}'; accepted: {', '.join(METHODS)}")


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, objective: Objective,
                    lo: float = 1e-3, hi: float = 1e4, grid: int = 141, steps: int = 40
                    ) -> float:
    """The temperature in [lo, hi] minimising ``objective(logits / T, y)``."""
    z = logits.double()

    def loss(log_t: float) -> float:
        return float(objective(z / math.exp(log_t), y))

    points = torch.linspace(math.log(lo), math.log(hi), grid).tolist()
    values = [loss(p) for p in points]
    best = min(range(grid), key=values.__getitem__)
    a, b = points[max(best - 1, 0)], points[min(best + 1, grid - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    candidates = [(values[best], points[best]), (fc, c), (fd, d)]
    return math.exp(min(candidates)[1])


def calibrate(val_logits: torch.Tensor, y_val: torch.Tensor, test_logits: torch.Tensor,
              y_test: torch.Tensor, method: str, bins: int = 15) -> dict[str, float]:
    """Fit each calibrator of ``method`` on validation, report its test calibration metrics."""
    check_method(method)
    out: dict[str, float] = {}
    for suffix in METHODS[method]:
        t = fit_temperature(val_logits, y_val, CALIBRATORS[suffix])
        scaled = test_logits.double() / t
        probs = scaled.softmax(dim=1)
        out |= {
            f"test_ece_{suffix}": expected_calibration_error(probs, y_test, bins),
            f"test_ada_ece_{suffix}": adaptive_calibration_error(probs, y_test, bins),
            f"test_nll_{suffix}": nll(scaled, y_test),
            f"test_brier_{suffix}": brier(probs, y_test),
            f"temperature_{suffix}": t,
        }
    return out
