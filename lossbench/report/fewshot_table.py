"""Few-shot accuracy by inference method: the family's metric names
``test_acc_<W>w<K>s[_dir<alpha>][_<method>][@best_val]`` (``families.fewshot_scoring``) split into
tidy columns, and the study table built from them (rows: training loss x inference method,
columns: setting x query distribution; cells: mean ± std over seeds (n)).

The runs table keeps one row per run x metric; this only reads those names, so every report
elsewhere keeps working on the plain metrics, and the split is the one place that knows them.

Run as ``python -m lossbench.report.fewshot_table RESULTS [--selection last|best_val]`` for the
markdown table.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lossbench.errors import UserError, require

METRIC = re.compile(r"^test_acc_(?P<setting>\d+w\d+s)(?:_dir(?P<alpha>[0-9][0-9.e+-]*))?"
                    r"(?:_(?P<method>[^@]+))?(?P<best>@best_val)?$")
"""A few-shot test accuracy name, e.g. ``test_acc_5w1s_dir2_paddle@best_val``."""

PROTOTYPE = "prototype"
SELECTIONS = ("last", "best_val")


def split_metric(name: str) -> dict[str, str] | None:
    """(setting, queries, method, selection) of a few-shot accuracy name, or None for any other
    metric. ``queries`` is ``balanced`` or ``dir<alpha>``; a name without a method part is the
    plain prototype rule."""
    m = METRIC.match(name)
    if m is None:
        return None
    return {"setting": m["setting"],
            "queries": "balanced" if m["alpha"] is None else f"dir{m['alpha']}",
            "inference": m["method"] or PROTOTYPE,
            "selection": "best_val" if m["best"] else "last"}


def inference_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """The ok few-shot accuracy rows of a runs table with the columns of ``split_metric``."""
    ok = runs[(runs["family"] == "fewshot") & (runs["status"] == "ok")]
    parts = {name: split_metric(name) for name in ok["metric"].dropna().unique()}
    parts = {k: v for k, v in parts.items() if v is not None}
    rows = ok[ok["metric"].isin(list(parts))].copy()
    for col in ("setting", "queries", "inference", "selection"):
        rows[col] = rows["metric"].map(lambda name, c=col: parts[name][c])
    return rows


def inference_table(runs: pd.DataFrame, selection: str = "last") -> pd.DataFrame:
    """Rows (loss method, inference method: the prototype rule first, then by name), columns
    ``<setting> <queries>`` in the order they first appear: mean ± std (n) over seeds."""
    require(selection in SELECTIONS, f"selection got {selection!r}; accepted: "
            f"{', '.join(SELECTIONS)}")
    rows = inference_scores(runs)
    rows = rows[rows["selection"] == selection]
    require(len(rows) > 0, "no few-shot test accuracies in these results")
    rows = rows.assign(column=rows["setting"] + " " + rows["queries"])
    stats = (rows.groupby(["method", "inference", "column"], sort=False)["value"]
             .agg(["mean", "std", "size"]))
    cells = stats.apply(_cell, axis=1)
    table = cells.unstack("column")
    columns = list(dict.fromkeys(rows["column"]))
    losses = list(dict.fromkeys(rows["method"]))
    order = sorted(table.index, key=lambda key: (losses.index(key[0]), _inference_order(key[1])))
    return table.loc[order, columns].rename_axis(index=["loss", "inference"], columns=None)


def _cell(stat: pd.Series) -> str:
    spread = "" if stat["size"] < 2 else f" ± {stat['std']:.2f}"
    return f"{stat['mean']:.2f}{spread} ({int(stat['size'])})"


def _inference_order(label: str) -> tuple[bool, str]:
    """The prototype rule (and its variants) first, then the other methods by name."""
    return (not label.startswith(PROTOTYPE), label)


def markdown(table: pd.DataFrame) -> str:
    """The table as GitHub markdown."""
    return table.reset_index().to_markdown(index=False)


def main(argv: Sequence[str]) -> int:
    from lossbench.report.load import load_runs

    args = list(argv)
    try:
        selection = "last"
        if "--selection" in args:
            i = args.index("--selection")
            require(i + 1 < len(args), "--selection needs a value: last or best_val")
            selection = args[i + 1]
            del args[i : i + 2]
        require(len(args) >= 1, "usage: python -m lossbench.report.fewshot_table RESULTS... "
                "[--selection last|best_val]")
        print(markdown(inference_table(load_runs([Path(a) for a in args]), selection)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
