"""Writes dco.md from runs.parquet beside it: top-1, exact pass@N, ECE and NLL of CE and DCO at
N = 4, 16, 64 (last epoch and @best_val), mean ± std over seeds."""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
runs = pd.read_parquet(HERE / "runs.parquet")
runs = runs[runs["status"] == "ok"]
params = runs["loss_params"].fillna("")
runs = runs.assign(method=runs["loss"] + params.map(lambda p: f":{p}" if p else ""))
ORDER = ["ce", "dco:n=4", "dco:n=16", "dco:n=64"]
METRICS = {"top-1": "test_top1", "pass@1": "test_pass@1", "pass@4": "test_pass@4",
           "pass@16": "test_pass@16", "pass@64": "test_pass@64", "ECE": "test_ece",
           "NLL": "test_nll"}


def table(suffix: str) -> str:
    names = {label: metric + suffix for label, metric in METRICS.items()
             if metric + suffix in set(runs["metric"])}
    rows = runs[runs["metric"].isin(names.values())]
    stats = rows.groupby(["method", "metric"])["value"].agg(["mean", "std", "count"])
    lines = []
    for method in ORDER:
        cells = [f"{stats.loc[(method, m), 'mean']:.2f} ± {stats.loc[(method, m), 'std']:.2f}"
                 for m in names.values()]
        lines.append([method, str(int(stats.loc[method]["count"].min())), *cells])
    return pd.DataFrame(lines, columns=["loss", "n", *names]).to_markdown(index=False)


text = (
    "# Limiting confidence for pass@N: CE vs DCO on Fashion-MNIST\n\n"
    "Chen et al. (2025): training with CE makes a model over-confident, which hurts pass@N for "
    "large N; Direct Coverage Optimization (`dco:n=N`, loss -log(1-(1-p_y)^N)) trains for "
    "coverage at N. Task `fashion-mnist-noisy` with `--set noise.rate=0.0` (clean labels), "
    "quick budget (strided CNN, 15 epochs, 54,000 training images), seeds 0-2. pass@N is exact: "
    "mean over test images of 1-(1-p_y)^N with p the softmax (N labels sampled from the model). "
    "Made by `python results/dco-fashion-mnist/table.py` from runs.parquet (commands in "
    "docs/REPRODUCTION.md); `lossbench plot` draws pass_at_n.png.\n\n"
    "## Last epoch\n\n" + table("") + "\n\n## Best validation epoch (NLL is recorded for the last epoch only)\n\n"
    + table("@best_val") + "\n"
)
(HERE / "dco.md").write_text(text)
print(text)
