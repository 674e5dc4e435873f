"""``lossbench aggregate``: combine finished quantile runs into aggregate runs (``lossbench.
aggregate``), saved as records of their own so every report shows them beside their members."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lossbench.commands.common import (
    DEFAULT_OUT,
    check_writable_dir,
    console,
    plural,
    split_multi,
    user_errors,
)
from lossbench.errors import UserError


@user_errors
def aggregate(
    results: Annotated[list[Path] | None, typer.Argument(
        metavar="[RESULTS]...", show_default=False,
        help="Results folders holding the member runs' records; default: results/runs.")] = None,
    method: Annotated[list[str] | None, typer.Option(
        metavar="METHOD", help="median | mean | weighted (per model and level, fitted on "
        "validation WIS); repeat or comma-separate for several.")] = None,
    out: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Folder for the aggregate records (default: the first RESULTS).")
    ] = None,
) -> None:
    """Aggregate quantile runs (same task, split and levels) and score them like runs."""
    from lossbench import aggregate as agg
    from lossbench.engine.provenance import git_commit, now, versions
    from lossbench.engine.store import Store

    methods = split_multi(method or ["median"])
    if not methods:
        raise UserError(f"--method is empty; accepted: {', '.join(agg.METHODS)}")
    for name in methods:
        agg.check_method(name)
    folders = results or [DEFAULT_OUT]
    for folder in folders:
        if not (folder / "records").is_dir():
            raise UserError(f"'{folder}' holds no run records (records/); aggregate reads the "
                            "results folder a `lossbench run --out` wrote")
    target = Store(out or folders[0])
    check_writable_dir(target.root, "--out")
    members, without = [], 0
    for folder in folders:
        found, missing = agg.load_members(Store(folder))
        members += found
        without += missing
    if not members:
        raise UserError(f"no finished quantile-loss runs with saved predictions in "
                        f"{', '.join(map(str, folders))}; train some first, e.g. `lossbench run "
                        "--loss pinball --task uci-boston --set model.hidden=100`")
    groups = [g for g in agg.groups(members) if len(g) > 1]
    if not groups:
        raise UserError(f"{plural(len(members), 'quantile run')} but no two on the same task, "
                        "split and levels: aggregation needs at least two members per split")
    table = Table("task", "seed", "method", "members", "test WIS\naggregate",
                  "test WIS\nbest member", "coverage %", "RMSE", title="aggregates")
    common = {"versions": versions(), "git_commit": git_commit(), "device": "cpu"}
    for group in groups:
        for name in methods:
            start = time.perf_counter()
            record = agg.aggregate(group, name) | common
            record |= {"wall_s": round(time.perf_counter() - start, 3), "finished_at": now()}
            target.write(record)
            m = record["metrics"]
            table.add_row(record["config"]["task"], str(record["config"]["seed"]), name,
                          str(len(group)), f"{m['test_wis']:.4g}",
                          f"{min(agg.member_wis(g) for g in group):.4g}",
                          f"{m.get('test_coverage', float('nan')):.1f}",
                          f"{m['test_rmse']:.4g}")
    console.print(table)
    target.write_tables()
    notes = [f"{plural(len(groups) * len(methods), 'aggregate record')} written to "
             f"{target.records_dir}; tidy tables brought up to date in {target.root}"]
    if without:
        notes.append(f"{plural(without, 'finished regression run')} without saved quantile "
                     "predictions skipped (another loss, or trained before predictions were saved)")
    single = len(agg.groups(members)) - len(groups)
    if single:
        notes.append(f"{plural(single, 'split')} with a single quantile run skipped")
    for note in notes:
        console.print(note, highlight=False)
