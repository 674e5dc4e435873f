"""Writes reducers.md from runs.parquet beside it: test top-1 (last epoch and @best_val) of each
loss under each reducer, mean ± std over seeds, and each reducer's ranking of the losses."""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
runs = pd.read_parquet(HERE / "runs.parquet")
runs = runs[runs["status"] == "ok"]
params = runs["loss_params"].fillna("")
runs = runs.assign(reducer=params.str.extract(r"reduce=([^,]+)", expand=False).fillna("mean")
                   + params.str.extract(r"reduce\.strategy=([^,]+)", expand=False)
                   .map(lambda s: f" ({s})", na_action="ignore").fillna(""))
REDUCERS = ["mean", "small-loss", "loss-weight (linupper)", "loss-weight (quadratic)"]


def table(metric: str) -> str:
    rows = runs[runs["metric"] == metric]
    stats = rows.groupby(["loss", "reducer"])["value"].agg(["mean", "std", "count"])
    lines = []
    for loss in sorted(rows["loss"].unique()):
        cells = [f"{stats.loc[(loss, r), 'mean']:.2f} ± {stats.loc[(loss, r), 'std']:.2f}"
                 f" ({int(stats.loc[(loss, r), 'count'])})" for r in REDUCERS]
        lines.append([loss, *cells])
    ranking = [" > ".join(stats.xs(r, level="reducer")["mean"].sort_values(ascending=False).index)
               for r in REDUCERS]
    lines.append(["ranking", *ranking])
    return pd.DataFrame(lines, columns=["loss", *REDUCERS]).to_markdown(index=False)


text = (
    "# Reducers on a noisy-label task: does reweighting change CE vs the robust losses?\n\n"
    "digits-noisy (scikit-learn digits, 40% symmetric label noise on the training and validation "
    "labels, clean test labels), quick budget (150 epochs), seeds 0-2, untuned losses at their "
    "defaults. Reducers: `small-loss` rate 0.4 (the noise rate), warm-up 10 epochs; "
    "`loss-weight` delta 1, r 1. Cells: test top-1 %, mean ± std (n). Made by "
    "`python results/reducers-digits-noisy/table.py` from runs.parquet (commands in "
    "docs/REPRODUCTION.md).\n\n"
    "## Last epoch (test_top1)\n\n" + table("test_top1")
    + "\n\n## Best validation epoch (test_top1@best_val)\n\n" + table("test_top1@best_val") + "\n"
)
(HERE / "reducers.md").write_text(text)
print(text)
