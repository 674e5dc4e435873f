"""Losses for class-imbalanced classification: margins and priors from class counts, Dice, and
metric-surrogate / stochastic losses defined on binary margins.

Two kinds live here:

* ``consumes="logits"`` (``ldam``, ``la-ce``, ``dice``, ``dsc``): logits ``z`` [N, K], integer
  targets; ``ldam`` and ``la-ce`` take the training set's ``class_counts`` as engine context.
* ``consumes="binary"`` (``anyloss``, ``ensloss``): losses written for a real-valued score ``s``
  and a label in {0, 1} (or {-1, +1}). They read the same K-logit head as every classification
  loss, so models, packing and evaluation do not depend on the loss: for K = 2 the score is the
  margin ``s = z_1 - z_0`` (``sigmoid(s)`` is exactly softmax's ``p_1``, so training and the
  softmax evaluation agree); for K > 2 the loss is applied one-vs-rest to every column ``z_k``
  with label ``1[y = k]`` (our extension: both papers are binary only). Batch-level losses
  (AnyLoss) return the batch value in every row, so the engine's mean is the paper's loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.losses.base import LOSSES, Loss


def _check(ok: bool, message: str) -> None:
    """Range checks raise ValueError; the registry turns it into a one-line UserError."""
    if not ok:
        raise ValueError(message)


def _as_float(z: Tensor) -> Tensor:
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def _counts(class_counts: Sequence[int]) -> Tensor:
    """Class counts as float64, classes absent from the training labels counted once (so their
    margins and log-priors stay finite)."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64).clamp_min(1.0)
    _check(counts.ndim == 1 and len(counts) >= 2, "class_counts must list >= 2 classes")
    return counts


def binary_problems(z: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(scores [N, M], labels in {0, 1} [N, M]): the margin ``z_1 - z_0`` for K = 2 (M = 1),
    else one-vs-rest columns ``z_k`` with ``1[y = k]`` (M = K)."""
    if z.shape[1] == 2:
        return (z[:, 1] - z[:, 0]).unsqueeze(1), target.unsqueeze(1).to(z.dtype)
    return z, F.one_hot(target.long(), z.shape[1]).to(z.dtype)


# --------------------------------------------------------------------------------------------
# Count-aware logit losses.
# --------------------------------------------------------------------------------------------


def ldam_margins(class_counts: Sequence[int], max_margin: float) -> Tensor:
    """``Delta_c = C / n_c^(1/4)`` with ``C`` set so the largest margin (rarest class) is
    ``max_margin`` (Cao et al. 2019, Eq. 13 and the official code's normalisation)."""
    inv = _counts(class_counts) ** -0.25
    return max_margin * inv / inv.max()


@LOSSES.register(
    "ldam",
    consumes="logits",
    paper="Cao, Wei, Gaidon, Arechiga, Ma, Learning Imbalanced Datasets with Label-Distribution-"
    "Aware Margin Loss, NeurIPS 2019",
)
class LDAM(Loss):
    """LDAM: cross-entropy with a class-dependent margin Delta_y = C n_y^(-1/4) on the true logit.

    ``L = -log( e^{s(z_y - Delta_y)} / (e^{s(z_y - Delta_y)} + sum_{j != y} e^{s z_j}) )``
    (Cao et al., NeurIPS 2019, Eq. 13); ``margin`` is the largest margin ``C / n_min^(1/4)``
    (official default 0.5). ``scale`` s multiplies the adjusted logits: the official code uses
    s = 30 because its model ends in a cosine (normalised) classifier; our models end in a plain
    linear layer, so the default is the paper's equation as written, s = 1. Deferred
    re-weighting (the paper's DRW schedule) is a training schedule, not part of this loss.
    """

    consumes = "logits"

    def __init__(self, class_counts: Sequence[int], margin: float = 0.5, scale: float = 1.0
                 ) -> None:
        super().__init__()
        _check(margin >= 0, f"margin must be >= 0, got {margin}")
        _check(scale > 0, f"scale must be > 0, got {scale}")
        self.scale = scale
        self.register_buffer("margins", ldam_margins(class_counts, margin))

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _as_float(output)
        shift = torch.zeros_like(z).scatter_(
            1, target.long().unsqueeze(1), self.margins.to(z.dtype)[target].unsqueeze(1))
        return F.cross_entropy(self.scale * (z - shift), target.long(), reduction="none")


@LOSSES.register(
    "la-ce",
    consumes="logits",
    paper="Menon, Jayasumana, Rawat, Jain, Veit, Kumar, Long-tail Learning via Logit "
    "Adjustment, ICLR 2021 (logit-adjusted loss)",
)
class LogitAdjustedCE(Loss):
    """Logit-adjusted cross-entropy: CE(z + tau log pi, y) with the training class priors pi.

    ``L = -log( e^{z_y + tau log pi_y} / sum_j e^{z_j + tau log pi_j} )``
    (Menon et al., ICLR 2021, Eq. 10), ``pi_c = n_c / sum_j n_j`` from the training labels;
    ``tau = 1`` is the paper's default. Prediction uses the raw logits (argmax z), the
    balanced-error-consistent rule of the paper.
    """

    consumes = "logits"

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        _check(tau >= 0, f"tau must be >= 0, got {tau}")
        counts = _counts(class_counts)
        self.tau = tau
        self.register_buffer("log_prior", (counts / counts.sum()).log())

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _as_float(output)
        return F.cross_entropy(z + self.tau * self.log_prior.to(z.dtype), target.long(),
                               reduction="none")


# --------------------------------------------------------------------------------------------
# Dice losses.
# --------------------------------------------------------------------------------------------

_DICE_PAPER = (
    "Li, Sun, Meng, Liang, Wu, Li, Dice Loss for Data-imbalanced NLP Tasks, ACL 2020"
)


def dice_terms(p: Tensor, t: Tensor, one_minus_p: Tensor, alpha: float, gamma: float,
               square: bool) -> Tensor:
    """``1 - (2 q t + gamma) / (den + gamma)`` elementwise, ``q = (1 - p)^alpha p``,
    ``den = q^2 + t^2`` (square) or ``q + t``."""
    q = one_minus_p**alpha * p if alpha else p
    den = q * q + t * t if square else q + t
    return 1.0 - (2.0 * q * t + gamma) / (den + gamma)


class _Dice(Loss):
    """Per-example Dice loss, one-vs-rest over the softmax probabilities, summed over classes
    (the official multi-class implementation's structure)."""

    consumes = "logits"

    def __init__(self, alpha: float, gamma: float, square: bool) -> None:
        super().__init__()
        _check(alpha >= 0, f"alpha must be >= 0, got {alpha}")
        _check(gamma > 0, f"gamma must be > 0, got {gamma}")
        self.alpha, self.gamma, self.square = alpha, gamma, square

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _as_float(output)
        logp = F.log_softmax(z, dim=1)
        # 1 - p from log p (accurate near p = 1), clamped so d/dp (1-p)^alpha stays finite.
        one_minus_p = (-torch.expm1(logp)).clamp_min(torch.finfo(z.dtype).tiny)
        t = F.one_hot(target.long(), z.shape[1]).to(z.dtype)
        terms = dice_terms(logp.exp(), t, one_minus_p, self.alpha, self.gamma, self.square)
        return terms.sum(dim=1)


@LOSSES.register("dice", consumes="logits", paper=_DICE_PAPER + " (DL, squared denominator)")
class Dice(_Dice):
    """Dice loss with smoothing gamma: sum_k 1 - (2 p_k y_k + gamma) / (p_k^2 + y_k^2 + gamma).

    Li et al., ACL 2020, Sec. 3.3: the Sorensen-Dice coefficient of one example with the
    smoothing ``gamma`` in numerator and denominator (so negatives, ``y_k = 0``, still push
    ``p_k`` down) and the squared denominator of Milletari et al. (the paper's DL; the official
    scripts pass ``--dice_square`` and ``gamma = 1``). Multi-class: one term per class on the
    softmax probabilities, summed, as in the official implementation.
    """

    def __init__(self, gamma: float = 1.0, square: bool = True) -> None:
        super().__init__(0.0, gamma, square)


@LOSSES.register("dsc", consumes="logits", paper=_DICE_PAPER + " (self-adjusting DSC)")
class SelfAdjustingDice(_Dice):
    """Self-adjusting Dice: p_k replaced by (1 - p_k)^alpha p_k to down-weight easy examples.

    ``L = sum_k 1 - (2 (1-p_k)^alpha p_k y_k + gamma) / ((1-p_k)^alpha p_k + y_k + gamma)``
    (Li et al., ACL 2020, Eq. 12; ``alpha = 1`` is the paper's DSC row of Table 2; the official
    scripts use ``alpha = 0.01`` with the squared denominator, ``square = true`` here).
    """

    def __init__(self, alpha: float = 1.0, gamma: float = 1.0, square: bool = False) -> None:
        super().__init__(alpha, gamma, square)


# --------------------------------------------------------------------------------------------
# AnyLoss: confusion-matrix metrics made differentiable.
# --------------------------------------------------------------------------------------------

ANYLOSS_EPS = 1e-5
"""The stabiliser ``s`` in the F1 and balanced-accuracy denominators of the authors'
anyloss_extension code (their first repository, doheonhan/anyloss, has none)."""

AnyMetric = Literal["accuracy", "f1", "balanced-accuracy", "gmean"]


def anyloss_metric(a: Tensor, t: Tensor, metric: str) -> Tensor:
    """The soft metric of each column from amplified probabilities ``a`` and labels ``t``.

    ``TP = sum a t``, ``FN = n1 - TP``, ``FP = sum a - TP``, ``TN = n0 - FP`` (sums over the
    batch, dim 0). accuracy ``(TP + TN) / N``; F1 ``2 TP / (n1 + sum a)``; balanced accuracy
    ``(n0 TP + n1 TN) / (2 n1 n0)``; G-mean ``sqrt(TP TN / (n1 n0))``, the geometric mean of
    the soft recall and specificity, as in the authors' README and notebooks (doheonhan/anyloss,
    ``Ours_Gmean``: ``tf.sqrt(...)``, the squared form commented out above it; their later
    anyloss_extension repository uses the squared form ``TP TN / (n1 n0 + s)``). A column without
    positives or negatives has no G-mean; it counts as 0 with zero gradient.
    """
    n = a.shape[0]
    n1 = t.sum(dim=0)
    n0 = n - n1
    tp = (a * t).sum(dim=0)
    fp = a.sum(dim=0) - tp
    tn = n0 - fp
    if metric == "accuracy":
        return (tp + tn) / n
    if metric == "f1":
        return 2.0 * tp / (n1 + a.sum(dim=0) + ANYLOSS_EPS)
    if metric == "balanced-accuracy":
        return (n0 * tp + n1 * tn) / (2.0 * n1 * n0 + ANYLOSS_EPS)
    product = tp * tn / (n1 * n0).clamp_min(1.0)  # n1 n0 is an integer: 0 or >= 1
    defined = product > 0
    # sqrt'(0) is infinite: take the root only where it is defined, so the gradient stays 0.
    return torch.where(defined, torch.where(defined, product, 1.0).sqrt(), 0.0)


@LOSSES.register(
    "anyloss",
    consumes="binary",
    paper="Han, Moniz, Chawla, AnyLoss: Transforming Classification Metrics into Loss "
    "Functions, arXiv:2405.14745, 2024",
)
class AnyLoss(Loss):
    """AnyLoss: 1 - metric of a soft confusion matrix built from amplified probabilities.

    ``p = sigmoid(s)``, amplified ``A(p) = 1 / (1 + e^{-L (p - 1/2)})`` (Han et al. 2024, Eq. 1),
    confusion entries summed over the batch (Eq. 2-5), ``L = 1 - metric`` for accuracy, F1,
    balanced accuracy or G-mean (Sec. 3). ``L = 73`` is the value of the authors' experiments
    (their notebooks' ``L = 73``). Batch-level: every row carries the batch loss. For K > 2 the
    metric is averaged over the one-vs-rest columns (macro; our extension).
    """

    consumes = "binary"

    def __init__(self, metric: AnyMetric = "f1", L: float = 73.0) -> None:
        super().__init__()
        _check(L > 0, f"L must be > 0, got {L}")
        self.metric, self.amplification = metric, L

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        s, t = binary_problems(_as_float(output), target)
        a = torch.sigmoid(self.amplification * (torch.sigmoid(s) - 0.5))
        value = 1.0 - anyloss_metric(a, t, self.metric).mean()
        return value.expand(s.shape[0])


# --------------------------------------------------------------------------------------------
# EnsLoss: a random convex, calibrated loss-derivative per batch.
# --------------------------------------------------------------------------------------------

ENSLOSS_SEED_SALT = 0xE75
"""Mixed into the run seed for the loss's own generator (independent of weights and order)."""


def inverse_boxcox(x: Tensor, lam: float) -> Tensor:
    """``exp(x)`` for lam = 0, else ``max(1 + lam x, 0)^(1/lam)``."""
    if lam == 0:
        return x.exp()
    return (1.0 + lam * x).clamp_min(0.0) ** (1.0 / lam)


def ensloss_derivatives(margins: Tensor, noise: Tensor, boxcox: float) -> Tensor:
    """Loss-derivative values ``g_i = phi'(m_i)`` of one random convex calibrated loss.

    Draws ``-invBoxCox(noise)`` (all negative), clipped at -1, are sorted and matched to the
    sorted margins, so ``g`` is non-decreasing in the margin (a convex loss); margins above 1
    get ``g / m`` (the superlinear tail); ``-1e-6`` keeps every ``g`` < 0, in particular at 0
    (calibration, Bartlett et al. 2006: a convex loss is calibrated iff ``phi'(0) < 0``).
    """
    draws = (-inverse_boxcox(noise, boxcox)).clamp_min(-1.0).sort().values
    g = torch.empty_like(draws)
    g[margins.argsort()] = draws
    g = torch.where(margins > 1.0, g / margins.clamp_min(1.0), g)
    return g - 1e-6


@LOSSES.register(
    "ensloss",
    consumes="binary",
    paper="Dai, EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in "
    "Classification, ICML 2025 (arXiv:2409.00908)",
)
class EnsLoss(Loss):
    """EnsLoss: SGD with a random convex calibrated loss-derivative drawn for every batch.

    With margins ``m_i = y_i s_i`` (y in {-1, +1}), each call draws derivative values
    ``g_i = phi'(m_i)`` of a random convex, calibrated loss (``ensloss_derivatives``: Dai 2025,
    Sec. 3 and Algorithm 1, with the official code's inverse Box-Cox draws (lam = 0: log-normal),
    clip at -1 and superlinear tail) and returns ``g_i m_i`` with ``g`` detached, so the gradient
    is ``g_i dm_i`` -- only the derivative is defined, and the per-example values (and the
    training-loss curve) are not a loss level. ``seed`` (the run seed, engine context) seeds the
    loss's own CPU generator: runs are deterministic given the seed. For K > 2 one derivative
    function is drawn for all one-vs-rest margins of the batch, summed per example.
    """

    consumes = "binary"

    def __init__(self, seed: int, boxcox: float = 0.0) -> None:
        super().__init__()
        _check(math.isfinite(boxcox), f"boxcox must be finite, got {boxcox}")
        self.boxcox = boxcox
        self.generator = torch.Generator().manual_seed(int(seed) * 65536 + ENSLOSS_SEED_SALT)

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        s, t = binary_problems(_as_float(output), target)
        margins = (2.0 * t - 1.0) * s
        noise = torch.randn(margins.numel(), generator=self.generator, dtype=torch.float64)
        flat = margins.detach().reshape(-1)
        g = ensloss_derivatives(flat, noise.to(flat.device, flat.dtype), self.boxcox)
        return (g.reshape(margins.shape) * margins).sum(dim=1)
