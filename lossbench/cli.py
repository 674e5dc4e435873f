"""The ``lossbench`` command line. User mistakes print one line and exit 2, never a traceback."""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from lossbench.engine.executors import EXECUTORS, pack_size
from lossbench.engine.grid import RunConfig, expand, parse_seeds
from lossbench.engine.store import Store
from lossbench.errors import UserError
from lossbench.families import FAMILIES
from lossbench.families.base import Reporter
from lossbench.losses import LOSSES
from lossbench.report import compare as compare_report
from lossbench.report import gate as gate_report
from lossbench.report import leaderboard as leaderboard_report
from lossbench.report import plots as plots_report
from lossbench.report.load import load_curves, load_runs
from lossbench.report.summary import mean_std, summarise
from lossbench.spec import BUDGETS, load_task, task_names

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
list_app = typer.Typer(no_args_is_help=True, help="List the catalogue: losses or tasks.")
app.add_typer(list_app, name="list")
app.add_typer(importlib.import_module("lossbench.cli_data").data_app, name="data")
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
            errors.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False,
                         soft_wrap=True)
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
def _progress(total: int) -> Iterator[tuple[Callable[[], None], Callable[[RunConfig], Reporter]]]:
    """Rich progress: one bar for the grid, one for the epochs of the current run.

    Yields ``advance`` (one run finished) and ``make_reporter`` (a per-run epoch reporter).
    """
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[live]}"), TimeElapsedColumn(), console=console,
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

        yield (lambda: progress.advance(grid)), make_reporter
        progress.update(epochs, visible=False)


def print_summary(runs: Any, title: str) -> None:
    """A Rich table of mean ± std per task x loss for each family's summary metrics."""
    for family in runs["family"].dropna().unique():
        rows = runs[runs["family"] == family]
        present = set(rows["metric"].dropna())
        metrics = [m for m in FAMILIES.get(family).tags.get("summary", ()) if m in present]
        summary = summarise(rows, metrics)
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
    workers: Annotated[int, typer.Option(help="Parallel runs (process pool / Ray CPUs).")] = 1,
    executor: Annotated[str, typer.Option(help="local | ray")] = "local",
    address: Annotated[str, typer.Option(help="Ray: local | auto | ray://host:port")] = "local",
    gpus_per_run: Annotated[float, typer.Option(help="Ray: GPU fraction per run.")] = 0.0,
    pack: Annotated[str, typer.Option(help="Train up to N runs of one task as one batched "
                                      "computation; 'auto': 1 on CPU, up to 16 on CUDA.")] = "1",
) -> None:
    """Run the loss x task x seed grid; resumes, skipping finished runs."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor '{executor}'; accepted: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    pack_size(pack, device)  # a bad value fails before the grid
    options: dict[str, Any] = {"pack": pack}
    if executor == "ray":
        options |= {"address": address, "gpus_per_run": gpus_per_run}
    configs = expand(loss, _split_multi(task), parse_seeds(seeds), budget, set_ or [])
    store = Store(out)
    done = set() if force else store.done_keys()
    todo = [c for c in configs if c.key not in done]
    console.print(f"{len(configs)} runs in the grid, {len(configs) - len(todo)} already finished,"
                  f" {len(todo)} to run → {out}")
    finished = 0
    try:
        with _progress(len(todo)) as (advance, make_reporter):
            reporter = make_reporter if executor == "local" and workers <= 1 else None
            for record in EXECUTORS[executor](todo, device, workers, reporter, **options):
                store.write(record)
                finished += 1
                advance()
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


Results = Annotated[list[Path] | None, typer.Argument(
    help="Results folders or runs tables (.parquet/.csv); default: results/runs.",
    show_default=False)]
Metric = Annotated[str | None, typer.Option(
    help="Metric (default: each family's primary one, test_top1 for classification).")]
By = Annotated[str, typer.Option(help="Columns of the comparison: task, noise_rate, budget, "
                                      "family, source, ... (comma-separated).")]
FORMATS = ("table", "md", "csv", "json")


@app.command()
@user_errors
def compare(
    results: Results = None,
    metric: Metric = None,
    by: By = "task",
    baseline: Annotated[str | None, typer.Option(
        help="Method to test the others against (default: ce when present).")] = None,
    format_: Annotated[str, typer.Option("--format", help="table | md | csv | json")] = "table",
) -> None:
    """Methods x tasks: mean ± std, n, 95% CI, paired test vs a baseline, ranks."""
    if format_ not in FORMATS:
        raise UserError(f"unknown --format '{format_}'; accepted: {', '.join(FORMATS)}")
    result = compare_report.compare(load_runs(results or [DEFAULT_OUT]), metric,
                                    _split_multi([by]), baseline)
    if format_ == "md":
        sys.stdout.write(compare_report.markdown(result))
    elif format_ == "csv":
        compare_report.long_table(result).to_csv(sys.stdout, index=False)
    elif format_ == "json":
        sys.stdout.write(compare_report.long_table(result).to_json(orient="records", indent=1)
                         + "\n")
    else:
        table = Table(Column("method", no_wrap=True),
                      *[f"{s}\n{result.metrics[s]}" for s in result.settings], "avg rank",
                      title="compare", show_lines=True)
        for row in compare_report.grid(result):
            table.add_row(*row)
        console.print(table)
        for note in compare_report.notes(result):
            console.print(f"- {note}", highlight=False)


@app.command()
@user_errors
def leaderboard(
    results: Results = None,
    metric: Metric = None,
    out: Annotated[Path, typer.Option(help="Markdown file to write; - for stdout.")] = Path(
        "results/LEADERBOARD.md"),
) -> None:
    """Markdown leaderboard: one table per task family, best bold, † = not significantly worse."""
    text = leaderboard_report.leaderboard(load_runs(results or [DEFAULT_OUT]), metric)
    if str(out) == "-":
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"leaderboard: {out}")


@app.command()
@user_errors
def plot(
    results: Results = None,
    metric: Metric = None,
    by: By = "task",
    out: Annotated[Path, typer.Option(help="Folder for the PNG files.")] = Path("results/plots"),
) -> None:
    """PNGs: metric vs noise rate, learning curves, critical-difference diagram."""
    plots_report.require_plotting()
    paths = results or [DEFAULT_OUT]
    written, skipped = plots_report.make_plots(load_runs(paths), load_curves(paths), out, metric,
                                               _split_multi([by]))
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    for note in skipped:
        console.print(note, highlight=False)


@app.command()
@user_errors
def gate(
    results: Results = None,
    baseline: Annotated[Path | None, typer.Option(help="Baseline CSV to check against.")] = None,
    write_baseline: Annotated[Path | None, typer.Option(
        help="Write the results' summary as a baseline CSV instead of checking.")] = None,
    tolerance: Annotated[float, typer.Option(help="Smallest allowed drop, metric units.")] = 1.0,
    k: Annotated[float, typer.Option("--k", help="Allowed drop in seed stds (the larger of the "
                                                 "baseline's and the new std).")] = 2.0,
    metric: Annotated[list[str] | None, typer.Option(
        help="Metric(s) to gate (default: all in the baseline; when writing: each family's "
             "primary).")] = None,
) -> None:
    """CI gate: exit 1 when a result is worse than its baseline by more than max(tol, k·std)."""
    runs = load_runs(results or [DEFAULT_OUT])
    if write_baseline is not None:
        if baseline is not None:
            raise UserError("pass either --baseline (check) or --write-baseline (write), not both")
        table = gate_report.summary_table(runs, metric or [])
        write_baseline.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(write_baseline, index=False)
        console.print(f"baseline: {len(table)} entries -> {write_baseline}", highlight=False)
        return
    if baseline is None:
        raise UserError("pass --baseline PATH (or --write-baseline PATH to create one)")
    result = gate_report.gate(gate_report.read_baseline(baseline), runs, tolerance, k,
                              metric or [])
    table = Table("task / loss / metric", "baseline", "new", "change", "allowed", "verdict",
                  title=f"gate vs {baseline}", show_lines=True)
    for _, r in result.rows.iterrows():
        loss = r["loss"] + (f":{r['loss_params']}" if r["loss_params"] else "")
        table.add_row(f"{r['task']}\n{loss}\n{r['metric']}",
                      f"{mean_std(r['mean'], r['std'])}\nn={r['n']:g}",
                      f"{mean_std(r['new_mean'], r['new_std'])}\nn={r['new_n']}",
                      "—" if r["new_n"] == 0 else f"{r['change']:+.2f}", f"{r['allowed']:+.2f}",
                      r["status"],
                      style="" if r["status"] == gate_report.OK else "bold red")
    console.print(table)
    for failure in result.failures:
        console.print(failure, highlight=False, soft_wrap=True, markup=False)
    if not result.passed:
        console.print(f"gate FAILED: {len(result.failures)} of {len(result.rows)} entries",
                      highlight=False)
        raise typer.Exit(1)
    console.print(f"gate passed: {len(result.rows)} entries within max(tolerance {tolerance:g}, "
                  f"{k:g} x std)", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
