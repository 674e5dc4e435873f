"""Reports from the tidy tables: ``compare``, ``leaderboard``, ``plot`` and the CI ``gate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from lossbench.commands.common import (
    DEFAULT_OUT,
    By,
    Metric,
    Results,
    check_writable_dir,
    check_writable_file,
    console,
    split_multi,
    user_errors,
)
from lossbench.errors import UserError

FORMATS = ("table", "md", "csv", "json")
EXIT_GATE_FAILED = 1


@user_errors
def compare(
    results: Results = None,
    metric: Metric = None,
    by: By = "task",
    baseline: Annotated[str | None, typer.Option(
        metavar="METHOD", help="Method to test the others against (default: ce when present).")
    ] = None,
    format_: Annotated[str, typer.Option("--format", metavar="FORMAT",
                                         help="table | md | csv | json")] = "table",
    rank_agreement: Annotated[list[Path] | None, typer.Option(
        metavar="RESULTS", help="Instead: Kendall's tau (bootstrap 95% CI over seeds) between "
        "the loss ranking of RESULTS (e.g. a cheap tier) and of these results, per setting.")
    ] = None,
) -> None:
    """Methods x tasks: mean ± std, n, 95% CI, paired test vs a baseline, ranks."""
    from lossbench.report import compare as compare_report
    from lossbench.report.load import load_runs, report_metrics

    if format_ not in FORMATS:
        raise UserError(f"unknown --format '{format_}'; accepted: {', '.join(FORMATS)}")
    paths = results or [DEFAULT_OUT]
    if rank_agreement:
        _print_agreement(load_runs(rank_agreement), load_runs(paths), metric,
                         split_multi([by]), format_)
        return
    metrics = report_metrics(paths, metric)
    result = compare_report.compare(load_runs(paths, set(metrics.values())), metrics,
                                    split_multi([by]), baseline)
    if format_ == "md":
        sys.stdout.write(compare_report.markdown(result))
    elif format_ == "csv":
        compare_report.long_table(result).to_csv(sys.stdout, index=False)
    elif format_ == "json":
        sys.stdout.write(compare_report.long_table(result).to_json(orient="records", indent=1)
                         + "\n")
    else:
        table = Table(Column("method", no_wrap=True),
                      *[Column(f"{s}\n{result.metrics[s]}", overflow="fold")
                        for s in result.settings], "avg rank",
                      title="compare", show_lines=True)
        for row in compare_report.grid(result):
            table.add_row(*row)
        console.print(table)
        for note in compare_report.notes(result):
            console.print(f"- {note}", highlight=False)


def _print_agreement(cheap: Any, full: Any, metric: str | None, by: list[str],
                     format_: str) -> None:
    import pandas as pd

    from lossbench.report.rank_agreement import BOOTSTRAP, rank_agreement

    rows = rank_agreement(cheap, full, metric, by)
    frame = pd.DataFrame([vars(r) for r in rows])
    if format_ == "csv":
        frame.to_csv(sys.stdout, index=False)
        return
    if format_ == "json":
        sys.stdout.write(frame.to_json(orient="records", indent=1) + "\n")
        return
    if format_ == "md":
        from tabulate import tabulate

        sys.stdout.write(tabulate(
            [[r.setting, r.methods, f"{r.tau:.2f}", f"[{r.low:.2f}, {r.high:.2f}]", r.best_a,
              r.best_b] for r in rows],
            ["setting", "methods", "Kendall τ", "95% CI", "best (--rank-agreement)",
             "best (these)"], tablefmt="github", disable_numparse=True) + "\n")
        return
    table = Table(Column("setting", overflow="fold"), "methods", "Kendall τ", "95% CI",
                  "best there", "best here", title="rank agreement",
                  caption=f"tau-b of the methods' mean ranks; CI: {BOOTSTRAP} bootstrap "
                          "resamples of each method's seeds")
    for r in rows:
        table.add_row(r.setting, str(r.methods), f"{r.tau:.2f}", f"[{r.low:.2f}, {r.high:.2f}]",
                      r.best_a, r.best_b)
    console.print(table)


@user_errors
def leaderboard(
    results: Results = None,
    metric: Metric = None,
    out: Annotated[Path, typer.Option(metavar="FILE", help="Markdown file to write; - for "
                                      "stdout.")] = Path("results/LEADERBOARD.md"),
) -> None:
    """Markdown leaderboard: one table per task family, best bold, † = not significantly worse."""
    from lossbench.report import leaderboard as leaderboard_report
    from lossbench.report.load import load_runs, report_metrics

    paths = results or [DEFAULT_OUT]
    runs = load_runs(paths, set(report_metrics(paths, metric).values()))
    if str(out) != "-":
        check_writable_file(out, "--out")
    text = leaderboard_report.leaderboard(runs, metric)
    if str(out) == "-":
        sys.stdout.write(text)
        return
    out.write_text(text)
    console.print(f"leaderboard: {out}", highlight=False)


@user_errors
def plot(
    results: Results = None,
    metric: Metric = None,
    by: By = "task",
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for the PNG files.")] = Path(
        "results/plots"),
) -> None:
    """PNGs: metric vs noise rate, learning curves, critical-difference diagram."""
    from lossbench.report import plots as plots_report
    from lossbench.report.load import load_curves, load_runs, report_metrics

    plots_report.require_plotting()
    paths = results or [DEFAULT_OUT]
    metrics = set(report_metrics(paths, metric).values())
    runs = load_runs(paths, metrics)
    curves = load_curves(paths, {c for m in metrics for c in plots_report.curve_metrics(m)})
    check_writable_dir(out, "--out")
    written, skipped = plots_report.make_plots(runs, curves, out, metric, split_multi([by]))
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    for note in skipped:
        console.print(note, highlight=False)


@user_errors
def gate(
    results: Results = None,
    baseline: Annotated[Path | None, typer.Option(metavar="CSV",
                                                  help="Baseline CSV to check against.")] = None,
    write_baseline: Annotated[Path | None, typer.Option(
        metavar="CSV", help="Write the results' summary as a baseline CSV instead of checking.")
    ] = None,
    tolerance: Annotated[float, typer.Option(metavar="POINTS",
                                             help="Smallest allowed drop, metric units.")] = 1.0,
    k: Annotated[float, typer.Option("--k", metavar="K", help="Allowed drop in seed stds (the "
                                     "larger of the baseline's and the new std).")] = 2.0,
    metric: Annotated[list[str] | None, typer.Option(
        metavar="NAME", help="Metric(s) to gate (default: all in the baseline; when writing: "
        "each family's primary).")] = None,
) -> None:
    """CI gate: exit 1 when a result is worse than its baseline by more than max(tol, k·std)."""
    from lossbench.report import gate as gate_report
    from lossbench.report.load import check_metrics, load_runs, report_metrics
    from lossbench.report.summary import mean_std

    paths = results or [DEFAULT_OUT]
    if write_baseline is not None:
        if baseline is not None:
            raise UserError("pass either --baseline (check) or --write-baseline (write), not both")
        if metric:
            check_metrics(paths, metric)
        runs = load_runs(paths, metric or set(report_metrics(paths, None).values()))
        check_writable_file(write_baseline, "--write-baseline")
        table = gate_report.summary_table(runs, metric or [])
        table.to_csv(write_baseline, index=False)
        console.print(f"baseline: {len(table)} entries -> {write_baseline}", highlight=False)
        return
    if baseline is None:
        raise UserError("pass --baseline PATH (or --write-baseline PATH to create one)")
    base = gate_report.read_baseline(baseline)
    runs = load_runs(paths, {*(metric or []), *base["metric"].astype(str)})
    result = gate_report.gate(base, runs, tolerance, k, metric or [])
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
        raise typer.Exit(EXIT_GATE_FAILED)
    console.print(f"gate passed: {len(result.rows)} entries within max(tolerance {tolerance:g}, "
                  f"{k:g} x std)", highlight=False)
