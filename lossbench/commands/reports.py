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
from lossbench.errors import UserError, require

FORMATS = ("table", "md", "csv", "json")
Tuned = Annotated[bool, typer.Option(
    "--tuned", help="Only the runs tunings chose (`run --tune`), one method per loss.")]


def _runs(paths: list[Path], metrics: set[str] | None, tuned: bool) -> Any:
    """The runs table of ``paths`` (only ``metrics``), marked with their tuning role."""
    from lossbench.report.load import load_runs
    from lossbench.report.suite_table import mark_tuned, only_tuned

    runs = mark_tuned(load_runs(paths, metrics), paths)
    return only_tuned(runs) if tuned else runs
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
    tuned: Tuned = False,
    published: Annotated[Path | None, typer.Option(
        metavar="CSV", help="Also: published numbers (task,metric,method,mean,spread,"
        "spread_kind,n,source) beside ours, with the gap in standard errors.")] = None,
) -> None:
    """Methods x tasks: mean ± std, n, 95% CI, paired test vs a baseline, ranks."""
    from lossbench.report import compare as compare_report
    from lossbench.report.load import report_metrics

    if format_ not in FORMATS:
        raise UserError(f"unknown --format '{format_}'; accepted: {', '.join(FORMATS)}")
    paths = results or [DEFAULT_OUT]
    if rank_agreement:
        _print_agreement(_runs(rank_agreement, None, tuned), _runs(paths, None, tuned), metric,
                         split_multi([by]), format_)
        return
    metrics = report_metrics(paths, metric)
    result = compare_report.compare(_runs(paths, set(metrics.values()), tuned), metrics,
                                    split_multi([by]), baseline)
    if published is not None:
        _print_published(result, published, format_)
        return
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


def _print_published(result: Any, path: Path, format_: str) -> None:
    from lossbench.report.published import GAP_Z, read_published, side_by_side, wide_markdown

    rows = side_by_side(result, read_published(path))
    if format_ == "csv":
        rows.to_csv(sys.stdout, index=False)
    elif format_ == "json":
        sys.stdout.write(rows.to_json(orient="records", indent=1) + "\n")
    elif format_ == "md":
        sys.stdout.write(wide_markdown(rows))
    else:
        table = Table("setting", "method", "ours", "published", "z", "verdict",
                      title=f"published vs ours (|z| > {GAP_Z:g}: disagree)", show_lines=False)
        for row in rows.itertuples():
            table.add_row(row.setting, row.method, f"{row.mean:.4g} ± {row.se:.2g} ({row.n})",
                          f"{row.published_mean:g} ± {row.published_se:g} "
                          f"({row.published_method})", f"{row.z:+.1f}", row.verdict)
        console.print(table)


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
    out: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Markdown file to write; - for stdout (default: "
        "results/LEADERBOARD.md, or results/<suite>.md with --suite).")] = None,
    suite: Annotated[str | None, typer.Option(
        metavar="NAME", help="The suite's paper-style table: losses x its settings, average "
        "rank, and a critical-difference diagram beside the file (with the plots extra).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="With --suite: the overrides the runs were made with "
        "(a run matches a setting by its resolved task spec).")] = None,
    tuned: Tuned = False,
) -> None:
    """Markdown leaderboard: one table per task family, best bold, † = not significantly worse."""
    from lossbench.report import leaderboard as leaderboard_report
    from lossbench.report.load import report_metrics

    paths = results or [DEFAULT_OUT]
    require(suite is not None or not set_, "--set goes with --suite")
    target = out or Path("results") / (f"{suite}.md" if suite else "LEADERBOARD.md")
    if suite is not None:
        from lossbench.report.suite_table import suite_table
        from lossbench.suites import load_suite

        chosen = load_suite(suite)
        runs = _runs(paths, None, tuned)
        if str(target) != "-":
            check_writable_file(target, "--out")
        text, result = suite_table(runs, chosen, metric, set_ or [])
        _write_text(text, target)
        if str(target) != "-":
            _cd_diagram(result, f"{suite}: {next(iter(result.metrics.values()))}",
                        target.with_name(f"{target.stem}-cd.png"))
        return
    runs = _runs(paths, set(report_metrics(paths, metric).values()), tuned)
    if str(target) != "-":
        check_writable_file(target, "--out")
    _write_text(leaderboard_report.leaderboard(runs, metric), target)


def _write_text(text: str, target: Path) -> None:
    if str(target) == "-":
        sys.stdout.write(text)
        return
    target.write_text(text)
    console.print(f"leaderboard: {target}", highlight=False)


def _cd_diagram(result: Any, title: str, path: Path) -> None:
    """The critical-difference diagram of a suite's columns, when matplotlib is installed."""
    try:
        from lossbench.report import plots
    except ImportError:
        console.print("critical-difference diagram skipped: pip install 'lossbench[plots]'",
                      highlight=False)
        return
    try:
        plots.require_plotting()
    except UserError as err:
        console.print(f"critical-difference diagram skipped: {err}", highlight=False)
        return
    figure, note = plots.cd_figure(result, title)
    if figure is not None:
        figure.savefig(path, dpi=120, bbox_inches="tight")
        console.print(f"critical-difference diagram: {path}", highlight=False)
    console.print(note, highlight=False)


@user_errors
def plot(
    results: Results = None,
    metric: Metric = None,
    by: By = "task",
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for the PNG files.")] = Path(
        "results/plots"),
) -> None:
    """PNGs: metric vs noise rate, pass@N vs N, learning curves, critical-difference diagram."""
    from lossbench.report import plots as plots_report
    from lossbench.report.compare import metric_per_family
    from lossbench.report.load import load_catalogue, load_curves, load_runs

    plots_report.require_plotting()
    paths = results or [DEFAULT_OUT]
    catalogue = load_catalogue(paths)  # read once: the family metrics and the pass@N ones
    metrics = set(metric_per_family(catalogue, metric).values())
    passes = {m for m in catalogue["metric"].dropna() if plots_report.PASS_AT.fullmatch(m)}
    runs = load_runs(paths, metrics | passes)
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
