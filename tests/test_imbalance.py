"""Imbalanced tasks: profiles, seeded subsampling, one-vs-rest relabelling, breast cancer, the
family's splits (imbalanced train and validation, untouched test), task specs, and end-to-end
runs of the binary-margin losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.imbalance import PROFILES, apply_imbalance, one_vs_rest, subsample
from lossbench.data.sources import SOURCES, RawSplits
from lossbench.engine.grid import expand
from lossbench.engine.store import Store
from lossbench.errors import UserError
from lossbench.families.classification import check_spec, prepare_splits
from lossbench.spec import resolve_task

CPU = torch.device("cpu")
NEW_TASKS = ("digits-lt", "cifar10-lt", "cifar100-lt", "digits-binary", "breast-cancer",
             "cifar10-binary")


def profile(name: str, available: list[int], **params: object) -> list[int]:
    return PROFILES.get(name).build(params, available=np.array(available)).tolist()


def test_exponential_profile_is_cao_et_al() -> None:
    got = profile("exp", [130, 115, 140, 120, 118, 119, 121, 125, 126, 150], ratio=100)
    assert got == [int(115 * 0.01 ** (c / 9)) for c in range(10)]  # n_max = smallest class
    assert got[0] == 115 and got[-1] == 1
    assert profile("exp", [5000] * 10, ratio=100) == [5000, 2997, 1796, 1077, 645, 387, 232,
                                                      139, 83, 50]  # CIFAR-10-LT, 12,406 images
    assert profile("exp", [4, 4, 4], ratio=1000) == [4, 1, 1]  # never below one example


def test_step_and_positive_rate_profiles() -> None:
    assert profile("step", [100] * 6, ratio=10) == [100, 100, 100, 10, 10, 10]
    assert profile("positive-rate", [1000, 100], rate=0.05) == [1000, round(1000 / 19)]
    assert profile("positive-rate", [1000, 20], rate=0.5) == [1000, 20]  # capped at the pool
    with pytest.raises(UserError, match="positive-rate needs a binary task"):
        profile("positive-rate", [10, 10, 10])
    with pytest.raises(UserError, match="ratio must be >= 1"):
        profile("exp", [10, 10], ratio=0.5)


def test_subsample_keeps_exact_counts_from_each_class_deterministically() -> None:
    y = np.repeat(np.arange(4), 25)[np.random.default_rng(0).permutation(100)]
    counts = np.array([20, 7, 3, 1])
    kept = subsample(y, counts, np.random.default_rng(1))
    assert np.bincount(y[kept], minlength=4).tolist() == counts.tolist()
    assert np.array_equal(kept, np.sort(kept)) and len(set(kept.tolist())) == len(kept)
    assert np.array_equal(kept, subsample(y, counts, np.random.default_rng(1)))
    assert not np.array_equal(kept, subsample(y, counts, np.random.default_rng(2)))


def test_apply_imbalance_subsamples_train_and_validation_by_the_profile() -> None:
    y = np.repeat(np.arange(5), 60)
    train, val = np.arange(0, 300, 2), np.arange(1, 300, 2)  # 30 of each class in each part
    table = {"profile": "exp", "ratio": 10, "seed": 4}
    t1, v1, report = apply_imbalance(y, train, val, 5, table)
    expected = [int(30 * 0.1 ** (c / 4)) for c in range(5)]
    assert np.bincount(y[t1], minlength=5).tolist() == expected == report.train_counts
    assert np.bincount(y[v1], minlength=5).tolist() == expected == report.val_counts
    assert set(t1) <= set(train) and set(v1) <= set(val)
    assert report.realised_ratio == pytest.approx(30 / 3)
    t2, _, _ = apply_imbalance(y, train, val, 5, table | {"seed": 5})
    assert not np.array_equal(t1, t2)  # the subsampling seed matters; nothing else does


def test_one_vs_rest_relabels_and_checks_the_class() -> None:
    raw = RawSplits(np.zeros((6, 2)), np.array([0, 1, 2, 2, 1, 0]), np.zeros((3, 2)),
                    np.array([2, 0, 1]), 3, "tabular", {"asym_map": "mnist"})
    binary = one_vs_rest(raw, 2)
    assert binary.y_train.tolist() == [0, 0, 1, 1, 0, 0] and binary.y_test.tolist() == [1, 0, 0]
    assert binary.num_classes == 2 and "asym_map" not in binary.meta
    with pytest.raises(UserError, match=r"binary.positive=3 is not a class .* accepted: 0..2"):
        one_vs_rest(raw, 3)


def test_breast_cancer_source() -> None:
    raw = SOURCES.get("sklearn-breast-cancer").build({})
    assert raw.num_classes == 2 and raw.x_train.shape[1] == 30 and raw.kind == "tabular"
    assert len(raw.y_train) + len(raw.y_test) == 569
    assert int(raw.y_train.sum() + raw.y_test.sum()) == 212  # malignant is the positive class
    assert np.abs(raw.x_train.mean(axis=0)).max() < 1e-4  # standardised on the training part
    assert raw.x_train.dtype == np.float32


def test_digits_lt_splits_follow_the_profile_and_keep_a_balanced_test_set() -> None:
    spec = resolve_task("digits-lt", "smoke")
    a, b = prepare_splits(spec, 0, CPU), prepare_splits(spec, 1, CPU)
    counts = list(a.class_counts)
    assert counts == a.imbalance["train_counts"]
    assert counts == [int(counts[0] * 0.01 ** (c / 9)) for c in range(10)]
    val = torch.bincount(a.y_val, minlength=10).tolist()
    assert val == a.imbalance["val_counts"] and min(val) >= 1 and val == sorted(val, reverse=True)
    digits = prepare_splits(resolve_task("digits", "smoke"), 0, CPU)
    assert torch.equal(a.x_test, digits.x_test) and torch.equal(a.y_test, digits.y_test)
    assert torch.equal(a.x_train, b.x_train)  # the same subset for every run seed


def test_digits_binary_splits() -> None:
    spec = resolve_task("digits-binary", "smoke")
    data = prepare_splits(spec, 0, CPU)
    assert data.num_classes == 2
    n0, n1 = data.class_counts
    assert n1 == round(0.05 / 0.95 * n0)
    digits = prepare_splits(resolve_task("digits", "smoke"), 0, CPU)
    assert torch.equal(data.y_test, (digits.y_test == 8).long())  # test: every image, 10% pos


@pytest.mark.parametrize("task", NEW_TASKS)
def test_new_tasks_resolve_and_pass_the_spec_check(task: str) -> None:
    for budget in ("smoke", "quick", "paper"):
        check_spec(resolve_task(task, budget))


@pytest.mark.parametrize(("task", "override", "message"), [
    ("digits-lt", "imbalance.profile=zipf", "unknown imbalance profile 'zipf'; accepted: exp, "),
    ("digits-lt", "imbalance.ratio=0.5", "exp: ratio must be >= 1, got 0.5"),
    ("digits-lt", "imbalance.rate=0.1", "exp: unknown parameter 'rate'; accepted: ratio"),
    ("digits-lt", "calibration.method=platt", "unknown calibration.method 'platt'; accepted: "),
    ("digits-lt", "eval.ece_bins=0", "eval.ece_bins must be an int >= 1"),
    ("digits-binary", "binary.positive=-1", "binary.positive must be a class index >= 0"),
    ("digits-binary", "imbalance.rate=1.5", "positive-rate: rate must be in"),
])
def test_spec_mistakes_are_one_line_user_errors(task: str, override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        expand(["ce"], [task], None, "smoke", [override])


def _run(out: Path, *losses: str) -> dict[str, dict[str, float]]:
    args = ["run", "--task", "digits-binary", "--budget", "smoke", "--device", "cpu", "--seeds",
            "0", "--out", str(out)]
    for loss in losses:
        args += ["--loss", loss]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return {r["config"]["loss"]: r for r in Store(out).records()}


def test_binary_margin_losses_end_to_end_and_deterministic(tmp_path: Path) -> None:
    records = _run(tmp_path / "a", "ensloss", "anyloss:metric=f1", "ldam")
    for rec in records.values():
        assert rec["status"] == "ok"
        assert {"test_f1", "test_auroc", "test_bacc@best_val_bacc", "test_ece_ts",
                "test_ece_ca_global", "test_ece_ca", "temperature_ca"} <= set(rec["metrics"])
        assert rec["info"]["imbalance"]["profile"] == "positive-rate"
    again = _run(tmp_path / "b", "ensloss")
    assert again["ensloss"]["metrics"] == records["ensloss"]["metrics"]


def test_reverse_reads_the_profile_from_the_last_class() -> None:
    """``imbalance.reverse``: the same counts in reverse class order (the last class the head),
    so a long-tailed run can be repeated with the frequent and rare classes swapped."""
    y = np.repeat(np.arange(4), 50)
    train, val = np.arange(0, 200, 2), np.arange(1, 200, 2)
    table = {"profile": "exp", "ratio": 10}
    _, _, forward = apply_imbalance(y, train, val, 4, table)
    tr, _, backward = apply_imbalance(y, train, val, 4, table | {"reverse": True})
    assert backward.train_counts == forward.train_counts[::-1]
    assert backward.val_counts == forward.val_counts[::-1] and backward.reverse
    assert np.bincount(y[tr], minlength=4).tolist() == backward.train_counts
    assert not forward.reverse
    with pytest.raises(UserError, match=r"imbalance\.reverse must be true or false"):
        apply_imbalance(y, train, val, 4, table | {"reverse": "yes"})
