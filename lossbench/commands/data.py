"""``lossbench data list|get``: the catalogue's data sets with their status, and fetching one.

The catalogue and the downloader (standard library) load when a command runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

from lossbench.commands.common import console, user_errors


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return ""


@user_errors
def list_data() -> None:
    """Every data set the tasks read: where it was found, size, checksums, how to get it."""
    from lossbench.data import catalog

    table = Table(Column("data set", no_wrap=True), Column("found in", no_wrap=True),
                  Column("size", justify="right", no_wrap=True),
                  Column("checksum", no_wrap=True), Column("get it with", no_wrap=True),
                  Column("tasks", overflow="fold"), title="data sets")
    for st in catalog.statuses():
        name = st.dataset.name
        found = ("[red]missing[/]" if st.root is None
                 else f"[green]{escape(_where(st.root, name))}[/]")
        command = (f"lossbench data get {name}" if any(not f.derived for f in st.dataset.files)
                   else "(derived; see `data get`)")
        table.add_row(name, found, _size(st.size) if st.root else "—", escape(st.summary),
                      command, _tasks(st.dataset.tasks))
    console.print(table)


def _where(root: Path, name: str) -> str:
    """A found folder, named by the lookup step that found it (``lossbench.data.locate``)."""
    from lossbench.data import locate

    if root == locate.data_home() / name:
        return "$LOSSBENCH_DATA"
    if root == locate.SHARED_DATA / name:
        return "../shared/data"
    return str(root)


def _tasks(tasks: tuple[str, ...]) -> str:
    if len(tasks) <= 2:
        return ", ".join(tasks) or "—"
    stems = {t.split("-")[0] for t in tasks}
    return f"{stems.pop()}-* ({len(tasks)})" if len(stems) == 1 else f"{tasks[0]} +{len(tasks) - 1}"


@user_errors
def get_data(
    name: Annotated[str, typer.Argument(metavar="NAME",
                                        help="A data set of `lossbench data list`.")],
    to: Annotated[Path | None, typer.Option(metavar="DIR", help="Folder to put the files in "
                                            "(default: $LOSSBENCH_DATA/<name>).")] = None,
    mirror: Annotated[str, typer.Option(metavar="URL", help="Replace the host of every URL "
                                        "(e.g. a proxy or local copy); default "
                                        "$LOSSBENCH_MIRROR.")] = "",
) -> None:
    """Download a data set from its official URLs, verify its checksums, write atomically."""
    from lossbench.data import catalog, download

    dataset = catalog.get(name)
    report = download.get(dataset, to, mirror or os.environ.get("LOSSBENCH_MIRROR", ""),
                          console)
    for fetched in report.fetched:
        mark = "verified" if fetched.verified else "[yellow]not verified[/] (no recorded checksum)"
        console.print(f"fetched {escape(str(fetched.path))}: {mark}", soft_wrap=True)
    if report.present:
        console.print(f"already there: {', '.join(report.present)}", soft_wrap=True)
    if report.derived:
        console.print(f"not downloadable (derived here; the sources do without them): "
                      f"{', '.join(report.derived)}. {escape(dataset.origin)}", soft_wrap=True)
    hint = f" (use it with --set data.dir={report.folder})" if to is not None else ""
    console.print(f"[green]{name}[/] is in {escape(str(report.folder))}{hint}", soft_wrap=True)
