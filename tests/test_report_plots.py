"""Figures: files are written, skipped with a reason, and the CD statistics match scipy."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp
from test_report_load import fake_records, fake_runs

from lossbench.engine.store import tidy_curves, tidy_runs
from lossbench.errors import UserError
from lossbench.report.compare import compare
from lossbench.report.load import method_labels
from lossbench.report.plots import _cliques, curve_panels, make_plots, rank_matrix
from lossbench.report.stats import friedman

PNG = b"\x89PNG\r\n\x1a\n"


def sweep_records() -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for rate in (0.2, 0.5):
        table = {("a", m): list(80 - rate * s + rng.normal(0, 1, 3))
                 for m, s in (("ce", 40), ("gce", 20), ("sce", 30))}
        records += fake_records(table, noise_rate=rate, epochs=4)
    records += fake_records({("b", "ce"): [60.0, 61.0, 62.0], ("b", "gce"): [66.0, 65.0, 67.0],
                             ("b", "sce"): [63.0, 64.0, 62.5]}, epochs=4)
    return records


def test_make_plots_writes_every_figure(tmp_path: Path) -> None:
    records = sweep_records()
    runs = tidy_runs(records).assign(source="mem")
    written, notes = make_plots(runs.assign(method=method_labels(runs)), tidy_curves(records),
                                tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == ["cd_classification.png", "curves_a_noise_rate=0.2.png",
                     "curves_a_noise_rate=0.5.png", "curves_b.png", "noise.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000
    assert any("Friedman" in n and "N=3 settings, k=3 methods" in n for n in notes)


def test_plots_say_what_they_skip(tmp_path: Path) -> None:
    runs = fake_runs({("a", "ce"): [1.0, 2.0], ("a", "gce"): [2.0, 3.0]})
    written, notes = make_plots(runs, pd.DataFrame(), tmp_path)
    assert written == []
    assert any(n.startswith("noise plot skipped: no task was run at >= 2 noise rates")
               for n in notes)
    assert any(n.startswith("learning curves skipped") for n in notes)
    assert any("diagram skipped: needs >= 2 settings" in n for n in notes)


def test_missing_matplotlib_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError, match=r"pip install 'lossbench\[plots\]'"):
        make_plots(fake_runs({("a", "ce"): [1.0]}), pd.DataFrame(), tmp_path)


def test_rank_matrix_is_friedman_ready() -> None:
    """Complete blocks only; an all-diverged method is last; chi2 equals scipy's on the means."""
    table = {("a", "ce"): [70.0, 71.0], ("a", "gce"): [75.0, 76.0], ("a", "sce"): [72.0, 73.0],
             ("b", "ce"): [60.0, 61.0], ("b", "gce"): [58.0, 57.0], ("b", "sce"): [None, None],
             ("c", "ce"): [50.0, 51.0], ("c", "gce"): [55.0, 54.0], ("c", "sce"): [52.0, 52.5],
             ("a", "nce"): [10.0, 11.0]}  # nce only on task a: left out
    ranks, dropped = rank_matrix(compare(fake_runs(table)))
    assert dropped == ["nce"] and list(ranks.columns) == ["ce", "gce", "sce"]
    assert ranks.loc["b"].tolist() == [1.0, 2.0, 3.0]
    means = np.array([[70.5, 75.5, 72.5], [60.5, 57.5, -np.inf], [50.5, 54.5, 52.25]])
    expected = sp.friedmanchisquare(*(-means).T).statistic
    assert friedman(ranks.to_numpy())[0] == pytest.approx(expected)


def test_cliques_join_methods_within_the_critical_difference() -> None:
    ranks = np.array([1.0, 1.5, 2.9, 3.2, 5.0])
    assert _cliques(list("abcde"), ranks, cd=2.0) == [(0, 2), (1, 3), (3, 4)]
    assert _cliques(list("abcde"), ranks, cd=0.1) == []


def test_curve_panels_follow_the_metric() -> None:
    assert curve_panels("test_top1", {"train_loss", "val_top1", "test_top1", "test_ece"}) == [
        "train_loss", "val_top1", "test_top1"]
    assert curve_panels("test_map@r", {"train_loss", "val_map@r"}) == ["train_loss", "val_map@r"]


def test_pass_at_n_figure_is_drawn_from_the_pass_metrics(tmp_path: Path) -> None:
    base = fake_runs({("a", "ce"): [70.0, 71.0], ("a", "dco:n=16"): [68.0, 69.0]})
    passes = [base.assign(metric=f"test_pass@{n}", value=base["value"] + 5 * i)
              for i, n in enumerate((1, 4, 16, 64))]
    written, _ = make_plots(pd.concat([base, *passes], ignore_index=True), pd.DataFrame(),
                            tmp_path)
    assert [p.name for p in written] == ["pass_at_n.png"]
    assert written[0].read_bytes()[:8] == PNG
    no_passes, _ = make_plots(base, pd.DataFrame(), tmp_path / "none")
    assert no_passes == []
