"""`lossbench compare / leaderboard / plot / gate` end to end on small tidy tables."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_report_load import fake_records, write_results
from typer.testing import CliRunner

from lossbench.cli import app

runner = CliRunner()
TABLE = {
    ("a", "ce"): [70.0, 71.0, 72.0, 71.5, 70.5, 72.5],
    ("a", "gce:q=0.7"): [75.0, 76.0, 74.5, 75.5, 77.0, 76.5],
    ("a", "gce:q=0.5"): [72.0, None, 73.0, 72.5, 74.0, 73.5],
    ("b", "ce"): [50.0, 51.0, 52.0, 51.5, 50.5, 52.5],
    ("b", "gce:q=0.7"): [49.0, 50.0, 51.5, 50.5, 49.5, 51.0],
    ("b", "gce:q=0.5"): [53.0, 54.0, 55.5, 54.5, 53.5, 55.0],
}


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return write_results(tmp_path / "res", fake_records(TABLE))


def shifted(folder: Path, shift: float) -> Path:
    table = {k: [v + shift if v is not None else None for v in values]
             for k, values in TABLE.items()}
    return write_results(folder, fake_records(table))


def test_compare_formats(results: Path) -> None:
    code, out = invoke("compare", str(results))
    assert code == 0, out
    assert "gce:q=0.7" in out and "95% CI" in out and "baseline" in out
    assert "⚠ 1" in out and "Wilcoxon" in out
    code, out = invoke("compare", str(results), "--format", "csv", "--baseline", "gce:q=0.7")
    table = pd.read_csv(io.StringIO(out))
    assert code == 0 and len(table) == 6 and set(table["baseline"]) == {"gce:q=0.7"}
    code, out = invoke("compare", str(results), "--format", "json")
    rows = json.loads(out)
    assert code == 0 and {r["method"] for r in rows} == {"ce", "gce:q=0.7", "gce:q=0.5"}
    code, out = invoke("compare", str(results), "--format", "md", "--metric", "test_top1")
    assert code == 0 and out.startswith("| setting") and "| a " in out


def test_compare_default_results_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_results(tmp_path / "results" / "runs", fake_records(TABLE))
    monkeypatch.chdir(tmp_path)
    code, out = invoke("compare", "--format", "csv")
    assert code == 0 and "gce:q=0.5" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "top1"], "unknown metric 'top1'; available: test_top1"),
        (["--baseline", "gce"], "unknown baseline 'gce'; methods in the results: ce, gce:q=0.5"),
        (["--format", "xml"], "unknown --format 'xml'; accepted: table, md, csv, json"),
        (["--by", "seed"], "bad --by 'seed'; accepted: task"),
    ],
)
def test_compare_user_errors(results: Path, args: list[str], message: str) -> None:
    code, out = invoke("compare", str(results), *args)
    assert code == 2 and message in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_missing_or_empty_results_are_one_line_errors(tmp_path: Path) -> None:
    for command, *options in [("compare",), ("leaderboard",), ("plot",),
                              ("gate", "--baseline", str(tmp_path / "nope.csv"))]:
        code, out = invoke(command, str(tmp_path / "nope"), *options)
        assert code == 2 and "does not exist" in out, (command, out)
    code, out = invoke("compare", str(tmp_path))
    assert code == 2 and "no runs in" in out


def test_leaderboard_file_and_stdout(results: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "LEADERBOARD.md"
    code, out = invoke("leaderboard", str(results), "--out", str(target))
    assert code == 0 and target.is_file()
    text = target.read_text()
    assert "## classification — test_top1" in text and "**75.75" in text
    code, out = invoke("leaderboard", str(results), "--out", "-")
    assert code == 0 and out == text


def test_plot_command(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = invoke("plot", str(results), "--out", str(tmp_path / "p"))
    assert code == 0, out
    assert (tmp_path / "p" / "curves_a.png").is_file() and "noise plot skipped" in out
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out = invoke("plot", str(results), "--out", str(tmp_path / "q"))
    assert code == 2 and "pip install 'lossbench[plots]'" in out


def test_gate_pass_noise_and_regression(results: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "baselines" / "smoke.csv"
    code, out = invoke("gate", str(results), "--write-baseline", str(baseline))
    assert code == 0 and baseline.is_file() and "6 entries" in out
    code, out = invoke("gate", str(results), "--baseline", str(baseline))
    assert code == 0 and "gate passed: 6 entries" in out

    # seeds spread ~0.9: the band is max(1, 2 x 0.9); a 1.5 drop everywhere is noise...
    code, out = invoke("gate", str(shifted(tmp_path / "noise", -1.5)), "--baseline",
                       str(baseline))
    assert code == 0, out
    # ...a 3-point drop is a regression of every entry, each named with its size.
    code, out = invoke("gate", str(shifted(tmp_path / "worse", -3.0)), "--baseline",
                       str(baseline))
    assert code == 1
    assert "REGRESSED: a gce (q=0.7) test_top1: 72.75 vs baseline 75.75 (change -3" in out
    assert "gate FAILED: 6 of 6 entries" in out
    code, out = invoke("gate", str(shifted(tmp_path / "worse", -3.0)), "--baseline",
                       str(baseline), "--tolerance", "3.5")
    assert code == 0, out


def test_gate_missing_entries_and_user_errors(results: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "base.csv"
    invoke("gate", str(results), "--write-baseline", str(baseline))
    partial = write_results(tmp_path / "partial",
                            fake_records({k: v for k, v in TABLE.items() if k[1] == "ce"}))
    code, out = invoke("gate", str(partial), "--baseline", str(baseline))
    assert code == 1 and out.count("MISSING: ") == 4
    other = write_results(tmp_path / "other", fake_records({("z", "ce"): [1.0]}))
    code, out = invoke("gate", str(other), "--baseline", str(baseline))
    assert code == 2 and "different task set" in out
    code, out = invoke("gate", str(results), "--baseline", str(tmp_path / "none.csv"))
    assert code == 2 and "does not exist" in out
    code, out = invoke("gate", str(results))
    assert code == 2 and "pass --baseline PATH" in out
    code, out = invoke("gate", str(results), "--baseline", str(baseline), "--write-baseline",
                       str(baseline))
    assert code == 2 and "not both" in out
