"""The ``lossbench`` app: assembles the commands of ``lossbench.commands``.

Nothing heavy is imported here (no torch, pandas or registries): ``lossbench --help`` answers at
once, and each command loads what it needs.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from lossbench.commands import aggregate, catalogue, data, inspect, reports, run, tables


def _no_help_metavar(command: Any, ctx: Any) -> Any:
    option = super(type(command), command).get_help_option(ctx)
    if option is not None:
        option.metavar = ""  # a flag takes no value: no "<bool>" beside --help
    return option


class Command(TyperCommand):
    get_help_option = _no_help_metavar


class Group(TyperGroup):
    get_help_option = _no_help_metavar


def _app(help_text: str) -> typer.Typer:
    return typer.Typer(cls=Group, add_completion=False, no_args_is_help=True, help=help_text)


app = _app("Which loss should I train with, for this task, under these conditions? lossbench "
           "runs the loss x task x seed grid and reports it.")
list_app = _app("List the catalogue: losses, reducers, tasks or suites.")
app.add_typer(list_app, name="list")
data_app = _app("Data sets: where they are, whether intact, how to get them.")
app.add_typer(data_app, name="data")

for name, command in [
    ("run", run.run), ("runs", inspect.runs), ("show", inspect.show),
    ("compare", reports.compare), ("leaderboard", reports.leaderboard), ("plot", reports.plot),
    ("gate", reports.gate), ("aggregate", aggregate.aggregate), ("tables", tables.tables),
]:
    app.command(name, cls=Command)(command)
list_app.command("losses", cls=Command)(catalogue.list_losses)
list_app.command("tasks", cls=Command)(catalogue.list_tasks)
list_app.command("suites", cls=Command)(catalogue.list_suites)
list_app.command("reducers", cls=Command)(catalogue.list_reducers)
data_app.command("list", cls=Command)(data.list_data)
data_app.command("get", cls=Command)(data.get_data)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
