"""The CI gate: passes on noise, fails on regressions, missing entries and diverged runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_load import fake_runs

from lossbench.errors import UserError
from lossbench.report.gate import MISSING, NOT_OK, REGRESSED, gate, read_baseline, summary_table

BASE = {("a", "ce"): [70.0, 72.0, 71.0], ("a", "gce:q=0.7"): [74.0, 75.0, 76.0],
        ("b", "ce"): [50.0, 50.5, 49.5]}


def baseline() -> pd.DataFrame:
    return summary_table(fake_runs(BASE))


def shifted(shift: dict[tuple[str, str], float], spread: float = 1.0) -> pd.DataFrame:
    """BASE moved by ``shift`` per entry, its seeds spread around the new mean by ``spread``."""
    table = {}
    for key, values in BASE.items():
        x = np.array(values)
        table[key] = list(x.mean() + shift.get(key, 0.0) + (x - x.mean()) * spread)
    return fake_runs(table)


def test_summary_table_is_the_baseline_format() -> None:
    table = baseline()
    assert list(table.columns[-3:]) == ["mean", "std", "n"]
    assert {"task", "loss", "loss_params", "metric"} <= set(table.columns)
    row = table[(table["task"] == "a") & (table["loss"] == "ce")].iloc[0]
    assert row["mean"] == pytest.approx(71.0) and row["std"] == pytest.approx(1.0)
    assert row["n"] == 3 and row["noise_rate"] == pytest.approx(0.4)


def test_identical_results_pass() -> None:
    result = gate(baseline(), fake_runs(BASE))
    assert result.passed and set(result.rows["status"]) == {"ok"}


def test_noise_is_not_a_regression_but_a_real_drop_is() -> None:
    # a/ce has std 1 -> band max(1, 2 x 1) = 2: a drop of 1.5 is noise, 2.5 is a regression.
    assert gate(baseline(), shifted({("a", "ce"): -1.5})).passed
    result = gate(baseline(), shifted({("a", "ce"): -2.5}))
    assert not result.passed and len(result.failures) == 1
    message = result.failures[0]
    assert message.startswith(f"{REGRESSED}: a ce test_top1: 68.5 vs baseline 71")
    assert "change -2.5" in message and "allowed -2 " in message
    # b/ce has std 0.5 -> band max(tolerance 1, 2 x 0.5) = 1: the tolerance decides.
    assert not gate(baseline(), shifted({("b", "ce"): -1.2})).passed
    assert gate(baseline(), shifted({("b", "ce"): -1.2}), tolerance=1.5).passed


def test_the_larger_spread_widens_the_band() -> None:
    """New results three times noisier: std 3 -> band 6, so a drop of 4 is not significant."""
    noisy = shifted({("a", "ce"): -4.0}, spread=3.0)
    assert gate(baseline(), noisy).passed
    assert not gate(baseline(), noisy, k=1.0).passed


def test_improvements_pass_and_lower_is_better_is_mirrored() -> None:
    assert gate(baseline(), shifted({("a", "ce"): +10.0})).passed
    ece = {("a", "ce"): [5.0, 6.0, 7.0]}
    base = summary_table(fake_runs(ece, metric="test_ece"), ["test_ece"])
    worse = fake_runs({("a", "ce"): [8.5, 9.5, 10.5]}, metric="test_ece")  # +3.5 > band 2
    better = fake_runs({("a", "ce"): [1.0, 2.0, 3.0]}, metric="test_ece")
    assert not gate(base, worse).passed and gate(base, better).passed


def test_missing_entry_and_diverged_runs_fail() -> None:
    runs = fake_runs({k: v for k, v in BASE.items() if k != ("a", "gce:q=0.7")})
    result = gate(baseline(), runs)
    assert not result.passed
    assert result.failures == [f"{MISSING}: a gce (q=0.7) test_top1: no ok run in the results "
                               "(baseline has n=3)"]
    diverged = fake_runs({**BASE, ("b", "ce"): [50.0, None, 50.0]})
    result = gate(baseline(), diverged)
    assert [f.split(":")[0] for f in result.failures] == [NOT_OK]
    assert result.failures[0].endswith("1 run(s) diverged, 2 ok vs n=3 in the baseline")
    assert gate(summary_table(diverged), diverged).passed  # diverged in the baseline too


def test_different_task_set_is_a_user_error() -> None:
    other = fake_runs({("z", "ce"): [1.0]})
    with pytest.raises(UserError, match=r"different task set: baseline has a/smoke/.*results have "
                                        r"z/smoke"):
        gate(baseline(), other)
    other_budget = fake_runs(BASE, budget="quick")
    with pytest.raises(UserError, match="different task set"):
        gate(baseline(), other_budget)


def test_metric_selection_and_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="metric 'test_ece' is not in the baseline"):
        gate(baseline(), fake_runs(BASE), metrics=["test_ece"])
    with pytest.raises(UserError, match="must be >= 0"):
        gate(baseline(), fake_runs(BASE), tolerance=-1)
    with pytest.raises(UserError, match="unknown metric 'nope'"):
        summary_table(fake_runs(BASE), ["nope"])
    with pytest.raises(UserError, match="does not exist; write one with"):
        read_baseline(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("task,loss\na,ce\n")
    with pytest.raises(UserError, match="lacks columns loss_params, metric, mean, std, n"):
        read_baseline(tmp_path / "bad.csv")


def test_minimal_csv_round_trip(tmp_path: Path) -> None:
    """A hand-written baseline with only the required columns (empty params, one seed)."""
    path = tmp_path / "base.csv"
    path.write_text("task,loss,loss_params,metric,mean,std,n\na,ce,,test_top1,71.0,,1\n")
    table = read_baseline(path)
    assert gate(table, fake_runs({("a", "ce"): [70.2]})).passed  # within tolerance 1
    assert not gate(table, fake_runs({("a", "ce"): [69.9]})).passed
    summary_table(fake_runs(BASE)).to_csv(path, index=False)
    assert gate(read_baseline(path), fake_runs(BASE)).passed
