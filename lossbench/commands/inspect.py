"""``lossbench runs`` (which runs a folder holds, with their keys) and ``lossbench show KEY``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from lossbench.commands.common import DEFAULT_OUT, console, plural, user_errors
from lossbench.errors import UserError

Out = Annotated[Path, typer.Option(metavar="DIR", help="Output folder holding the records.")]


@user_errors
def runs(
    out: Annotated[Path, typer.Argument(metavar="[DIR]", help="Results folder (default: "
                                        "results/runs).", show_default=False)] = DEFAULT_OUT,
    task: Annotated[str | None, typer.Option(metavar="NAME", help="Only this task.")] = None,
    loss: Annotated[str | None, typer.Option(metavar="NAME", help="Only this loss.")] = None,
    status: Annotated[str | None, typer.Option(metavar="STATUS",
                                               help="Only ok | diverged | failed.")] = None,
) -> None:
    """The runs of a results folder, one line each with its key (for `lossbench show KEY`)."""
    from lossbench.families import FAMILIES
    from lossbench.report.load import load_runs

    shown = {next(iter(e.tags.get("summary", ())), "") for e in FAMILIES}
    table = load_runs([out], shown - {""})
    for column, value in (("task", task), ("loss", loss), ("status", status)):
        if value is not None:
            table = table[table[column] == value]
    if table.empty:
        raise UserError(f"no runs in '{out}' match the filters")
    first = table.drop_duplicates("run_key").sort_values(["task", "loss", "loss_params", "seed"])
    listing = Table(Column("key", no_wrap=True), Column("task", overflow="fold"),
                    Column("loss", no_wrap=True), Column("params", overflow="fold"), "seed",
                    "status", "metric", Column("value", justify="right"),
                    title=f"{plural(len(first), 'run')} in {out}")
    for row in first.to_dict("records"):
        summary = FAMILIES.get(row["family"]).tags.get("summary", ()) if row[
            "family"] in FAMILIES else ()
        metric = next(iter(summary), "")
        value = table[(table["run_key"] == row["run_key"]) & (table["metric"] == metric)]["value"]
        listing.add_row(row["run_key"], row["task"], row["loss"], row["loss_params"] or "—",
                        str(row["seed"]), row["status"], metric.removeprefix("test_"),
                        f"{value.iloc[0]:.2f}" if len(value) else "—")
    console.print(listing)


@user_errors
def show(
    key: Annotated[str, typer.Argument(metavar="KEY",
                                       help="A run key (or a unique prefix of one).")],
    out: Out = DEFAULT_OUT,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw record.")] = False,
) -> None:
    """Show one run's resolved config, status, metrics and noise report."""
    from lossbench.engine.store import Store

    store = Store(out)
    matches = [k for k in store.run_keys() if k.startswith(key)]
    if len(matches) != 1:
        what = "no run" if not matches else f"{len(matches)} runs"
        raise UserError(f"{what} with key '{key}' in {out}; pass a unique key or prefix "
                        f"(`lossbench runs {out}` lists them)")
    rec = store.read(matches[0])
    if rec is None:
        raise UserError(f"the record of run '{matches[0]}' in {out} is unreadable")
    if as_json:
        sys.stdout.write(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        return
    _print_record(rec)


def _print_record(rec: dict[str, Any]) -> None:
    cfg = rec["config"]
    head = Table.grid(padding=(0, 2))
    for label, value in [
        ("run", rec["run_key"]), ("task", f"{cfg['task']} ({cfg['family']}, {cfg['budget']})"),
        ("loss", f"{cfg['loss']} {cfg['loss_params']}"), ("seed", cfg["seed"]),
        ("status", rec["status"] + (f": {rec['reason']}" if rec.get("reason") else "")),
        ("device", f"{rec.get('device')}, {rec.get('torch_threads')} torch threads"),
        ("wall", f"{rec.get('wall_s')} s"),
        ("commit", rec.get("git_commit")), ("versions", rec.get("versions")),
    ]:
        head.add_row(f"[bold]{label}[/]", str(value))
    console.print(head)
    metrics = Table("metric", "value", title="metrics")
    for name, value in (rec.get("metrics") or {}).items():
        metrics.add_row(name, f"{value:.4f}")
    console.print(metrics)
    noise = (rec.get("info") or {}).get("noise")
    if noise:
        console.print(f"noise: {noise['kind']} requested {noise['requested_rate']:.3f}, realised "
                      f"{noise['realised_rate']:.3f}, labels hash {noise['labels_hash']}")
    if rec.get("traceback"):
        console.print(rec["traceback"], markup=False, highlight=False)
    console.print_json(json.dumps(cfg["spec"]))
