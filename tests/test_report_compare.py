"""compare(): statistics per cell against scipy, ranks, settings, and nothing averaged away."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp
from test_report_load import fake_records, fake_runs

from lossbench.engine.store import tidy_runs
from lossbench.errors import UserError
from lossbench.report.compare import (
    Comparison,
    compare,
    count_text,
    grid,
    long_table,
    markdown,
    notes,
)
from lossbench.report.load import method_labels

MEANS = {("a", "ce"): 70.0, ("a", "gce:q=0.7"): 75.0, ("a", "gce:q=0.5"): 72.0,
         ("b", "ce"): 50.0, ("b", "gce:q=0.7"): 48.0, ("b", "gce:q=0.5"): 55.0}
_rng = np.random.default_rng(0)
TABLE = {k: [float(v) for v in np.round(_rng.normal(mu, 1.0, 6), 3)] for k, mu in MEANS.items()}
"""6 seeds per (task, method); rounded so paired differences have no ties (scipy exact applies)."""


def cell(result: Comparison, setting: str, method: str) -> pd.Series:
    cells = result.cells
    return cells[(cells["setting"] == setting) & (cells["method"] == method)].iloc[0]


def test_cells_match_numpy_and_scipy() -> None:
    result = compare(fake_runs(TABLE))
    assert result.settings == ["a", "b"] and result.baseline == "ce"
    for (task, method), values in TABLE.items():
        c = cell(result, task, method)
        x = np.array(values)
        assert c["n_ok"] == 6 and c["mean"] == pytest.approx(x.mean())
        assert c["std"] == pytest.approx(x.std(ddof=1))
        lo, hi = sp.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sp.sem(x))
        assert (c["ci_low"], c["ci_high"]) == pytest.approx((lo, hi))
        if method != "ce":
            base = np.array(TABLE[(task, "ce")])
            assert c["delta"] == pytest.approx(np.mean(x - base))
            assert c["p"] == pytest.approx(sp.wilcoxon(x, base, method="exact").pvalue)


def test_ranks_per_setting_and_average() -> None:
    result = compare(fake_runs(TABLE))
    for task in ("a", "b"):
        means = {m: np.mean(v) for (t, m), v in TABLE.items() if t == task}
        expected = sp.rankdata([-v for v in means.values()])
        got = [cell(result, task, m)["rank"] for m in means]
        assert got == pytest.approx(expected)
    avg = result.ranks.set_index("method")["avg_rank"]
    assert avg["gce:q=0.5"] == pytest.approx((2 + 1) / 2) and avg["ce"] == pytest.approx(2.5)
    assert result.methods[0] in {"gce:q=0.5", "gce:q=0.7"}


def test_lower_is_better_metric_ranks_ascending() -> None:
    runs = fake_runs({("a", "ce"): [9.0, 8.0], ("a", "gce"): [3.0, 4.0]}, metric="test_ece")
    result = compare(runs, "test_ece")
    assert cell(result, "a", "gce")["rank"] == 1 and "test_ece: lower is better" in notes(result)[0]


def test_partial_and_diverged_cells_are_marked_not_averaged_away() -> None:
    runs = fake_runs({("a", "ce"): [70.0, 71.0, 72.0], ("a", "gce"): [80.0, None, 82.0],
                      ("a", "sce"): [75.0], ("a", "nce"): [None, None, None]})
    result = compare(runs)
    gce, sce, nce = (cell(result, "a", m) for m in ("gce", "sce", "nce"))
    assert gce["n_ok"] == 2 and gce["mean"] == pytest.approx(81.0)
    assert count_text(gce) == "n=2/3 ⚠ 1 diverged"
    assert count_text(sce) == "n=1/3 ⚠ 2 not run"
    assert count_text(cell(result, "a", "ce")) == "n=3"
    assert np.isnan(nce["mean"]) and nce["rank"] == 4  # all diverged: last place
    assert gce["n_pairs"] == 2  # paired on the common seeds only
    text = "\n".join(" ".join(row) for row in grid(result))
    assert "⚠ 1 diverged" in text and "⚠ 3 diverged" in text


def test_noise_sweep_becomes_one_setting_per_rate() -> None:
    records = [*fake_records({("a", "ce"): [70.0, 71.0], ("a", "gce"): [72.0, 73.0]},
                             noise_rate=0.2),
               *fake_records({("a", "ce"): [50.0, 51.0]}, noise_rate=0.6)]
    runs = tidy_runs(records).assign(source="mem")
    result = compare(runs.assign(method=method_labels(runs)))
    assert result.settings == ["a · noise_rate=0.2", "a · noise_rate=0.6"]
    assert cell(result, "a · noise_rate=0.6", "ce")["mean"] == pytest.approx(50.5)
    assert "gce" not in set(result.cells.loc[result.cells["setting"].str.endswith("0.6"),
                                             "method"])
    assert result.ranks.set_index("method")["n_ranked"]["gce"] == 1


def test_same_seed_twice_with_different_config_is_an_error() -> None:
    runs = fake_runs({("a", "ce"): [70.0]})
    twin = runs.assign(run_key="other")
    with pytest.raises(UserError, match="differ in config"):
        compare(pd.concat([runs, twin]))


def test_user_errors() -> None:
    runs = fake_runs(TABLE)
    with pytest.raises(UserError, match="unknown metric 'top1'; available: test_top1"):
        compare(runs, "top1")
    with pytest.raises(UserError, match="unknown baseline 'gce'; methods in the results: ce, "):
        compare(runs, baseline="gce")
    with pytest.raises(UserError, match="bad --by 'seed'; accepted: task"):
        compare(runs, by=["seed"])


def test_no_baseline_without_ce_and_outputs() -> None:
    runs = fake_runs({k: v for k, v in TABLE.items() if k[1] != "ce"})
    result = compare(runs)
    assert result.baseline is None and "Δ" not in markdown(result)
    result = compare(fake_runs(TABLE), baseline="gce:q=0.7")
    md = markdown(result)
    assert "vs gce:q=0.7" in md and "smallest attainable p" not in md  # 6 seeds can reach 0.031
    long = long_table(result)
    assert len(long) == 6 and set(long["test"]) == {
        "exact two-sided Wilcoxon signed-rank test, paired by seed"}


def test_few_seeds_warns_that_nothing_can_be_significant() -> None:
    result = compare(fake_runs({("a", "ce"): [1.0, 2.0, 3.0], ("a", "gce"): [5.0, 6.0, 7.0]}))
    assert any("smallest attainable p is 0.25" in n for n in notes(result))
