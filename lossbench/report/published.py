"""Published numbers side by side with ours, and where the two disagree.

A published-results file is a CSV with one row per (task, metric, published method)::

    task,metric,method,mean,spread,spread_kind,n,source
    uci-boston,test_rmse,MC dropout (BayesOpt),2.83,0.17,se,20,Gal & Ghahramani 2016 Table 1

``task`` is a lossbench task name, ``metric`` a lossbench metric (a published quantity of the
opposite sign, such as a log-likelihood against ``test_nll``, is entered negated and says so in
``source``), ``spread`` a standard error (``se``) or standard deviation (``std``, turned into an
SE with ``n``). Values are kept as printed: a published number is only known to its last printed
digit, so half a unit of that digit (``rounding``) is given to it before a gap counts.

A gap is ``z = (|ours - published| - rounding)_+ / sqrt(se_ours^2 + se_published^2)`` with the
sign of ``ours - published``; |z| > 2 is a disagreement to explain (``docs/REPRODUCTION.md``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from lossbench.errors import UserError, require
from lossbench.report.compare import Comparison

COLUMNS = ("task", "metric", "method", "mean", "spread", "spread_kind", "n", "source")
SPREAD_KINDS = ("se", "std")
GAP_Z = 2.0
"""|z| above this is a disagreement."""


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def read_published(path: Path) -> pd.DataFrame:
    """The published-results CSV, checked: every column present, numbers numeric, spreads
    known; adds ``se`` and ``rounding`` (half a unit of the mean's last printed digit)."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read published results '{path}': {exc}") from None
    missing = [c for c in COLUMNS if c not in raw.columns]
    require(not missing, f"published results '{path}' lack column(s) {', '.join(missing)}; "
                         f"expected: {', '.join(COLUMNS)}")
    require(len(raw) > 0, f"published results '{path}' have no rows")
    table = raw.copy()
    for col in ("mean", "spread", "n"):
        values = pd.to_numeric(raw[col].str.strip(), errors="coerce")
        bad = raw.loc[values.isna(), col]
        require(bad.empty, f"published results '{path}': {col} '{bad.iloc[0] if len(bad) else ''}'"
                           " is not a number")
        table[col] = values
    kinds = raw["spread_kind"].str.strip()
    bad_kind = kinds[~kinds.isin(SPREAD_KINDS)]
    require(bad_kind.empty, f"published results '{path}': spread_kind "
                            f"'{bad_kind.iloc[0] if len(bad_kind) else ''}' not accepted; "
                            f"accepted: {', '.join(SPREAD_KINDS)}")
    require(bool((table["n"] >= 1).all()), f"published results '{path}': n must be >= 1")
    table["se"] = np.where(kinds == "se", table["spread"], table["spread"] / np.sqrt(table["n"]))
    table["rounding"] = [0.5 * 10.0 ** -_decimals(t.strip()) for t in raw["mean"]]
    return table


def gap_z(ours: float, ours_se: float, published: float, published_se: float,
          rounding: float) -> float:
    """Signed gap in standard errors beyond the published rounding (module docstring)."""
    diff = ours - published
    excess = max(abs(diff) - rounding, 0.0)
    if excess == 0.0:
        return 0.0
    scale = math.hypot(0.0 if math.isnan(ours_se) else ours_se, published_se)
    return math.copysign(excess / scale if scale > 0 else math.inf, diff)


def side_by_side(result: Comparison, published: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, our method, published method) where the published file has the
    setting's task and compared metric: both means and SEs, the gap ``z`` and a verdict."""
    cells = result.cells.assign(task=result.cells["setting"].astype(str).str.split(" · ").str[0])
    renamed = published.rename(columns={c: f"{c}_pub" for c in published.columns
                                        if c not in ("task", "metric")})
    pairs = cells.merge(renamed, on=["task", "metric"])
    pairs = pairs[pairs["mean"].notna()]  # a loss that does not report the metric (no variance)
    require(not pairs.empty, "the published results share no (task, metric) with these results "
            f"(compared: {', '.join(f'{s} {m}' for s, m in result.metrics.items())}; published: "
            + ", ".join(sorted(set(published['task'] + ' ' + published['metric']))) + ")")
    ours_se = pairs["std"] / np.sqrt(pairs["n_ok"].clip(lower=1))
    z = [gap_z(o, s, p, ps, r) for o, s, p, ps, r in zip(
        pairs["mean"], ours_se, pairs["mean_pub"], pairs["se_pub"], pairs["rounding_pub"],
        strict=True)]
    out = pd.DataFrame({
        "setting": pairs["setting"].astype(str), "metric": pairs["metric"],
        "method": pairs["method"], "n": pairs["n_ok"], "mean": pairs["mean"], "se": ours_se,
        "published_method": pairs["method_pub"], "published_n": pairs["n_pub"].astype(int),
        "published_mean": pairs["mean_pub"], "published_se": pairs["se_pub"],
        "rounding": pairs["rounding_pub"], "z": z, "source": pairs["source_pub"],
    })
    out["verdict"] = np.where(out["z"].abs() <= GAP_Z, "agrees",
                              np.where(out["z"] > 0, "higher", "lower"))
    return out.reset_index(drop=True)


def _mean_se(mean: float, se: float, decimals: int, extend: bool = True) -> str:
    """``mean ± se`` with at least ``decimals`` decimals and, with ``extend``, enough for two
    significant digits of the SE (kin8nm's RMSE of 0.08 needs four); published numbers are
    shown as printed (``extend=False``)."""
    if math.isnan(mean):
        return "—"
    if extend and not math.isnan(se) and se > 0:
        decimals = max(decimals, min(6, 1 - math.floor(math.log10(se))))
    return f"{mean:.{decimals}f}" + ("" if math.isnan(se) else f" ± {se:.{decimals}f}")


def _decimals_of(rounding: float) -> int:
    return max(2, round(-math.log10(2 * rounding)))


def wide_markdown(rows: pd.DataFrame) -> str:
    """Settings as rows: each published method's mean ± SE, then each of ours with its gap to
    the first published method of that setting (the reference) where |z| > 2."""
    published_methods = list(dict.fromkeys(rows["published_method"]))
    methods = list(dict.fromkeys(rows["method"]))
    lines = []
    for setting, group in rows.groupby("setting", sort=False):
        digits = _decimals_of(float(group["rounding"].min()))
        pub = group.drop_duplicates("published_method").set_index("published_method")
        reference = group["published_method"].iloc[0]
        ours = group[group["published_method"] == reference].set_index("method")
        line = [setting, group["metric"].iloc[0]]
        line += [_mean_se(pub.at[p, "published_mean"], pub.at[p, "published_se"], digits, False)
                 if p in pub.index else "" for p in published_methods]
        for method in methods:
            if method not in ours.index:
                line.append("")
                continue
            cell = _mean_se(ours.at[method, "mean"], ours.at[method, "se"], digits)
            z = ours.at[method, "z"]
            line.append(cell + (f" ({z:+.1f} SE)" if abs(z) > GAP_Z else ""))
        lines.append(line)
    header = ["setting", "metric", *[f"{p} (published)" for p in published_methods], *methods]
    return tabulate(lines, header, tablefmt="github", disable_numparse=True) + (
        f"\n\nmean ± standard error; (z SE): ours differs from the first published column by more "
        f"than {GAP_Z:g} standard errors beyond its printed precision.\n")
