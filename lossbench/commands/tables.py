"""``lossbench tables [DIR]``: the tidy tables of a results folder -- brought up to date with its
records, rebuilt from them, exported as one ``runs.csv``, or published as a compact folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from lossbench.commands.common import DEFAULT_OUT, check_writable_dir, console, plural, user_errors
from lossbench.errors import require


@user_errors
def tables(
    out: Annotated[Path, typer.Argument(metavar="[DIR]", help="Results folder (default: "
                                        "results/runs).", show_default=False)] = DEFAULT_OUT,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Rebuild every row from the records (e.g. after editing a record by "
        "hand); otherwise only records the tables lack are added.")] = False,
    export: Annotated[bool, typer.Option(
        "--export", help="Also write DIR/runs.csv: the whole runs table in one file.")] = False,
    publish: Annotated[Path | None, typer.Option(
        "--publish", metavar="TO", help="Also write a compact copy to commit: TO/runs.parquet "
        "(the runs table in one file) and TO/tuning/; every report reads TO like DIR. Records "
        "and curves stay behind.")] = None,
) -> None:
    """Bring the tables (runs.parquet/, curves.parquet/) up to date with the records."""
    from lossbench.engine.store import Store

    require(out.is_dir(), f"results folder '{out}' does not exist")
    check_writable_dir(out, "DIR")
    if publish is not None:
        require(publish.resolve() != out.resolve(), "--publish needs another folder than DIR")
        check_writable_dir(publish, "--publish")
    store = Store(out)
    report = store.write_tables(rebuild)
    for path, why in report.unreadable:
        console.print(f"[yellow]warning[/]: record {path} is unreadable ({why}); it is left out",
                      highlight=False)
    snap = store.tables.snapshot(listed=False)
    done = "rebuilt from the records" if rebuild else (
        f"{plural(report.added, 'run')} added from records" if report.added else "up to date")
    if report.dropped:
        done += f" ({plural(report.dropped, 'unreadable segment')} dropped, its runs re-added)"
    console.print(f"{out}: {plural(len(snap.owners), 'run')} in "
                  f"{plural(len(snap.segments), 'segment')}, {done}", highlight=False)
    if export:
        rows = store.tables.export_csv(out / "runs.csv")
        console.print(f"wrote {out / 'runs.csv'} ({plural(rows, 'row')})", highlight=False)
    if publish is not None:
        rows = store.tables.export_parquet(publish / "runs.parquet")
        if (out / "tuning").is_dir():
            shutil.copytree(out / "tuning", publish / "tuning", dirs_exist_ok=True)
        console.print(f"published {publish} (runs.parquet: {plural(rows, 'row')})",
                      highlight=False)
