"""Classification metrics on model outputs: pure functions of tensors, returning Python floats.

Conventions: ``logits`` [N, K], ``probs = softmax(logits)`` [N, K], integer labels ``y`` [N],
predictions ``pred = argmax`` [N]. Rates (top-k, balanced accuracy, F1, AUROC, ECE) are
percentages; NLL and Brier are raw. Class-averaged metrics follow scikit-learn's conventions so
they can be checked against ``sklearn.metrics``:

* balanced accuracy: mean recall over the classes present in ``y``;
* macro-F1: mean of ``2TP / (2TP + FP + FN)`` over the classes present in ``y`` or ``pred``;
* binary F1 (class 1 positive): ``2TP / (2TP + FP + FN)``, 0 when there is nothing to find;
* AUROC: the Mann-Whitney statistic, ties counted one half; multi-class one-vs-rest AUROC is
  the mean over the classes that have both positives and negatives in ``y``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def top_k(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Percentage of examples whose label is among the ``k`` largest logits."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1)
    return 100.0 * hits.float().mean().item()


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """ECE in percent with equal-width confidence bins (Guo et al., ICML 2017, Eq. 3).

    Bin ``b`` holds the confidences in ``(b / bins, (b + 1) / bins]``. The weighted gap
    ``sum_b (n_b / n) |conf_b - acc_b|`` is ``sum_b |S_b - A_b| / n`` with ``S_b``, ``A_b`` the
    bin's sums of confidence and of correctness, so one ``bucketize`` and two ``bincount`` do it
    (no per-bin loop; sums in float64).
    """
    conf, pred = probs.max(dim=1)
    return confidence_ece(conf, pred == y, bins)


def confidence_ece(conf: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """ECE in percent from each prediction's confidence and correctness (bool or 0/1), for
    callers that never hold the whole probability matrix (language models score tokens chunk by
    chunk). Same equal-width bins and ``bucketize`` + ``bincount`` sums as
    :func:`expected_calibration_error`."""
    edges = torch.linspace(0, 1, bins + 1, device=conf.device)
    which = torch.bucketize(conf, edges) - 1  # edges[b] < conf <= edges[b + 1] -> b
    inside = (which >= 0) & (which < bins)
    return _binned_gap(which[inside], conf[inside], correct[inside], bins, len(conf))


def adaptive_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """Adaptive ECE in percent: ``bins`` equal-mass bins of the sorted confidences.

    Nguyen & O'Connor, EMNLP 2015 (equal-mass binning); Mukhoti et al., NeurIPS 2020 (AdaECE).
    Bin sizes differ by at most one, as ``torch.tensor_split`` cuts the sorted examples (the
    first ``n % bins`` bins hold one more), so every bin holds about N / bins examples however
    the confidences cluster near 1.
    """
    conf, pred = probs.max(dim=1)
    order = conf.argsort()
    n = len(conf)
    sizes = torch.full((bins,), n // bins, device=probs.device)
    sizes[: n % bins] += 1
    which = torch.repeat_interleave(torch.arange(bins, device=probs.device), sizes)
    return _binned_gap(which, conf[order], pred[order] == y[order], bins, n)


def _binned_gap(which: torch.Tensor, conf: torch.Tensor, correct: torch.Tensor, bins: int,
                n: int) -> float:
    """``100 * sum_b |sum of conf in b - sum of correct in b| / n`` (float64 sums per bin)."""
    conf_sum = torch.bincount(which, weights=conf.double(), minlength=bins)
    hit_sum = torch.bincount(which, weights=correct.double(), minlength=bins)
    return 100.0 * ((conf_sum - hit_sum).abs().sum() / max(n, 1)).item()


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [K, K]: row = true class, column = predicted class (scikit-learn's layout)."""
    flat = y.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Mean per-class recall in percent over the classes present in ``y`` (Brodersen et al.)."""
    cm = confusion_matrix(pred, y, num_classes).double()
    support = cm.sum(dim=1)
    present = support > 0
    return 100.0 * (cm.diagonal()[present] / support[present]).mean().item()


def _f1_per_class(cm: torch.Tensor) -> torch.Tensor:
    """``2TP / (2TP + FP + FN)`` per class; 0 where the denominator is 0."""
    tp = cm.diagonal()
    denom = cm.sum(dim=0) + cm.sum(dim=1)  # (TP + FP) + (TP + FN)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))


def macro_f1(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean F1 in percent over the classes that occur in ``y`` or ``pred``."""
    cm = confusion_matrix(pred, y, num_classes).double()
    seen = (cm.sum(dim=0) + cm.sum(dim=1)) > 0
    return 100.0 * _f1_per_class(cm)[seen].mean().item()


def binary_f1(pred: torch.Tensor, y: torch.Tensor) -> float:
    """F1 of the positive class 1 in percent (labels and predictions in {0, 1})."""
    return 100.0 * _f1_per_class(confusion_matrix(pred, y, 2).double())[1].item()


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks within each column of ``x`` [N, K], ties given their average rank (float64).

    All columns at once, with no host synchronisation (a per-column loop with
    ``unique_consecutive`` synced the GPU once per class): sort each column, mark where a tie
    group starts, and carry each group's first and last position with ``cummax`` (forward and
    over the flipped column); a group's rank is the mean of its first and last, 1-based.
    """
    values, order = x.T.sort(dim=1)  # [K, N]
    n = values.shape[1]
    position = torch.arange(n, device=x.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, 0).cummax(dim=1).values
    # Flipped, a group's last position is where it starts: the same cummax, mapped back.
    last = (n - 1) - torch.where(ends.flip(1), position, 0).cummax(dim=1).values.flip(1)
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks.scatter_(1, order, (first + last).double() / 2 + 1)
    return ranks.T


def _mann_whitney_auc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per-column AUROC (fraction) of ``scores`` [N, K] for the boolean labels ``positive``
    [N, K]: the Mann-Whitney U from average ranks (exact, ties count one half); NaN where a
    column has no positives or no negatives."""
    n_pos = positive.sum(dim=0).double()
    n_neg = len(positive) - n_pos
    ranks = _average_ranks(scores.double())
    u = (ranks * positive).sum(dim=0) - n_pos * (n_pos + 1) / 2
    defined = (n_pos > 0) & (n_neg > 0)
    return torch.where(defined, u / (n_pos * n_neg).clamp_min(1), torch.nan)


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve in percent: P(score_pos > score_neg) + P(tie) / 2.

    Computed as the Mann-Whitney U statistic from average ranks (exact, ties included).
    Returns NaN when ``positive`` has no positives or no negatives.
    """
    return 100.0 * _mann_whitney_auc(scores[:, None], positive.bool()[:, None]).item()


def auroc_ovr(logits: torch.Tensor, y: torch.Tensor) -> float:
    """One-vs-rest macro AUROC in percent, ranking by scores that do not saturate.

    K = 2: the binary AUROC of the margin ``z_1 - z_0`` (a monotone function of ``p_1``, so the
    same AUROC, but without the ties float32 probabilities of confident models produce). K > 2:
    the mean over classes of the AUROC of ``log p_k`` (float64), skipping classes absent from
    ``y`` (or making up all of it); all classes are ranked in one batched pass.
    """
    if logits.shape[1] == 2:
        return auroc(logits[:, 1].double() - logits[:, 0].double(), y == 1)
    logp = F.log_softmax(logits.double(), dim=1)
    per_class = _mann_whitney_auc(logp, F.one_hot(y.long(), logits.shape[1]).bool())
    defined = per_class[~per_class.isnan()]
    return 100.0 * defined.mean().item() if len(defined) else float("nan")


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood ``-log softmax(z)_y``."""
    return F.cross_entropy(logits.float(), y).item()


def brier(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Multi-class Brier score ``mean_i sum_k (p_ik - 1[y_i = k])^2`` (Brier, 1950).

    In [0, 2]. For two classes it is twice scikit-learn's ``brier_score_loss`` of ``p_1``.
    """
    onehot = F.one_hot(y.long(), probs.shape[1]).to(probs.dtype)
    return (probs - onehot).pow(2).sum(dim=1).mean().item()
