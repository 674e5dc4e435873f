"""PNG figures from the runs table: metric vs noise rate, learning curves, critical differences.

matplotlib (and scipy, for the Friedman/Nemenyi statistics) come with the ``plots`` extra; they
are imported only when a figure is drawn so that the rest of lossbench works without them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lossbench.errors import UserError
from lossbench.report.compare import Comparison, assign_settings, compare, metric_per_family
from lossbench.report.stats import friedman, higher_is_better, nemenyi_cd, rank_scores

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ALPHA = 0.05
DPI = 150


def require_plotting() -> None:
    """One-line error when the optional plotting dependencies are missing."""
    try:
        import matplotlib  # noqa: F401
        import scipy.stats  # noqa: F401
    except ImportError as err:
        raise UserError(f"plots need matplotlib and scipy ({err.name} is missing): "
                        "pip install 'lossbench[plots]'") from None


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _colours(methods: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per method, the same in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(sorted(methods))}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=@+-]+", "_", text).strip("_")


def _mean_std_panel(ax: Any, group: pd.DataFrame, x: str,
                    colours: dict[str, tuple[float, ...]]) -> str:
    """One line per method of ``value`` vs column ``x`` (mean ± std over seeds); returns the
    panel's seed count for its title (``n=3`` or ``n=2–3``)."""
    stats = group.groupby(["method", x])["value"].agg(["mean", "std", "count"])
    for method, curve in stats.groupby(level="method"):
        ax.errorbar(curve.index.get_level_values(x), curve["mean"],
                    yerr=curve["std"].fillna(0.0), marker="o", capsize=3, label=method,
                    color=colours[method])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    n = int(stats["count"].min()), int(stats["count"].max())
    return f"n={n[0]}" if n[0] == n[1] else f"n={n[0]}–{n[1]}"


def noise_figure(runs: pd.DataFrame, metrics: dict[str, str]) -> Figure | None:
    """Metric vs requested noise rate, one panel per (task, noise kind) with >= 2 noise rates."""
    ok = runs[(runs["status"] == "ok") & (runs["metric"] == runs["family"].map(metrics))]
    sweeps = [(key, g) for key, g in ok.groupby(["task", "noise_kind"])
              if g["noise_rate"].nunique() >= 2]
    if not sweeps:
        return None
    colours = _colours(list(runs["method"].unique()))
    fig = _figure(5.0 * len(sweeps), 4.0)
    for ax, ((task, kind), group) in zip(np.atleast_1d(fig.subplots(1, len(sweeps))), sweeps,
                                         strict=True):
        seeds = _mean_std_panel(ax, group, "noise_rate", colours)
        metric = group["metric"].iloc[0]
        ax.set(title=f"{task}: {metric} vs {kind} noise\n(mean ± std over seeds, {seeds})",
               xlabel=f"requested {kind} noise rate", ylabel=metric)
    return fig


PASS_AT = re.compile(r"test_pass@(\d+)")
"""Last-epoch exact pass@N metrics (classification and lm families)."""


def pass_at_figure(runs: pd.DataFrame) -> Figure | None:
    """pass@N vs N (log scale), one panel per task with >= 2 values of N, a line per method:
    how coverage grows with the sampling budget (the DCO paper's figure)."""
    rows = runs[(runs["status"] == "ok") & runs["metric"].str.fullmatch(PASS_AT.pattern)]
    rows = rows.assign(n=rows["metric"].str.extract(PASS_AT.pattern, expand=False).astype(int))
    tasks = [(task, g) for task, g in rows.groupby("task") if g["n"].nunique() >= 2]
    if not tasks:
        return None
    colours = _colours(list(rows["method"].unique()))
    fig = _figure(5.0 * len(tasks), 4.0)
    for ax, (task, group) in zip(np.atleast_1d(fig.subplots(1, len(tasks))), tasks,
                                 strict=True):
        seeds = _mean_std_panel(ax, group, "n", colours)
        ax.set_xscale("log", base=2)
        ax.set(title=f"{task}: exact pass@N, last epoch\n(mean ± std over seeds, {seeds})",
               xlabel="N (samples from the softmax)", ylabel="pass@N (%)")
    return fig


def curve_metrics(metric: str) -> list[str]:
    """The curves drawn for ``metric``: train_loss, its validation twin and itself."""
    return list(dict.fromkeys(["train_loss", re.sub(r"^test_", "val_", metric), metric]))


def curve_panels(metric: str, available: set[str]) -> list[str]:
    """``curve_metrics(metric)`` where recorded."""
    return [m for m in curve_metrics(metric) if m in available]


def curve_figures(runs: pd.DataFrame, curves: pd.DataFrame,
                  metrics: dict[str, str]) -> dict[str, Figure]:
    """Per setting: learning curves of each method, mean over seeds with a ± std band."""
    one = runs.drop_duplicates("run_key")
    one = one[one["status"] == "ok"][["run_key", "setting", "method", "family"]]
    joined = curves.drop(columns=["task", "loss", "loss_params"]).merge(one, on="run_key")
    colours = _colours(list(runs["method"].unique()))
    figures = {}
    for setting, group in joined.groupby("setting", observed=True):
        panels = curve_panels(metrics[group["family"].iloc[0]], set(group["metric"]))
        if not panels:
            continue
        fig = _figure(4.5 * len(panels), 3.6)
        for ax, name in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels, strict=True):
            data = group[group["metric"] == name]
            for method, per_method in data.groupby("method"):
                stats = per_method.groupby("epoch")["value"].agg(["mean", "std", "count"])
                ax.plot(stats.index, stats["mean"], label=f"{method} (n={stats['count'].max()})",
                        color=colours[method])
                ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0.0),
                                stats["mean"] + stats["std"].fillna(0.0), alpha=0.15,
                                color=colours[method], linewidth=0)
            title = f"{name} (each loss's own objective)" if name == "train_loss" else name
            ax.set(title=title, xlabel="epoch", ylabel=name)
            ax.grid(alpha=0.3)
        np.atleast_1d(fig.axes)[0].legend(fontsize="small")
        fig.suptitle(f"{setting}: learning curves (mean ± std over seeds)")
        figures[str(setting)] = fig
    return figures


def rank_matrix(result: Comparison) -> tuple[pd.DataFrame, list[str]]:
    """Settings x methods ranks over the complete blocks, and the methods left out.

    Friedman needs every method in every block: methods missing (or only crashed) in some
    setting are dropped first, then ranks are recomputed among the rest; a method whose runs all
    diverged in a setting takes the last place there.
    """
    cells = result.cells
    present = cells[(cells["n_ok"] > 0) | (cells["n_diverged"] > 0)]
    counts = present.groupby("method")["setting"].nunique()
    keep = sorted(counts.index[counts == len(result.settings)])
    dropped = sorted(set(cells["method"]) - set(keep))
    blocks = {}
    for setting in result.settings:
        block = present[(present["setting"] == setting) & present["method"].isin(keep)]
        higher = higher_is_better(result.metrics[setting])
        worst = -np.inf if higher else np.inf
        scores = block.set_index("method")["mean"].reindex(keep).fillna(worst)
        blocks[setting] = rank_scores(scores.to_numpy(), higher)
    return pd.DataFrame.from_dict(blocks, orient="index", columns=keep), dropped


def _cliques(names: list[str], ranks: np.ndarray, cd: float) -> list[tuple[int, int]]:
    """Maximal runs of rank-sorted methods whose rank range is below the critical difference."""
    spans = []
    for i in range(len(names)):
        j = i
        while j + 1 < len(names) and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in spans):
            spans.append((i, j))
    return spans


def cd_figure(result: Comparison, title: str, alpha: float = ALPHA) -> tuple[Figure | None, str]:
    """Demšar's (2006) critical-difference diagram: average ranks, Nemenyi CD, cliques.

    Blocks are the comparison's settings (tasks, or task x noise rate in a sweep). Returns the
    figure (None when fewer than 2 settings or methods remain) and a one-line description.
    """
    ranks, dropped = rank_matrix(result)
    n, k = ranks.shape
    if n < 2 or k < 2:
        return None, (f"critical-difference diagram skipped: needs >= 2 settings and >= 2 methods "
                      f"run on all of them, have {n} and {k}")
    chi2, f_f, p = friedman(ranks.to_numpy())
    cd = nemenyi_cd(k, n, alpha)
    avg = ranks.mean(axis=0).sort_values(kind="stable")
    names, values = list(avg.index), avg.to_numpy()

    cliques = _cliques(names, values, cd)
    rows = (k + 1) // 2
    top = 0.45 + 0.18 * len(cliques)  # label rows start below the clique bars
    fig = _figure(7.0, 1.4 + 0.3 * (rows + top))
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(0.4, k + 0.6)
    ax.set_ylim(-(top + 0.6 * rows), 1.6)
    ax.hlines(0, 1, k, color="black", linewidth=1)
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.12, color="black", linewidth=1)
        ax.text(r, 0.22, str(r), ha="center", va="bottom", fontsize=9)
    ax.hlines(1.05, 1, 1 + cd, color="black", linewidth=1.5)
    ax.vlines([1, 1 + cd], 0.95, 1.15, color="black", linewidth=1.5)
    ax.text(1 + cd / 2, 1.2, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    for i, (name, rank) in enumerate(zip(names, values, strict=True)):
        on_left = i < rows
        level = -(top + 0.6 * (i if on_left else k - 1 - i))
        end = 0.4 if on_left else k + 0.6
        ax.plot([rank, rank, end], [0, level, level], color="black", linewidth=0.8)
        ax.text(end + (-0.05 if on_left else 0.05), level, f"{name} ({rank:.2f})",
                ha="right" if on_left else "left", va="center", fontsize=9)
    for depth, (i, j) in enumerate(cliques):
        y = -0.25 - 0.18 * depth
        ax.hlines(y, values[i] - 0.03, values[j] + 0.03, color="black", linewidth=3)
    verdict = "reject" if p < alpha else "cannot reject"
    test = (f"Friedman chi2={chi2:.2f}, Iman-Davenport F={f_f:.2f}, p={p:.3g}: {verdict} equal "
            f"ranks at alpha={alpha}")
    size = f"Nemenyi CD={cd:.2f} over N={n} settings, k={k} methods; bars join methods within CD"
    left_out = f"\nleft out (not run on every setting): {', '.join(dropped)}" if dropped else ""
    fig.suptitle(f"{title}\n{test}\n{size}{left_out}", fontsize=9)
    return fig, f"{test}; {size}"


def make_plots(runs: pd.DataFrame, curves: pd.DataFrame, out: Path, metric: str | None = None,
               by: Sequence[str] = ("task",)) -> tuple[list[Path], list[str]]:
    """Draw every figure the results allow into ``out``: (files written, what was skipped)."""
    require_plotting()
    metrics = metric_per_family(runs, metric)
    runs = runs[runs["family"].isin(metrics)]
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    notes: list[str] = []

    def save(fig: Figure, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        written.append(path)

    noise = noise_figure(runs, metrics)
    if noise is None:
        notes.append("noise plot skipped: no task was run at >= 2 noise rates "
                     "(sweep with --set noise.rate=...)")
    else:
        save(noise, "noise.png")
    coverage = pass_at_figure(runs)
    if coverage is not None:
        save(coverage, "pass_at_n.png")
    settings = assign_settings(runs, by)
    figures = curve_figures(settings, curves, metrics) if len(curves) else {}
    if not figures:
        notes.append("learning curves skipped: no curves.parquet with per-epoch values")
    for setting, fig in figures.items():
        save(fig, f"curves_{_slug(setting)}.png")
    for family, family_metric in sorted(metrics.items()):
        title = f"{family}: average ranks by {family_metric} (1 = best)"
        result = compare(runs[runs["family"] == family], {family: family_metric}, by)
        fig, info = cd_figure(result, title)
        notes.append(f"{family}: {info}")
        if fig is not None:
            save(fig, f"cd_{_slug(family)}.png")
    return written, notes
