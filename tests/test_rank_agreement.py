"""Kendall's tau between two loss rankings, with a seed bootstrap: the cheap-vs-full tier check."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report_load import fake_records, write_results
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.report.load import load_runs
from lossbench.report.rank_agreement import kendall_tau, rank_agreement

FULL = {
    ("a", "ce"): [70.0, 71.0, 72.0], ("a", "gce"): [75.0, 76.0, 74.5],
    ("a", "sce"): [80.0, 81.0, 79.0], ("a", "ldr"): [60.0, 61.0, 59.0],
    ("b", "ce"): [50.0, 51.0, 52.0], ("b", "gce"): [49.0, 50.0, 51.5],
    ("b", "sce"): [40.0, 41.0, 42.0], ("b", "ldr"): [60.0, 61.0, 62.0],
}


def _table(transform) -> dict:  # type: ignore[no-untyped-def]
    return {k: [transform(k, v) for v in vals] for k, vals in FULL.items()}


def test_kendall_tau_matches_the_definition() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one discordant pair of six: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)


def test_same_order_is_one_reversed_is_minus_one(tmp_path: Path) -> None:
    full = write_results(tmp_path / "full", fake_records(FULL))
    same = write_results(tmp_path / "same", fake_records(_table(lambda k, v: v - 20.0)))
    reverse = write_results(tmp_path / "rev", fake_records(_table(lambda k, v: -v)))
    a, b, c = load_runs([full]), load_runs([same]), load_runs([reverse])
    rows = {r.setting: r for r in rank_agreement(b, a, None, ["task"], bootstrap=200)}
    assert rows["a"].tau == pytest.approx(1.0) and rows["b"].tau == pytest.approx(1.0)
    assert rows["a"].best_a == rows["a"].best_b == "sce"
    assert rows["a"].low <= 1.0 <= rows["a"].high + 1e-12
    rev = {r.setting: r for r in rank_agreement(c, a, None, ["task"], bootstrap=200)}
    assert rev["a"].tau == pytest.approx(-1.0)
    # the bootstrap is seeded: the same interval every time
    again = {r.setting: r for r in rank_agreement(c, a, None, ["task"], bootstrap=200)}
    assert (again["b"].low, again["b"].high) == (rev["b"].low, rev["b"].high)


def test_cli_rank_agreement(tmp_path: Path) -> None:
    full = write_results(tmp_path / "full", fake_records(FULL))
    cheap = write_results(tmp_path / "cheap", fake_records(_table(lambda k, v: v * 0.5)))
    result = CliRunner().invoke(app, ["compare", str(full), "--rank-agreement", str(cheap),
                                      "--format", "md"])
    assert result.exit_code == 0, result.output
    assert "Kendall τ" in result.output and "1.00" in result.output
    other = write_results(tmp_path / "other", fake_records({("z", "ce"): [1.0], ("z", "x"): [2.0]}))
    result = CliRunner().invoke(app, ["compare", str(full), "--rank-agreement", str(other)])
    assert result.exit_code == 2 and "share no setting" in result.output
