"""Per-epoch scoring of classification runs (``EpochScorer``, ``eval.every``, ``eval.test_curves``):
which epochs are scored, that the test set is scored only where a reported metric can come from,
and that skipping it never changes a reported number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.engine.store import Store, curve_points
from lossbench.families.classification import (
    EpochScorer,
    EvalConfig,
    Splits,
    classification_metrics,
    final_metrics,
    scored_epochs,
)

K, EPOCHS = 4, 12


def _splits(seed: int) -> Splits:
    g = torch.Generator().manual_seed(seed)
    y_val, y_test = torch.randint(0, K, (60,), generator=g), torch.randint(0, K, (80,), generator=g)
    empty = torch.zeros(0)
    return Splits(empty, empty.long(), empty, y_val, empty, y_test, K, False, {})


def _outputs(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per epoch (val, test) logits that drift towards the labels, so selection has a choice;
    coarse logits make ties in validation top-1 likely."""
    data, g = _splits(seed), torch.Generator().manual_seed(seed + 100)
    out = []
    for epoch in range(EPOCHS):
        pull = 0.3 * epoch
        val = torch.randn(60, K, generator=g).round() + pull * torch.eye(K)[data.y_val]
        test = torch.randn(80, K, generator=g) + pull * torch.eye(K)[data.y_test]
        out.append((val, test))
    return out


def _score(seed: int, ev: EvalConfig) -> tuple[EpochScorer, list[int]]:
    """Run a scorer over the scripted outputs; returns it and the epochs whose test set it read."""
    scorer, tested = EpochScorer(_splits(seed), ev, EPOCHS), []
    for epoch, (val, test) in enumerate(_outputs(seed)):
        def read_test(epoch: int = epoch, test: torch.Tensor = test) -> torch.Tensor:
            tested.append(epoch + 1)
            return test
        scorer.add(epoch, 1.0 / (epoch + 1), lambda val=val: val, read_test)
    return scorer, tested


def _reference(seed: int, every: int) -> dict[str, float]:
    """Final metrics by brute force: every metric at every scored epoch, the first best."""
    data, outputs = _splits(seed), _outputs(seed)
    scored = scored_epochs(EPOCHS, every)
    rows = {e: classification_metrics(outputs[e - 1][1], data.y_test, 15) for e in scored}
    val = {e: classification_metrics(outputs[e - 1][0], data.y_val, 15) for e in scored}
    top1 = scored[int(np.argmax([val[e]["top1"] for e in scored]))]
    bacc = scored[int(np.argmax([val[e]["bacc"] for e in scored]))]
    return {"test_ece": rows[EPOCHS]["ece"], "test_top1@best_val": rows[top1]["top1"],
            "test_auroc@best_val": rows[top1]["auroc"],
            "test_bacc@best_val_bacc": rows[bacc]["bacc"],
            "best_epoch": float(top1), "best_val_bacc_epoch": float(bacc)}


def test_scored_epochs_are_every_kth_and_the_last() -> None:
    assert scored_epochs(5, 1) == [1, 2, 3, 4, 5]
    assert scored_epochs(10, 3) == [3, 6, 9, 10]
    assert scored_epochs(4, 4) == [4] and scored_epochs(3, 7) == [3]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("every", [1, 3, 5])
def test_scoring_the_test_set_only_where_needed_reports_the_same_numbers(seed: int, every: int
                                                                         ) -> None:
    full, tested_full = _score(seed, EvalConfig(every=every, test_curves=True))
    lean, tested_lean = _score(seed, EvalConfig(every=every))
    scored = scored_epochs(EPOCHS, every)
    assert tested_full == scored and full.curves["test_epoch"] == scored
    assert full.curves["val_epoch"] == lean.curves["val_epoch"] == scored
    assert len(full.curves["train_loss"]) == len(lean.curves["train_loss"]) == EPOCHS
    # The lean scorer reads the test set at the last epoch and where a selection curve beats
    # every earlier scored epoch: exactly the epochs a reported metric can come from.
    val = {name: full.curves[name] for name in ("val_top1", "val_bacc")}
    needed = {EPOCHS} | {scored[i] for curve in val.values() for i in range(len(scored))
                         if curve[i] > max(curve[:i], default=-np.inf)}
    assert tested_lean == lean.curves["test_epoch"] == sorted(needed)
    assert every > 1 or len(tested_lean) < EPOCHS  # the data make some epochs not needed
    assert final_metrics(lean.curves) == final_metrics(full.curves)
    assert final_metrics(lean.curves) == pytest.approx(final_metrics(full.curves) | _reference(
        seed, every))
    val_out, test_out = lean.last  # the last epoch's outputs, for post-hoc calibration
    assert torch.equal(val_out, _outputs(seed)[-1][0]) and torch.equal(test_out,
                                                                       _outputs(seed)[-1][1])


def test_epochs_that_are_not_scored_make_no_forward_pass() -> None:
    scorer = EpochScorer(_splits(0), EvalConfig(every=4), 6)
    calls: list[str] = []

    def val() -> torch.Tensor:
        calls.append("val")
        return torch.randn(60, K)

    live = [scorer.add(e, 0.5, val, lambda: torch.randn(80, K)) for e in range(6)]
    assert calls == ["val", "val"] and scorer.curves["val_epoch"] == [4, 6]
    assert live[0] == {"loss": 0.5} and "test_top1" in live[3] and "test_top1" in live[5]


def test_curve_points_put_each_value_at_its_epoch() -> None:
    curves = {"train_loss": [3.0, 2.0, 1.0], "val_epoch": [2, 3], "val_top1": [50.0, 60.0],
              "test_epoch": [3], "test_top1": [70.0], "test_f1": []}
    assert curve_points(curves) == [("train_loss", 1, 3.0), ("train_loss", 2, 2.0),
                                    ("train_loss", 3, 1.0), ("val_top1", 2, 50.0),
                                    ("val_top1", 3, 60.0), ("test_top1", 3, 70.0)]
    old = {"train_loss": [3.0, 2.0], "val_top1": [5.0, 6.0]}  # a record without epoch lists
    assert curve_points(old)[-1] == ("val_top1", 2, 6.0)


runner = CliRunner()
SMOKE = ["run", "--loss", "ce", "--task", "digits-noisy", "--budget", "smoke", "--device", "cpu",
         "--seeds", "0", "--set", "train.epochs=5"]


def test_eval_every_end_to_end_keeps_the_scored_epochs_numbers(tmp_path: Path) -> None:
    """A run with ``eval.every=2`` trains exactly as with every epoch scored: its validation
    curve is the full run's at epochs 2, 4, 5 and its last-epoch metrics are the same."""
    full, sparse = tmp_path / "full", tmp_path / "sparse"
    assert runner.invoke(app, [*SMOKE, "--set", "eval.test_curves=true", "--out", str(full)]
                         ).exit_code == 0
    result = runner.invoke(app, [*SMOKE, "--set", "eval.every=2", "--out", str(sparse)])
    assert result.exit_code == 0, result.output
    [a], [b] = Store(full).records(), Store(sparse).records()
    assert b["curves"]["val_epoch"] == [2, 4, 5]
    assert b["curves"]["val_top1"] == [a["curves"]["val_top1"][e - 1] for e in (2, 4, 5)]
    assert b["curves"]["train_loss"] == a["curves"]["train_loss"]
    assert {m: b["metrics"][m] for m in ("test_top1", "test_ece", "test_nll")} == {
        m: a["metrics"][m] for m in ("test_top1", "test_ece", "test_nll")}
    assert b["metrics"]["best_epoch"] in (2.0, 4.0, 5.0)


@pytest.mark.parametrize(("value", "message"), [
    ("0", "eval.every must be an int >= 1, got 0"),
    ("-3", "eval.every must be an int >= 1, got -3"),
    ("2.5", "eval.every got 2.5; expected an integer"),
    ("true", "eval.every got True; expected an integer"),
    ("abc", "eval.every got 'abc'; expected an integer"),
])
def test_bad_eval_every_is_one_line(tmp_path: Path, value: str, message: str) -> None:
    result = runner.invoke(app, [*SMOKE, "--set", f"eval.every={value}", "--out", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "records").exists()


def test_unknown_eval_keys_and_bad_test_curves_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, [*SMOKE, "--set", "eval.evry=2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown key(s) eval.evry" in result.output
    assert "eval.every" in result.output
    result = runner.invoke(app, [*SMOKE, "--set", "eval.test_curves=1", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "eval.test_curves got 1; expected true or false" in result.output
