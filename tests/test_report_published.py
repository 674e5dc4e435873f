"""Published numbers beside ours: the CSV is checked, gaps are in standard errors beyond the
published rounding, and the CLI shows them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from test_report_load import fake_records, fake_runs, write_results
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.errors import UserError
from lossbench.report.compare import compare
from lossbench.report.published import gap_z, read_published, side_by_side, wide_markdown

HEADER = "task,metric,method,mean,spread,spread_kind,n,source\n"
OURS = {("a", "mse"): [2.0, 2.2, 2.4, 2.6], ("a", "l1"): [3.0, 3.1, 3.2, 3.3],
        ("b", "mse"): [0.004, 0.005, 0.006, 0.005]}


def write_csv(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "published.csv"
    path.write_text(HEADER + body)
    return path


def test_gap_is_in_standard_errors_beyond_rounding() -> None:
    assert gap_z(2.3, 0.1, 2.0, 0.0, 0.005) == pytest.approx((0.3 - 0.005) / 0.1)
    assert gap_z(1.7, 0.06, 2.0, 0.08, 0.005) == pytest.approx(-(0.3 - 0.005) / 0.1)
    assert gap_z(0.004, 0.0, 0.00, 0.00, 0.005) == 0.0  # "0.00 ± 0.00" covers it
    assert gap_z(0.02, 0.0, 0.00, 0.00, 0.005) == math.inf


def test_side_by_side_against_hand_computed_values(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "a,test_rmse,P,2.0,0.2,std,4,paper\n"
                               "a,test_rmse,Q,2.30,0.05,se,4,repo\n"
                               "b,test_rmse,P,0.00,0.00,se,4,paper\n")
    published = read_published(path)
    assert list(published["se"]) == pytest.approx([0.1, 0.05, 0.0])
    assert list(published["rounding"]) == pytest.approx([0.05, 0.005, 0.005])
    rows = side_by_side(compare(fake_runs(OURS, metric="test_rmse"), "test_rmse"), published)
    row = rows[(rows["setting"] == "a") & (rows["method"] == "mse")
               & (rows["published_method"] == "P")].iloc[0]
    x = np.array(OURS[("a", "mse")])
    se = x.std(ddof=1) / 2
    assert row["mean"] == pytest.approx(x.mean()) and row["se"] == pytest.approx(se)
    assert row["z"] == pytest.approx((x.mean() - 2.0 - 0.05) / math.hypot(se, 0.1))
    l1 = rows[(rows["method"] == "l1") & (rows["published_method"] == "Q")].iloc[0]
    assert l1["verdict"] == "higher" and l1["z"] > 2
    b = rows[rows["setting"] == "b"].iloc[0]
    assert b["verdict"] == "agrees"  # 0.005 is within the printed 0.00
    nll = write_csv(tmp_path, "a,test_nll,P,2.0,0.2,std,4,paper\n")
    runs = fake_runs(OURS, metric="test_rmse")
    runs.loc[runs["loss"] == "mse", "metric"] = "test_nll"  # only mse reports an NLL
    only = side_by_side(compare(runs, "test_nll"), read_published(nll))
    assert list(only["method"]) == ["mse"]  # l1 has no value: no row, no infinite gap
    md = wide_markdown(rows)
    assert "P (published)" in md and "SE)" in md  # l1 vs P on a is flagged


@pytest.mark.parametrize(("body", "message"), [
    ("a,test_rmse,P,two,0.1,se,4,x\n", "mean 'two' is not a number"),
    ("a,test_rmse,P,2.0,0.1,sd,4,x\n", "spread_kind 'sd' not accepted; accepted: se, std"),
    ("a,test_rmse,P,2.0,0.1,se,0,x\n", "n must be >= 1"),
    ("", "have no rows"),
])
def test_bad_published_files_are_one_line_errors(tmp_path: Path, body: str, message: str
                                                 ) -> None:
    with pytest.raises(UserError, match=message):
        read_published(write_csv(tmp_path, body))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="cannot read published results"):
        read_published(tmp_path / "empty.csv")
    (tmp_path / "short.csv").write_text("task,metric\na,b\n")
    with pytest.raises(UserError, match="lack column"):
        read_published(tmp_path / "short.csv")


def test_compare_published_cli(tmp_path: Path) -> None:
    folder = write_results(tmp_path / "res", fake_records(OURS, metric="test_rmse"))
    path = write_csv(tmp_path, "a,test_rmse,P,2.0,0.2,std,4,paper\n")
    runner = CliRunner()
    out = runner.invoke(app, ["compare", str(folder), "--metric", "test_rmse", "--published",
                              str(path), "--format", "csv"])
    assert out.exit_code == 0, out.output
    assert "published_mean" in out.output and ",P," in out.output
    other = write_csv(tmp_path, "zzz,test_rmse,P,2.0,0.2,std,4,paper\n")
    out = runner.invoke(app, ["compare", str(folder), "--metric", "test_rmse", "--published",
                              str(other)])
    assert out.exit_code == 2 and "share no (task, metric)" in out.output
