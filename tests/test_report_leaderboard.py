"""The markdown leaderboard: provenance header, one table per family, bold best, † ties."""

from __future__ import annotations

import re

import pandas as pd
from test_report_load import fake_runs

from lossbench.report.leaderboard import leaderboard

# 6 seeds: a method below the best on every seed reaches p = 2/64 < 0.05 (significant); one
# that beats the best on some seeds does not (†).
CLS = {
    ("a", "ce"): [70.0, 71.0, 72.0, 73.0, 74.0, 75.0],
    ("a", "gce"): [76.0, 77.0, 78.0, 79.0, 80.0, 81.0],  # best on a
    ("a", "sce"): [77.0, 76.5, 78.5, 78.0, 79.5, 80.0],  # close to gce: †
    ("b", "ce"): [60.0, 61.0, 62.0, 63.0, 64.0, 65.0],  # best on b
    ("b", "gce"): [50.0, None, 52.0, 53.0, 54.0, 55.0],  # one diverged run
    ("b", "sce"): [55.0, 56.0, 57.0, 58.0, 59.0, 60.0],
}
RET = {("r", "ms"): [40.0, 41.0, 42.0], ("r", "triplet"): [30.0, 31.0, 32.0]}


def runs() -> pd.DataFrame:
    return pd.concat([fake_runs(CLS),
                      fake_runs(RET, family="retrieval", metric="test_recall@1")])


def row(text: str, method: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {method} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_provenance_header_comes_from_the_table() -> None:
    text = leaderboard(runs())
    for needed in ("| lossbench     | 0.1.0", "| torch         | 2.13.0", "| budget        | smoke",
                   "| device        | cpu:x86_64", "| git commit    | abc123",
                   "| runs finished | 2026-01-01 – 2026-01-06", "| runs          | 42 (41 ok"):
        assert needed in text, needed
    assert text == leaderboard(runs())  # no clock: same results, same file


def test_one_table_per_family_with_its_primary_metric() -> None:
    text = leaderboard(runs())
    assert "## classification — test_top1 (higher is better)" in text
    assert "## retrieval — test_recall@1 (higher is better)" in text
    assert row(text, "ms") == ["ms", "**41.00 ± 1.00** (3)", "1.00"]
    assert row(text, "triplet")[1] == "31.00 ± 1.00 (3) †"  # 3 seeds: p >= 0.25 always


def test_bold_best_dagger_for_not_significant_and_partial_marks() -> None:
    text = leaderboard(runs())
    gce, sce, ce = row(text, "gce"), row(text, "sce"), row(text, "ce")
    assert gce[1] == "**78.50 ± 1.87** (6)"
    assert sce[1].startswith("78.25 ± ") and sce[1].endswith("(6) †")
    assert not ce[1].endswith("†")
    assert ce[2].startswith("**62.50") and sce[2] == "57.50 ± 1.87 (6)"
    # far below the best, but with 5 common seeds p >= 2/32: not significant either
    assert re.fullmatch(r"52\.80 ± 1\.92 \(5/6 ⚠\) †", gce[2])
    assert [r[-1] for r in (gce, sce, ce)] == ["2.00", "2.00", "2.00"]


def test_single_metric_restricts_to_families_reporting_it() -> None:
    text = leaderboard(runs(), "test_recall@1")
    assert "## retrieval" in text and "## classification" not in text


def test_tied_best_are_all_bold() -> None:
    text = leaderboard(fake_runs({("a", "ce"): [1.0, 2.0], ("a", "gce"): [2.0, 1.0]}))
    assert row(text, "ce")[1].startswith("**") and row(text, "gce")[1].startswith("**")


def test_a_family_whose_runs_all_diverged_is_shown_not_dropped() -> None:
    failed = fake_runs({("r", "ms"): [None, None]}, family="retrieval", metric="test_recall@1")
    text = leaderboard(pd.concat([fake_runs(CLS), failed]))
    assert "## retrieval — test_recall@1" in text
    assert row(text, "ms") == ["ms", "diverged (0/2)", "1.00"]
