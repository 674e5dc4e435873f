"""The correctness-aware (CA) calibrator: a per-example temperature predicted from the model's
outputs on transformed copies of the input (Liu, Wang, Zou, Zou, Zheng, Optimizing Calibration by
Gaining Aware of Prediction Correctness, arXiv:2404.13016, 2024; official code
github.com/liuyvchi/Correctness-aware-calibration, ``Temperature_adaptive`` and ``run_cal.py``).

Why transformed copies: one output alone says little about whether the prediction is right; how
the model's belief in its top classes survives a rotation, a contrast change or input noise does.

As in the official code:

* **input** (``correctness_features``): for each transformed copy, its softmax probabilities on
  the original input's top-``k`` classes (``k = 4``, or K when K < 4), the copies concatenated:
  ``V * k`` features per example. The original logits themselves are not an input; they are
  what gets divided.
* **network** (``TemperatureNet``): ``Linear(V k, 5) -> ReLU -> Linear(5, 1)``, temperature in
  ``[0.1, 10]``.
* **loss**: the CA objective (``lossbench.calibration.correctness_aware_objective``) on the
  per-example-scaled logits: weighted squared gap between top-label confidence and correctness,
  weights ``1 - acc`` on right and ``acc`` on wrong predictions.
* **data**: the validation split only; the test split is only transformed and divided.

Where this differs from the official code, and why:

* the temperature is ``0.1 + 9.9 sigmoid(h)`` instead of ``clamp(h, 0.1, 10)``: the same range,
  but a clamped example gets no gradient (with PyTorch's random initialisation many start there),
  and the head starts at ``T = 1`` for every example (weight 0, bias ``logit(0.9 / 9.9)``), i.e. at
  the uncalibrated model;
* training is ``steps`` full-batch Adam steps at ``lr`` (default 500 at 0.01) in float64, with
  the balancing accuracy over the whole validation set; the official code runs 10 epochs of
  shuffled batches of 1000 at lr 1e-4 on ImageNet's 50,000 validation images (500 steps), which
  on a few hundred validation examples would be 10 steps and leave the calibrator at its
  initialisation;
* the official code also builds a correctness head (BCE) that its loss never uses; left out.

Deterministic: the initialisation is drawn from ``seed`` inside ``torch.random.fork_rng`` (the
global generator is untouched) and full-batch training has no data order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lossbench.calibration import correctness_aware_objective

TOP_K = 4
"""Classes of the original prediction whose probability each copy reports (official code)."""
HIDDEN = 5
"""Width of the calibrator's hidden layer (official code: ``feat_dim=5``)."""
T_MIN, T_MAX = 0.1, 10.0
"""The temperature's range (official code's clamp)."""


def correctness_features(logits: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """[N, V * k]: each copy's softmax on the original's top-``k`` classes, best first.

    ``logits`` [N, K] are the original outputs, ``views`` [V, N, K] the outputs on V copies."""
    n, k_all = logits.shape
    k = min(TOP_K, k_all)
    top = logits.topk(k, dim=1).indices  # [N, k]
    probs = views.double().softmax(dim=2)  # [V, N, K]
    picked = probs.gather(2, top.expand(len(views), n, k))  # [V, N, k]
    return picked.permute(1, 0, 2).reshape(n, len(views) * k)


class TemperatureNet(nn.Module):
    """Features -> one temperature per example in ``(T_MIN, T_MAX)``, 1 at initialisation."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, HIDDEN), nn.ReLU())
        self.head = nn.Linear(HIDDEN, 1)
        nn.init.zeros_(self.head.weight)
        start = (1.0 - T_MIN) / (T_MAX - T_MIN)
        nn.init.constant_(self.head.bias, math.log(start / (1 - start)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.head(self.embed(features)).squeeze(1)
        return T_MIN + (T_MAX - T_MIN) * torch.sigmoid(h)


class CACalibrator:
    """A fitted calibrator: temperatures for new (logits, transformed outputs)."""

    def __init__(self, net: TemperatureNet) -> None:
        self.net = net

    @torch.no_grad()
    def temperatures(self, logits: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """[N] float64 temperatures, one per example (on the CPU)."""
        return self.net(correctness_features(logits.double().cpu(), views.double().cpu()))

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The calibrated logits (float64, on the CPU): ``logits / T`` row by row."""
        return logits.double().cpu() / self.temperatures(logits, views)[:, None]


def fit_ca_calibrator(logits: torch.Tensor, views: torch.Tensor, y: torch.Tensor, seed: int,
                      steps: int = 500, lr: float = 0.01) -> CACalibrator:
    """Train the calibrator on validation ``logits`` [N, K], their copies' outputs ``views``
    [V, N, K] and labels ``y`` with the CA objective."""
    z = logits.detach().double().cpu()
    features = correctness_features(z, views.detach().double().cpu())
    y = y.cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TemperatureNet(features.shape[1]).double()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = correctness_aware_objective(z / net(features)[:, None], y)
        loss.backward()
        optimiser.step()
    net.eval()
    return CACalibrator(net)
