"""The ``lossbench`` command line. User mistakes print one line and exit 2, never a traceback."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from lossbench.engine.executors import run_local
from lossbench.engine.grid import RunConfig, expand, parse_seeds
from lossbench.engine.store import Store
from lossbench.errors import UserError
from lossbench.families import FAMILIES
from lossbench.families.base import Reporter
from lossbench.losses import LOSSES
from lossbench.report.summary import mean_std, summarise
from lossbench.spec import BUDGETS, load_task, task_names

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
list_app = typer.Typer(no_args_is_help=True, help="List the catalogue: losses or tasks.")
app.add_typer(list_app, name="list")
console = Console()
errors = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_OUT = Path("results/runs")


def user_errors(fn: F) -> F:
    """Turn ``UserError`` into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            errors.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@list_app.command("losses")
@user_errors
def list_losses(
    family: Annotated[str, typer.Option(help="Only losses a task family accepts.")] = "",
) -> None:
    """Every loss: name, what it consumes, parameters with defaults, paper."""
    kinds = FAMILIES.get(family).tags["accepts"] if family else None
    table = Table(Column("loss", no_wrap=True), "consumes", "parameters (defaults)", "paper",
                  title="losses")
    for entry in LOSSES:
        if kinds is None or entry.tags["consumes"] in kinds:
            params = ", ".join(p.describe() for p in entry.params) or "—"
            table.add_row(entry.name, entry.tags["consumes"], params, entry.tags.get("paper", ""))
    console.print(table)


def _budget_text(raw: dict[str, Any]) -> str:
    tiers = raw.get("budget", {})
    epochs = raw.get("train", {}).get("epochs")
    parts = []
    for tier in BUDGETS:
        if tier in tiers:
            parts.append(f"{tier}: {tiers[tier].get('train', {}).get('epochs', epochs)} ep")
    return ", ".join(parts)


@list_app.command("tasks")
@user_errors
def list_tasks() -> None:
    """Every task: family, dataset, noise, model, budgets."""
    table = Table(Column("task", no_wrap=True), "family", "dataset", "noise", "model", "budgets",
                  "about", title="tasks")
    for name in task_names():
        raw = load_task(name)
        noise = raw.get("noise", {"kind": "none"})
        noise_text = noise.get("kind", "none")
        if "rate" in noise:
            noise_text += f" {noise['rate']:.0%}"
        table.add_row(name, raw.get("family", "?"), raw.get("data", {}).get("source", "?"),
                      noise_text, raw.get("model", {}).get("name", "?"), _budget_text(raw),
                      raw.get("description", ""))
    console.print(table)


def _split_multi(values: Sequence[str]) -> list[str]:
    """Accept both ``--task a --task b`` and ``--task a,b`` (loss specs keep their commas)."""
    return [v for value in values for v in value.split(",") if v.strip()]


@contextmanager
def _progress(total: int) -> Iterator[tuple[Progress, Callable[[RunConfig], Reporter]]]:
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[live]}"), TimeElapsedColumn(), console=console,
        transient=False,
    )
    with progress:
        grid = progress.add_task("grid", total=total, live="")
        epochs = progress.add_task("run", total=1, live="", visible=False)

        def make_reporter(cfg: RunConfig) -> Reporter:
            progress.reset(epochs, total=1, description=cfg.label, visible=True, live="")

            def report(epoch: int, total_epochs: int, live: Any) -> None:
                text = "  ".join(f"{k} {v:.3f}" for k, v in live.items())
                progress.update(epochs, completed=epoch, total=total_epochs, live=text)

            return report

        yield progress, make_reporter
        progress.update(grid, completed=total)
        progress.update(epochs, visible=False)
        _ = grid


def print_summary(runs: Any, title: str) -> None:
    """A Rich table of mean ± std per task x loss for each family's summary metrics."""
    for family in runs["family"].dropna().unique():
        metrics = list(FAMILIES.get(family).tags.get("summary", ()))
        summary = summarise(runs[runs["family"] == family], metrics)
        table = Table(Column("task", no_wrap=True), Column("loss", no_wrap=True), "params", "n",
                      *metrics, title=f"{title} ({family})")
        for r in summary.to_dict("records"):
            n = f"{r['n_ok']}" + (f" (+{r['n_bad']} not ok)" if r["n_bad"] else "")
            cells = [mean_std(r.get(f"{m}_mean"), r.get(f"{m}_std")) for m in metrics]
            table.add_row(r["task"], r["loss"], r["loss_params"] or "—", n, *cells)
        console.print(table)


@app.command()
@user_errors
def run(
    loss: Annotated[list[str], typer.Option("--loss", "-l", help="Loss spec: name or name:k=v,k=v; "
                                            "repeat for several; 'all' for every loss.")],
    task: Annotated[list[str], typer.Option("--task", "-t", help="Task name; repeat or a,b.")],
    seeds: Annotated[str | None, typer.Option(help="e.g. 0,1,2 or 0-4 (default: task's).")] = None,
    budget: Annotated[str, typer.Option(help="smoke | quick | paper")] = "quick",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a spec field: "
                                                   "key=value (e.g. noise.rate=0.3).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    out: Annotated[Path, typer.Option(help="Output folder for records and tables.")] = DEFAULT_OUT,
    force: Annotated[bool, typer.Option(help="Re-run runs already finished.")] = False,
    workers: Annotated[int, typer.Option(help="Local process-pool size.")] = 1,
) -> None:
    """Run the loss x task x seed grid; resumes, skipping finished runs."""
    configs = expand(loss, _split_multi(task), parse_seeds(seeds), budget, set_ or [])
    store = Store(out)
    done = set() if force else store.done_keys()
    todo = [c for c in configs if c.key not in done]
    console.print(f"{len(configs)} runs in the grid, {len(configs) - len(todo)} already finished,"
                  f" {len(todo)} to run → {out}")
    finished = 0
    try:
        with _progress(len(todo)) as (progress, make_reporter):
            grid_task = progress.task_ids[0]
            for record in run_local(todo, device, workers, make_reporter if workers <= 1 else None):
                store.write(record)
                finished += 1
                progress.advance(grid_task)
                if record["status"] != "ok":
                    console.print(f"[yellow]{record['status']}[/]: {record['run_key']} "
                                  f"({record.get('reason', '')})", highlight=False)
    except KeyboardInterrupt:
        store.write_tables()
        errors.print(f"interrupted: {finished} finished runs this time are saved in {out}; "
                     "run the same command again to resume.")
        raise typer.Exit(130) from None
    runs = store.write_tables()
    keys = {c.key for c in configs}
    print_summary(runs[runs["run_key"].isin(keys)], "results")
    console.print(f"tidy tables: {out / 'runs.parquet'}, {out / 'runs.csv'}")


@app.command()
@user_errors
def show(
    key: Annotated[str, typer.Argument(help="A run key (or a unique prefix of one).")],
    out: Annotated[Path, typer.Option(help="Output folder holding the records.")] = DEFAULT_OUT,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw record.")] = False,
) -> None:
    """Show one run's resolved config, status, metrics and noise report."""
    store = Store(out)
    matches = [r for r in store.records() if r["run_key"].startswith(key)]
    if len(matches) != 1:
        what = "no run" if not matches else f"{len(matches)} runs"
        raise UserError(f"{what} with key '{key}' in {out}; pass a unique key or prefix")
    rec = matches[0]
    if as_json:
        sys.stdout.write(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        return
    cfg = rec["config"]
    head = Table.grid(padding=(0, 2))
    for label, value in [
        ("run", rec["run_key"]), ("task", f"{cfg['task']} ({cfg['family']}, {cfg['budget']})"),
        ("loss", f"{cfg['loss']} {cfg['loss_params']}"), ("seed", cfg["seed"]),
        ("status", rec["status"] + (f": {rec['reason']}" if rec.get("reason") else "")),
        ("device", rec.get("device")), ("wall", f"{rec.get('wall_s')} s"),
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
    console.print_json(json.dumps(cfg["spec"]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
