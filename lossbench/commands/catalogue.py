"""``lossbench list losses|tasks``: the catalogue, read from the registries and task files."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Column, Table

from lossbench.commands.common import console, user_errors
from lossbench.errors import UserError

Family = Annotated[str, typer.Option(metavar="NAME", help="Only this task family "
                                     "(classification, retrieval, fewshot, regression, ...).")]
Long = Annotated[bool, typer.Option("--long", help="Every column (model, description).")]


@user_errors
def list_losses(family: Family = "") -> None:
    """Every loss: name, what it consumes, parameters with defaults, paper; then the plug-ins
    installed through the lossbench.losses entry-point group."""
    from lossbench import plugins
    from lossbench.families import FAMILIES
    from lossbench.losses import LOSSES

    kinds = FAMILIES.get(family).tags["accepts"] if family else None
    table = Table(Column("loss", no_wrap=True), "consumes", "parameters (defaults)", "paper",
                  title="losses")
    entries = list(LOSSES)
    for name in plugins.entry_point_names():
        if name in LOSSES:
            table.add_row(name, "—", "—", "[yellow]plug-in hidden by the built-in loss of this "
                          "name[/]")
            continue
        try:
            entries.append(plugins.lookup(name)[0])
        except UserError as err:  # one broken plug-in must not hide the catalogue
            table.add_row(name, "—", "—", f"[red]{escape(str(err))}[/]")
    for entry in entries:
        if kinds is None or entry.tags["consumes"] in kinds:
            params = ", ".join(p.describe() for p in entry.params) or "—"
            table.add_row(entry.name, entry.tags["consumes"], params, entry.tags.get("paper", ""))
    console.print(table)


@user_errors
def list_reducers() -> None:
    """Every reducer (how a loss's batch is combined): name, parameters with defaults, paper.
    Use one as ``--loss ce:reduce=NAME,reduce.k=v`` or ``--reduce NAME:k=v``."""
    from lossbench.losses.reducers import REDUCERS

    table = Table(Column("reducer", no_wrap=True), "parameters (defaults)", "paper",
                  title="reducers")
    for entry in REDUCERS:
        params = ", ".join(p.describe() for p in entry.params) or "—"
        table.add_row(entry.name, params, entry.tags.get("paper", ""))
    console.print(table)


def _budget_text(raw: dict[str, Any]) -> str:
    from lossbench.spec import BUDGETS

    tiers = raw.get("budget", {})
    epochs = raw.get("train", {}).get("epochs")
    return "/".join(str(tiers[t].get("train", {}).get("epochs", epochs))
                    for t in BUDGETS if t in tiers)


def _noise_text(raw: dict[str, Any]) -> str:
    noise = raw.get("noise", {"kind": "none"})
    kind = str(noise.get("kind", "none"))
    rate = noise.get("rate")
    if kind == "none":
        return "—"
    return kind + (f" {rate:.0%}" if isinstance(rate, int | float) else "")


@user_errors
def list_tasks(family: Family = "", long: Long = False) -> None:
    """Every task, a table per family: dataset, noise and epochs per budget (--long: model,
    description)."""
    from lossbench.spec import BUDGETS, load_task, task_names

    rows: dict[str, list[list[str]]] = {}
    for name in task_names():
        try:
            raw = load_task(name)
        except UserError as err:  # one broken file must not hide the rest of the catalogue
            rows.setdefault("unreadable", []).append([name, str(err)])
            continue
        if family and raw.get("family") != family:
            continue
        data = raw.get("data", {})
        dataset = data.get("source", data.get("corpus", "?"))  # lm tasks name a text corpus
        row = [name, str(dataset), _noise_text(raw), _budget_text(raw)]
        if long:
            row += [str(raw.get("model", {}).get("name", "?")), str(raw.get("description", ""))]
        rows.setdefault(str(raw["family"]), []).append(row)
    if not rows:
        raise UserError(f"no task of family '{family}'")
    for fam, fam_rows in rows.items():
        if fam == "unreadable":
            columns = [Column("task", no_wrap=True), Column("error", overflow="fold")]
        else:
            columns = [Column(c, no_wrap=True) for c in ("task", "dataset", "noise")]
            columns.append(Column("epochs", no_wrap=True))
            if long:
                columns += [Column("model", no_wrap=True), Column("about", overflow="fold")]
        table = Table(*columns, title=fam, box=box.SIMPLE_HEAD, title_justify="left")
        for row in fam_rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"epochs per budget: {' / '.join(BUDGETS)}; --long adds model and "
                  "description; --family NAME shows one family", highlight=False)


@user_errors
def list_suites() -> None:
    """Every suite: its settings (the columns of its table) and default losses."""
    from lossbench.suites import load_suite, suite_names

    table = Table(Column("suite", no_wrap=True), Column("settings", overflow="fold"),
                  Column("losses", overflow="fold"), title="suites", box=box.SIMPLE_HEAD)
    for name in suite_names():
        try:
            suite = load_suite(name)
        except UserError as err:
            table.add_row(name, f"[red]error[/] {err}", "")
            continue
        labels = [s.label for s in suite.settings]
        shown = ", ".join(labels[:4]) + (f", … ({len(labels)} in all)" if len(labels) > 4 else "")
        table.add_row(name, shown, ", ".join(suite.losses) or "—")
    console.print(table)
    console.print("run one with `lossbench run --suite NAME`; tasks/suites/NAME.toml lists it",
                  highlight=False)
