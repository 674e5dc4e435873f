"""Post-hoc calibration: fitted on the validation split only, scored on the test split.

Three calibrators, each named by the suffix its metrics carry. All are accuracy-preserving:
they divide each example's logits by a temperature ``T > 0``, so the argmax never changes.

* ``ts`` -- temperature scaling: one global ``T`` minimising validation NLL (Guo, Pleiss, Sun,
  Weinberger, On Calibration of Modern Neural Networks, ICML 2017, Sec. 4.2).
* ``ca_global`` -- one global ``T`` minimising the correctness-aware (CA) objective of Liu, Wang,
  Zou, Zou, Zheng, Optimizing Calibration by Gaining Aware of Prediction Correctness
  (arXiv:2404.13016, 2024), ``correctness_aware_objective``: the squared gap between top-label
  confidence and correctness, weighted so right and wrong predictions weigh the same. The
  objective is the paper's, the calibrator is temperature scaling's; a global ``T`` under that
  balancing pushes every confidence towards 1/2 (at a confidence level whose accuracy is ``a``
  the optimum is ``(1 - acc) a / ((1 - acc) a + acc (1 - a))``), so a model more often right than
  wrong ends up underconfident. Kept as the baseline the per-example calibrator improves on.
  **Until this name existed these metrics were called ``*_ca``** (runs made before the
  per-example calibrator; no committed table under ``results/`` holds them).
* ``ca`` -- the paper's calibrator: a per-example temperature predicted from the model's outputs
  on transformed copies of the input, trained with the CA objective
  (``lossbench.ca_calibrator``; the transforms: ``lossbench.calibration_transforms``).

A task's ``[calibration]`` table (``CalibrationConfig``) picks what runs: ``method = "none"``;
``"temperature"`` (``ts``); ``"correctness-aware-global"`` (``ts``, ``ca_global``);
``"correctness-aware"`` (``ts``, ``ca_global``, ``ca``: the paper's calibrator with both
references beside it). Each calibrator ``c`` adds ``test_ece_c``, ``test_ada_ece_c``,
``test_nll_c``, ``test_brier_c`` and ``temperature_c`` to the run's metrics, next to the
uncalibrated ``test_ece`` (for ``ca``, ``temperature_ca`` is the mean per-example test temperature
and ``temperature_ca_std`` their standard deviation).

Global temperatures are found by a search over ``log T`` (a log-spaced grid on [1e-3, 1e4], then
golden-section refinement around the best grid point): deterministic, no learning rate, and the
global minimum for NLL, which is convex in ``1 / T``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lossbench.errors import require
from lossbench.metrics import adaptive_calibration_error, brier, expected_calibration_error, nll
from lossbench.spec import typed_table

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(temperature-scaled logits [N, K], labels [N]) -> scalar to minimise."""

Views = tuple[torch.Tensor, torch.Tensor]
"""The model's logits on transformed copies of the validation and the test inputs, [V, N, K]
each (``lossbench.calibration_transforms.transformed_outputs``)."""


def nll_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood (temperature scaling's objective)."""
    return F.cross_entropy(logits, y)


def correctness_aware_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The CA loss (Liu et al. 2024, Sec. 3; the official code's weighting):
    ``sum_i w_i (max_k softmax(z_i)_k - c_i)^2 / sum_i w_i`` with ``c_i = 1[argmax z_i = y_i]``
    and ``w_i = 1 - acc`` on right, ``acc`` on wrong predictions (``acc`` the accuracy over the
    examples given), so both groups weigh the same; unweighted when every prediction is right
    (or every one wrong). ``logits`` are already temperature-scaled, globally or per example."""
    conf, pred = logits.softmax(dim=1).max(dim=1)
    correct = (pred == y).to(logits.dtype)
    acc = correct.mean()
    weights = torch.where(correct > 0, 1.0 - acc, acc)
    if weights.sum() <= 0:  # all right or all wrong: nothing to balance
        weights = torch.ones_like(weights)
    return (weights * (conf - correct) ** 2).sum() / weights.sum()


GLOBAL: dict[str, Objective] = {"ts": nll_objective, "ca_global": correctness_aware_objective}
"""Global-temperature calibrator suffix -> its validation objective."""

METHODS: dict[str, tuple[str, ...]] = {
    "none": (),
    "temperature": ("ts",),
    "correctness-aware-global": ("ts", "ca_global"),
    "correctness-aware": ("ts", "ca_global", "ca"),
}
"""``[calibration] method`` -> the calibrators it runs (and reports)."""


@dataclass(frozen=True)
class CalibrationConfig:
    """``[calibration]``: the method and the per-example calibrator's options (``ca`` only)."""

    method: str = "none"
    rotation: float = 15.0
    """Image tasks: degrees of the rotated copy."""
    contrast: float = 0.4
    """Image tasks: the jittered copy's contrast factor is drawn per image from
    ``[1 - contrast, 1 + contrast]``."""
    input_noise: float = 0.1
    """Tabular tasks: the noisy copies add Gaussian noise of this many standard deviations of
    each feature (measured on the validation inputs)."""
    copies: int = 3
    """Tabular tasks: how many noisy copies (the paper uses three transforms)."""
    transform_seed: int = 0
    """Seeds the random transforms (the same copies for every run seed, so packed runs share
    them); the calibrator's initialisation is seeded by the run seed."""
    steps: int = 500
    """Full-batch Adam steps of the calibrator."""
    lr: float = 0.01


def read_calibration(spec: Mapping[str, Any]) -> CalibrationConfig:
    """The ``[calibration]`` table, checked: one-line user errors for bad values."""
    cal = typed_table(CalibrationConfig, spec.get("calibration", {}), "calibration")
    check_method(cal.method)
    for key in ("rotation", "contrast", "input_noise", "lr"):
        require(getattr(cal, key) >= 0, f"calibration.{key} must be >= 0, got {getattr(cal, key)}")
    require(cal.contrast < 1, f"calibration.contrast must be in [0, 1), got {cal.contrast}")
    require(cal.lr > 0, f"calibration.lr must be > 0, got {cal.lr}")
    for key in ("copies", "steps"):
        require(getattr(cal, key) >= 1,
                f"calibration.{key} must be an int >= 1, got {getattr(cal, key)}")
    return cal


def check_method(method: str) -> None:
    require(method in METHODS,
            f"unknown calibration.method '{method}'; accepted: {', '.join(METHODS)}")


def needs_views(method: str) -> bool:
    """Whether ``method`` runs the per-example calibrator (outputs on transformed inputs)."""
    return "ca" in METHODS[method]


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


def scores(scaled: torch.Tensor, y: torch.Tensor, suffix: str, bins: int) -> dict[str, float]:
    """Test calibration metrics of temperature-scaled logits, named ``test_<metric>_<suffix>``."""
    probs = scaled.softmax(dim=1)
    return {
        f"test_ece_{suffix}": expected_calibration_error(probs, y, bins),
        f"test_ada_ece_{suffix}": adaptive_calibration_error(probs, y, bins),
        f"test_nll_{suffix}": nll(scaled, y),
        f"test_brier_{suffix}": brier(probs, y),
    }


def calibrate(val_logits: torch.Tensor, y_val: torch.Tensor, test_logits: torch.Tensor,
              y_test: torch.Tensor, method: str | CalibrationConfig, bins: int = 15,
              views: Views | None = None, seed: int = 0) -> dict[str, float]:
    """Fit each calibrator of ``method`` on validation, report its test calibration metrics.

    ``views`` (needed by ``ca`` only) are the model's outputs on transformed copies of the
    validation and test inputs; ``seed`` seeds the per-example calibrator's initialisation."""
    cal = method if isinstance(method, CalibrationConfig) else CalibrationConfig(method)
    check_method(cal.method)
    out: dict[str, float] = {}
    for suffix in METHODS[cal.method]:
        if suffix in GLOBAL:
            t = fit_temperature(val_logits, y_val, GLOBAL[suffix])
            out |= scores(test_logits.double() / t, y_test, suffix, bins) | {
                f"temperature_{suffix}": t}
            continue
        from lossbench.ca_calibrator import fit_ca_calibrator  # it imports this module

        assert views is not None, "the per-example calibrator needs the transformed outputs"
        calibrator = fit_ca_calibrator(val_logits, views[0], y_val, seed, cal.steps, cal.lr)
        temps = calibrator.temperatures(test_logits, views[1])
        out |= scores(calibrator(test_logits, views[1]), y_test.cpu(), suffix, bins) | {
            f"temperature_{suffix}": float(temps.mean()),
            f"temperature_{suffix}_std": float(temps.std()) if len(temps) > 1 else 0.0}
    return out
