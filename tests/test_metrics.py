"""Classification metrics against scikit-learn and hand-computed cases; the family's per-epoch
metric row and its pure end-of-run assembly (``final_metrics``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from lossbench.families.classification import (
    CURVES,
    classification_metrics,
    final_metrics,
)
from lossbench.metrics import (
    adaptive_calibration_error,
    auroc,
    auroc_ovr,
    balanced_accuracy,
    binary_f1,
    brier,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    nll,
    top_k,
)


def _random_problem(seed: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, k, (n,), generator=g)
    return logits, y


@pytest.mark.parametrize(("seed", "k"), [(0, 2), (1, 3), (2, 10)])
def test_label_metrics_match_sklearn(seed: int, k: int) -> None:
    logits, y = _random_problem(seed, 200, k)
    pred = logits.argmax(dim=1)
    yn, pn = y.numpy(), pred.numpy()
    assert confusion_matrix(pred, y, k).numpy().tolist() == skm.confusion_matrix(
        yn, pn, labels=list(range(k))).tolist()
    assert balanced_accuracy(pred, y, k) == pytest.approx(
        100 * skm.balanced_accuracy_score(yn, pn))
    assert macro_f1(pred, y, k) == pytest.approx(
        100 * skm.f1_score(yn, pn, average="macro", zero_division=0))
    assert top_k(logits, y, 1) == pytest.approx(100 * skm.accuracy_score(yn, pn))
    if k > 2:
        assert top_k(logits, y, 2) == pytest.approx(
            100 * skm.top_k_accuracy_score(yn, logits.numpy(), k=2, labels=list(range(k))))


def test_class_averages_skip_absent_classes_like_sklearn() -> None:
    # Class 3 never occurs: balanced accuracy averages over y's classes, macro-F1 over y | pred.
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    assert balanced_accuracy(pred, y, 4) == pytest.approx(
        100 * skm.balanced_accuracy_score(y.numpy(), pred.numpy()))
    assert macro_f1(pred, y, 4) == pytest.approx(
        100 * skm.f1_score(y.numpy(), pred.numpy(), average="macro"))
    pred_extra = torch.tensor([0, 3, 1, 1, 2, 2])  # a class predicted but never true
    assert macro_f1(pred_extra, y, 4) == pytest.approx(
        100 * skm.f1_score(y.numpy(), pred_extra.numpy(), average="macro", zero_division=0))


def test_binary_f1() -> None:
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0])
    pred = torch.tensor([1, 1, 0, 1, 0, 0, 0, 0])
    assert binary_f1(pred, y) == pytest.approx(100 * 2 * 2 / (2 * 2 + 1 + 1))  # TP=2 FP=1 FN=1
    assert binary_f1(pred, y) == pytest.approx(100 * skm.f1_score(y.numpy(), pred.numpy()))
    assert binary_f1(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)) == 0.0


def test_auroc_hand_case_with_ties_and_sklearn() -> None:
    # Positives score 0.9 and 0.5, negatives 0.5 and 0.1: wins 2 + 1, one tie -> (3 + 0.5) / 4.
    scores = torch.tensor([0.9, 0.5, 0.5, 0.1])
    positive = torch.tensor([1, 1, 0, 0])
    assert auroc(scores, positive) == pytest.approx(100 * 3.5 / 4)
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 7, (300,), generator=g).double()  # many ties
    lab = torch.randint(0, 2, (300,), generator=g)
    assert auroc(s, lab) == pytest.approx(100 * skm.roc_auc_score(lab.numpy(), s.numpy()))
    assert np.isnan(auroc(s, torch.ones(300)))


@pytest.mark.parametrize("k", [2, 4])
def test_auroc_ovr_matches_sklearn(k: int) -> None:
    logits, y = _random_problem(4, 300, k)
    probs = logits.softmax(dim=1)
    expected = (skm.roc_auc_score(y.numpy(), probs[:, 1].numpy()) if k == 2 else
                skm.roc_auc_score(y.numpy(), probs.numpy(), multi_class="ovr", average="macro"))
    assert auroc_ovr(logits, y) == pytest.approx(100 * expected)


def test_auroc_ranks_confident_binary_outputs_by_margin_not_saturated_probabilities() -> None:
    # softmax saturates to exactly 0/1 in float32 at these margins; the margins still rank.
    margins = torch.tensor([120.0, 110.0, 105.0, 100.0, -100.0, -110.0])
    logits = torch.stack([torch.zeros(6), margins], dim=1)
    y = torch.tensor([1, 1, 0, 1, 0, 0])
    assert logits.softmax(dim=1)[:4, 1].eq(1.0).all()
    assert auroc_ovr(logits, y) == pytest.approx(100 * skm.roc_auc_score(y, margins))


def test_nll_and_brier() -> None:
    logits, y = _random_problem(5, 50, 3)
    probs = logits.softmax(dim=1)
    assert nll(logits, y) == pytest.approx(skm.log_loss(y.numpy(), probs.numpy()), rel=1e-5)
    by_hand = np.mean([sum((probs[i, c].item() - (c == y[i].item())) ** 2 for c in range(3))
                       for i in range(50)])
    assert brier(probs, y) == pytest.approx(by_hand)
    logits2, y2 = _random_problem(6, 50, 2)
    p2 = logits2.softmax(dim=1)
    assert brier(p2, y2) == pytest.approx(2 * skm.brier_score_loss(y2.numpy(), p2[:, 1].numpy()))


def _two_class_probs(conf: list[float], pred: list[int]) -> torch.Tensor:
    c = torch.tensor(conf, dtype=torch.float64)
    top = torch.stack([c, 1 - c], dim=1)  # column 0 holds the confidence
    return torch.where(torch.tensor(pred)[:, None] == 0, top, top.flip(1))


def test_ece_and_adaptive_ece_hand_cases() -> None:
    # Confidences 0.58, 0.66, 0.86, 0.96 (predicting 0, 0, 1, 0), labels 0, 1, 1, 1: correct
    # 1, 0, 1, 0. Values stay clear of the bin edges.
    probs = _two_class_probs([0.58, 0.66, 0.86, 0.96], [0, 0, 1, 0])
    y = torch.tensor([0, 1, 1, 1])
    # Two equal-width bins: (0.5, 1] holds all four -> |mean conf - acc| = |0.765 - 0.5|.
    assert expected_calibration_error(probs, y, bins=2) == pytest.approx(100 * 0.265)
    # Ten bins: each alone -> (0.42 + 0.66 + 0.14 + 0.96) / 4.
    assert expected_calibration_error(probs, y, bins=10) == pytest.approx(100 * 2.18 / 4)
    # Two equal-mass bins: {0.58, 0.66} vs acc 1/2 and {0.86, 0.96} vs acc 1/2.
    ada = 0.5 * abs(0.62 - 0.5) + 0.5 * abs(0.91 - 0.5)
    assert adaptive_calibration_error(probs, y, bins=2) == pytest.approx(100 * ada)
    # Equal-mass bins follow the data: three bins of sizes 2, 1, 1 (sorted order).
    ada3 = 0.5 * abs(0.62 - 0.5) + 0.25 * abs(0.86 - 1) + 0.25 * abs(0.96 - 0)
    assert adaptive_calibration_error(probs, y, bins=3) == pytest.approx(100 * ada3)


def _ece_loop(probs: torch.Tensor, y: torch.Tensor, bins: int) -> float:
    """The per-bin loop ``expected_calibration_error`` used before it was vectorised."""
    conf, pred = probs.max(dim=1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return 100.0 * ece.item()


def _ada_ece_loop(probs: torch.Tensor, y: torch.Tensor, bins: int) -> float:
    """The per-bin loop ``adaptive_calibration_error`` used before it was vectorised."""
    conf, pred = probs.max(dim=1)
    order = conf.argsort()
    conf, correct = conf[order], (pred[order] == y[order]).float()
    gap = torch.zeros((), dtype=torch.float64)
    for c, a in zip(conf.tensor_split(bins), correct.tensor_split(bins), strict=True):
        if len(c):
            gap += len(c) / len(conf) * (c.double().mean() - a.double().mean()).abs()
    return 100.0 * gap.item()


def _ece_numpy(probs: np.ndarray, y: np.ndarray, bins: int, adaptive: bool) -> float:
    """Independent float64 reference: Guo et al. Eq. 3 over (lo, hi] bins of float32 edges, or
    equal-mass bins of the stably sorted confidences."""
    conf, pred = probs.max(axis=1).astype(np.float64), probs.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    if adaptive:
        order = np.argsort(conf, kind="stable")
        parts = zip(np.array_split(conf[order], bins), np.array_split(correct[order], bins),
                    strict=True)
    else:
        edges = np.linspace(0, 1, bins + 1, dtype=np.float32).astype(np.float64)
        masks = [(conf > lo) & (conf <= hi) for lo, hi in itertools.pairwise(edges)]
        parts = ((conf[m], correct[m]) for m in masks)
    return 100.0 * sum(len(c) / len(conf) * abs(c.mean() - a.mean()) for c, a in parts if len(c))


@pytest.mark.parametrize(("n", "k", "bins"), [(450, 10, 15), (10_000, 100, 15), (37, 3, 10),
                                             (7, 4, 15), (200, 2, 1)])
def test_vectorised_calibration_errors_equal_the_loops_and_numpy(n: int, k: int, bins: int
                                                                  ) -> None:
    """The bincount forms give the per-bin loops' values (ECE: the loop summed in float32, so to
    float32 precision) and an independent float64 reference's; n < bins leaves bins empty."""
    g = torch.Generator().manual_seed(n + k)
    probs = (torch.randn(n, k, generator=g) * 3).softmax(dim=1)
    y = torch.randint(0, k, (n,), generator=g)
    ece = expected_calibration_error(probs, y, bins)
    ada = adaptive_calibration_error(probs, y, bins)
    assert ece == pytest.approx(_ece_loop(probs, y, bins), rel=1e-5, abs=1e-6)
    assert ada == pytest.approx(_ada_ece_loop(probs, y, bins), rel=1e-12, abs=1e-12)
    assert ece == pytest.approx(_ece_numpy(probs.numpy(), y.numpy(), bins, False), rel=1e-12)
    assert ada == pytest.approx(_ece_numpy(probs.numpy(), y.numpy(), bins, True), rel=1e-12)


def test_ece_bins_are_open_below_closed_above_at_the_exact_edges() -> None:
    """Confidences equal to a float32 edge fall in the bin that edge closes, as in Eq. 3."""
    edges = torch.linspace(0, 1, 11)
    conf = edges[[5, 6, 6, 10]].double()  # 0.5 (bin 4), 0.6 twice (bin 5), 1.0 (bin 9)
    probs = torch.stack([conf, 1 - conf], dim=1)
    y = torch.tensor([0, 1, 0, 0])  # correct: 1, 0, 1, 1
    # bins: {0.5: acc 1}, {0.6, 0.6: acc 1/2}, {1.0: acc 1}
    expected = 100 * (abs(0.5 - 1) + 2 * abs(0.6 - 0.5) + abs(1.0 - 1)) / 4
    assert expected_calibration_error(probs, y, 10) == pytest.approx(expected, rel=1e-6)
    assert expected_calibration_error(probs, y, 10) == pytest.approx(_ece_loop(probs.float(), y,
                                                                               10), rel=1e-6)


def test_classification_metrics_row_and_binary_f1_only_for_two_classes() -> None:
    logits, y = _random_problem(7, 120, 5)
    row = classification_metrics(logits.float(), y, 15)
    assert "f1" not in row and {"top1", "bacc", "macro_f1", "auroc", "ada_ece", "brier"} <= set(row)
    binary = classification_metrics(*_random_problem(8, 120, 2), 15)
    assert "f1" in binary
    assert {f"test_{name}" for name in row | binary} <= set(CURVES)  # each has a curve


def test_pass_at_n_is_the_exact_sampling_coverage() -> None:
    """pass@N = mean_i 1 - (1 - p_{y_i})^N, by hand in float64; pass@1 is mean p_y, not top-1;
    it grows with N towards the share of examples whose label has any probability."""
    logits, y = _random_problem(9, 200, 6)
    row = classification_metrics(logits.float(), y, 15, (1, 4, 16, 64))
    p_y = torch.softmax(logits.float().double(), dim=1)[torch.arange(200), y].numpy()
    for n in (1, 4, 16, 64):
        assert row[f"pass@{n}"] == pytest.approx(100 * np.mean(1 - (1 - p_y) ** n), rel=1e-9)
    assert row["pass@1"] != pytest.approx(row["top1"])
    assert row["pass@1"] < row["pass@4"] < row["pass@16"] < row["pass@64"] <= 100.0
    certain = classification_metrics(torch.tensor([[0.0, 1e4], [1e4, 0.0]]),
                                      torch.tensor([1, 0]), 15, (1, 64))
    assert certain["pass@1"] == certain["pass@64"] == 100.0


TEST_ROW = ("top1", "top5", "bacc", "macro_f1", "auroc", "ece", "ada_ece", "nll", "brier")


def _curves(epochs: bool) -> dict[str, list[float]]:
    """Four epochs, all scored; ``epochs=False``: as recorded before curves listed their epochs."""
    curves: dict[str, list[float]] = {
        "train_loss": [1.0, 0.5, 1 / 3, 0.25],
        "val_top1": [50.0, 70.0, 60.0, 65.0], "val_bacc": [40.0, 45.0, 55.0, 50.0],
    } | {f"test_{m}": [float(10 * e + i) for e in range(4)] for i, m in enumerate(TEST_ROW)}
    if epochs:
        curves |= {"val_epoch": [1, 2, 3, 4], "test_epoch": [1, 2, 3, 4], "test_f1": []}
    return curves


@pytest.mark.parametrize("epochs", [True, False])
def test_final_metrics_last_epoch_and_both_selections(epochs: bool) -> None:
    curves = _curves(epochs)
    out = final_metrics(curves)
    assert out["test_top1"] == curves["test_top1"][3] and out["test_brier"] == curves[
        "test_brier"][3]
    assert out["test_top1@best_val"] == curves["test_top1"][1]  # val top-1 peaks at epoch 2
    assert out["test_bacc@best_val_bacc"] == curves["test_bacc"][2]  # val bacc at epoch 3
    assert out["best_epoch"] == 2.0 and out["best_val_bacc_epoch"] == 3.0
    assert out["best_val_top1"] == 70.0 and out["val_bacc"] == 50.0
    assert out["train_loss"] == 0.25
    assert not any(name.startswith("test_f1") for name in out)  # empty curve: multi-class task
    assert "test_nll@best_val" not in out  # only the selected metrics are repeated
    old = {k: v for k, v in curves.items() if k != "val_bacc"}  # curves recorded before val_bacc
    assert not any("best_val_bacc" in name for name in final_metrics(old))


def test_final_metrics_read_the_epochs_each_curve_lists() -> None:
    """Validation scored every epoch, the test set at epochs 2, 4 and 5 only: each selection's
    test value is looked up by epoch, not by position; ties select the first epoch."""
    curves = {"train_loss": [5.0, 4.0, 3.0, 2.0, 1.0], "val_epoch": [1, 2, 3, 4, 5],
              "val_top1": [10.0, 80.0, 70.0, 80.0, 60.0], "val_bacc": [1.0, 1.5, 1.2, 2.0, 1.9],
              "test_epoch": [2, 4, 5], "test_top1": [20.0, 40.0, 50.0]}
    out = final_metrics(curves)
    assert out["test_top1"] == 50.0 and out["test_top1@best_val"] == 20.0
    assert out["best_epoch"] == 2.0 and out["best_val_bacc_epoch"] == 4.0
    assert out["test_top1@best_val_bacc"] == 40.0 and out["val_top1"] == 60.0


def test_average_ranks_of_every_column_match_scipy_with_heavy_ties() -> None:
    from scipy.stats import rankdata

    from lossbench.metrics import _average_ranks

    x = torch.randint(0, 5, (60, 7), generator=torch.Generator().manual_seed(3)).double()
    expected = np.stack([rankdata(x[:, k].numpy()) for k in range(7)], axis=1)
    np.testing.assert_array_equal(_average_ranks(x).numpy(), expected)
