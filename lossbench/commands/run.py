"""``lossbench run``: the loss x task x seed grid, resumable, with Rich progress.

Everything a user can get wrong is checked before the first run trains: options, loss and task
specs, data presence, the device, and that ``--out`` is writable. Exit codes: 0 every run
finished (``ok`` or ``diverged``, which is a result), 1 every run of this invocation failed, 3
some failed, 2 a user mistake, 130 interrupted (Ctrl-C or SIGTERM; finished runs are saved).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from lossbench.commands.common import (
    DEFAULT_OUT,
    console,
    errors,
    plural,
    split_multi,
    user_errors,
)
from lossbench.engine.session import resolve_workers as resolve_workers  # re-exported
from lossbench.errors import require

if TYPE_CHECKING:
    import pandas as pd

    from lossbench.engine.grid import RunConfig
    from lossbench.families.base import Reporter

SUMMARY_COLUMNS = ["task", "family", "loss", "loss_params", "status", "spec_key", "noise_kind",
                   "noise_rate"]
"""What ``print_summary`` reads of the runs table (with run_key, metric and value)."""
EXIT_ALL_FAILED = 1
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130


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

            def report(epoch: int, total_epochs: int, live: Mapping[str, float]) -> None:
                text = "  ".join(f"{k} {v:.3f}" for k, v in live.items())
                progress.update(epochs, completed=epoch, total=total_epochs, live=text)

            return report

        yield (lambda: progress.advance(grid)), make_reporter
        progress.update(epochs, visible=False)


def metric_header(metric: str) -> str:
    """A short, distinct column header: ``test_top1@best_val`` -> ``top1\\n@best_val``."""
    name, at, selection = metric.removeprefix("test_").partition("@best")
    return f"{name}\n@best{selection}" if at else name


def print_summary(runs: pd.DataFrame, title: str) -> None:
    """A Rich table of mean ± std per task x loss for each family's summary metrics."""
    from lossbench.families import FAMILIES
    from lossbench.report.summary import mean_std, summarise

    for family in runs["family"].dropna().unique():
        rows = runs[runs["family"] == family]
        present = set(rows["metric"].dropna())
        metrics = [m for m in FAMILIES.get(family).tags.get("summary", ()) if m in present]
        summary = summarise(rows, metrics)
        settings = [Column("setting", overflow="fold")] if summary["setting"].ne("").any() else []
        table = Table(Column("task", overflow="fold"), *settings, Column("loss", no_wrap=True),
                      Column("params", overflow="fold", max_width=24), "n",
                      *[Column(metric_header(m), justify="right") for m in metrics],
                      title=f"{title} ({family})",
                      caption=("test metrics on clean labels" if family == "classification"
                               else "test metrics") + ": mean ± std over seeds")
        for r in summary.to_dict("records"):
            n = f"{r['n_ok']}" + (f" (+{r['n_bad']} not ok)" if r["n_bad"] else "")
            cells = [mean_std(r.get(f"{m}_mean"), r.get(f"{m}_std")) for m in metrics]
            table.add_row(r["task"], *[r["setting"] for _ in settings], r["loss"],
                          non_default_params(r["loss"], r["loss_params"]), n, *cells)
        console.print(table)


def non_default_params(loss: str, params_text: str) -> str:
    """``k=v,...`` without the parameters at their registry default (a table stays readable:
    ``nce+rce`` shows ``alpha=5.0,beta=5.0``, not also ``A=-9.210340371976182``)."""
    from lossbench.losses import LOSSES

    if not params_text or loss not in LOSSES:
        return params_text or "—"
    from lossbench.losses.reducers import reducer_defaults

    items = params_text.split(",")
    reducer = next((i.partition("=")[2] for i in items if i.startswith("reduce=")), "mean")
    defaults = {p.name: str(p.default) for p in LOSSES.get(loss).params}
    defaults |= reducer_defaults(reducer)
    pairs = [item for item in items
             if defaults.get(item.partition("=")[0]) != item.partition("=")[2]]
    return ",".join(pairs) or "defaults"


def print_tuning(choices: Sequence[Mapping[str, Any]], configs: Sequence[RunConfig]) -> None:
    """One row per setting and loss: the chosen point, its criterion mean, the trial count."""
    from lossbench.tuning import setting_key

    names = {}
    for cfg in configs:
        noise = cfg.spec.get("noise", {})
        names[setting_key(cfg)] = f"{cfg.task} {noise.get('kind', '')} {noise.get('rate', '')}"
    table = Table(Column("setting", overflow="fold"), Column("loss", no_wrap=True),
                  Column("chosen", overflow="fold"), Column("criterion", justify="right"),
                  "trials", title="tuning (validation only)",
                  caption="criterion: mean over seeds of the validation metric named; "
                          "records in <out>/tuning/")
    for c in choices:
        chosen = c["chosen"]
        value = "—" if chosen is None else f"{c['points'][chosen]['mean']:.3f}"
        varying = [k for k in c["chosen_params"] or {}
                   if len({str(p["params"].get(k)) for p in c["points"]}) > 1]
        params = "all diverged/failed" if chosen is None else (
            ",".join(f"{k}={c['chosen_params'][k]}" for k in varying) or "—")
        table.add_row(names.get(c["spec_key"], c["task"]).strip(), c["loss"], params,
                      f"{c['criterion']} {value}", str(c["trials"]))
    console.print(table)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's kill, ``timeout``) ends the grid as Ctrl-C does: saved, resumable."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave it alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _version_notes(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Finished runs reused from ``--out`` made by other torch/lossbench versions: a warning,
    since their numbers may differ from what this installation would give."""
    from lossbench.engine.provenance import versions

    now = versions()
    notes = []
    for lib in ("torch", "lossbench"):
        other = sorted({str(r.get("versions", {}).get(lib)) for r in records} - {now[lib]})
        if other:
            n = sum(str(r.get("versions", {}).get(lib)) in other for r in records)
            notes.append(f"{plural(n, 'finished run')} reused from the folder were made with "
                         f"{lib} {', '.join(other)} (now {now[lib]}); their numbers may differ: "
                         "add --force to re-run them")
    return notes


@user_errors
def run(
    loss: Annotated[list[str] | None, typer.Option(
        "--loss", "-l", metavar="SPEC", help="Loss spec: name[:k=v,...], module:Class[:k=v,...] "
        "or file.py:Class[:k=v,...]; repeat for several; 'all' for every built-in loss the "
        "task accepts (default with --suite: the suite's losses).")] = None,
    task: Annotated[list[str] | None, typer.Option(
        "--task", "-t", metavar="NAME", help="Task name or path/to/task.toml; repeat or a,b.")
    ] = None,
    suite: Annotated[str | None, typer.Option(
        metavar="NAME", help="Run every setting of a suite (`lossbench list suites`).")] = None,
    reduce: Annotated[list[str] | None, typer.Option(
        metavar="NAME[:k=v]", help="Reducer of every --loss's batch (mean | loss-weight | "
        "small-loss; `lossbench list reducers`): adds reduce=NAME,reduce.k=v to each loss spec; "
        "repeat for a reducer axis.")] = None,
    tune: Annotated[bool, typer.Option(
        "--tune", help="Tune each loss on its declared search space with the same number of "
        "trials per loss, choosing by the mean validation metric over the seeds (folds).")
    ] = False,
    space: Annotated[list[str] | None, typer.Option(
        metavar="LOSS.PARAM=V1,V2", help="With --tune: these values for one parameter instead "
        "of the declared ones; repeat for several.")] = None,
    trials: Annotated[int | None, typer.Option(
        metavar="N", help="With --tune: points tried per loss (default: the largest space).")
    ] = None,
    tune_metric: Annotated[str | None, typer.Option(
        metavar="NAME", help="With --tune: the validation metric to choose by (default: the "
        "family's, e.g. best_val_top1).")] = None,
    seeds: Annotated[str | None, typer.Option(
        metavar="LIST", help="e.g. 0,1,2 or 0-4 (default: the task's).")] = None,
    budget: Annotated[str, typer.Option(metavar="TIER", help="smoke | quick | paper")] = "quick",
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="Override a task spec field (e.g. noise.rate=0.3); repeat for several.")] = None,
    device: Annotated[str, typer.Option(metavar="DEVICE", help="auto | cpu | cuda | cuda:N")
                      ] = "auto",
    out: Annotated[Path, typer.Option(metavar="DIR", help="Output folder for records and "
                                      "tables.")] = DEFAULT_OUT,
    force: Annotated[bool, typer.Option(help="Re-run runs already finished.")] = False,
    workers: Annotated[str, typer.Option(
        metavar="N", envvar="LOSSBENCH_WORKERS",
        help="Runs in parallel (process pool / Ray CPUs); 'auto': one per CPU core at --threads "
             "each.")] = "auto",
    threads: Annotated[int, typer.Option(
        metavar="N", help="Torch CPU threads per run. Part of the run key: float sums, and so "
        "the numbers, depend on it.")] = 1,
    executor: Annotated[str, typer.Option(metavar="NAME", help="local | ray")] = "local",
    address: Annotated[str, typer.Option(metavar="ADDR",
                                         help="Ray: local | auto | ray://host:port")] = "local",
    gpus_per_run: Annotated[float, typer.Option(metavar="FRACTION",
                                                help="Ray: GPU fraction per run.")] = 0.0,
    pack: Annotated[str, typer.Option(metavar="N", help="Train up to N runs of one task as one "
                                      "batched computation; 'auto': 1 on CPU, up to 16 on "
                                      "CUDA.")] = "1",
) -> None:
    """Run the loss x task x seed grid; resumes, skipping finished runs.

    Loss spec: NAME[:k=v,...] (built-in, or a lossbench.losses entry point),
    or your own: pkg.module:Class[:k=v,...] or path/file.py:Class[:k=v,...].
    Task: NAME (tasks/, then $LOSSBENCH_TASKS folders, then lossbench.tasks
    entry points) or path/to/task.toml (named after the file).
    """
    from lossbench.engine.grid import parse_seeds
    from lossbench.engine.session import execute, plan

    settings: list[str | tuple[str, Sequence[str]]] = list(split_multi(task or []))
    losses = list(loss or [])
    if suite is not None:
        from lossbench.suites import load_suite

        chosen_suite = load_suite(suite)
        settings += [(s.task, s.overrides) for s in chosen_suite.settings]
        losses = losses or list(chosen_suite.losses)
    require(bool(settings), "no --task or --suite given; see `lossbench list tasks` and "
                            "`lossbench list suites`")
    if reduce:
        from lossbench.losses.reducers import with_reducer

        losses = [with_reducer(spec, r) for spec in losses for r in reduce]
    require(tune or not (space or trials or tune_metric),
            "--space, --trials and --tune-metric go with --tune")
    if tune:
        from lossbench.tuning import check_tune_metric, tuned_specs

        check_tune_metric(tune_metric)
        losses = tuned_specs(losses, space or [], trials)
    grid = plan(losses, settings, parse_seeds(seeds), budget, set_ or [], out=out,
                device=device, force=force, workers=workers, threads=threads,
                executor=executor, pack=pack, address=address, gpus_per_run=gpus_per_run)
    configs, todo, reused, store, n_workers = (grid.configs, grid.todo, grid.reused, grid.store,
                                                grid.workers)
    for path, why in grid.unreadable:
        console.print(f"[yellow]warning[/]: record {path} is unreadable ({why}); its run counts "
                      "as not finished", highlight=False)
    teachers = f" (+{plural(len(grid.teachers), 'teacher')})" if grid.teachers else ""
    console.print(f"{plural(len(configs), 'run')} in the grid{teachers}, {len(reused)} already "
                  "finished, "
                  f"{len(todo)} to run → {out}"
                  + (f" ({plural(n_workers, 'worker')} × {plural(threads, 'thread')})"
                     if todo else ""), highlight=False)
    for note in _version_notes(reused):
        console.print(f"[yellow]warning[/]: {note}", highlight=False)
    statuses: list[str] = []
    try:
        with _sigterm_as_interrupt(), _progress(len(todo)) as (advance, make_reporter):
            for record in execute(grid, make_reporter):
                statuses.append(record["status"])
                advance()
                if record["status"] != "ok":
                    console.print(f"[yellow]{record['status']}[/]: {record['run_key']} "
                                  f"({record.get('reason', '')})", highlight=False)
    except KeyboardInterrupt:
        errors.print(f"interrupted: {plural(len(statuses), 'finished run')} this time "
                     f"{'is' if len(statuses) == 1 else 'are'} saved in {out}; run the same "
                     "command again to resume.", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    from lossbench.families import FAMILIES

    keys = {c.key for c in configs}
    if tune:
        from lossbench.tuning import select

        choices = select(configs, store, tune_metric)
        print_tuning(choices, configs)
        keys = {k for c in choices for k in c["chosen_keys"]}
    families = {c.family for c in configs}
    shown = {m for f in families for m in FAMILIES.get(f).tags.get("summary", ())}
    print_summary(store.tables.runs_frame(shown, keys, SUMMARY_COLUMNS),
                  "tuned results" if tune else "results")
    if store.tables_problem:
        console.print(f"[yellow]warning[/]: tables not updated ({store.tables_problem}); "
                      "reports add the missing rows from the records", highlight=False)
    console.print(f"tidy tables: {out / 'runs.parquet'}, {out / 'curves.parquet'} (`lossbench "
                  f"tables {out} --export` writes runs.csv)", highlight=False)
    failed = statuses.count("failed")
    if failed:
        console.print(f"[red]{failed} of {plural(len(statuses), 'run')} failed[/]; `lossbench "
                      f"show KEY --out {out}` gives the reason and traceback", highlight=False)
        raise typer.Exit(EXIT_ALL_FAILED if failed == len(statuses) else EXIT_SOME_FAILED)
