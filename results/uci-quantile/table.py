"""Writes quantiles.md from runs.parquet beside it: WIS, crossing and 90% coverage of the raw,
sorted, isotonic and conformal (CQR) quantiles of the pinball runs, mean ± std over the splits,
and how many runs sorting / isotonic made worse (Fakoor et al. prove: none)."""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
runs = pd.read_parquet(HERE / "runs.parquet")
runs = runs[runs["status"] == "ok"]
wide = runs.pivot_table(index=["task", "seed"], columns="metric", values="value")
COLUMNS = {
    "WIS raw": "test_wis_raw", "WIS sorted": "test_wis", "WIS isotonic": "test_wis_isotonic",
    "WIS CQR": "test_wis_conformal", "crossing % raw": "test_crossing_raw",
    "cover % raw": "test_coverage_raw", "cover % sorted": "test_coverage",
    "cover % CQR": "test_coverage_conformal", "width sorted": "test_width",
    "width CQR": "test_width_conformal",
}
stats = wide[list(COLUMNS.values())].groupby(level="task").agg(["mean", "std"])
rows = []
for task in stats.index:
    cells = [f"{stats.loc[task, (m, 'mean')]:.3g} ± {stats.loc[task, (m, 'std')]:.2g}"
             for m in COLUMNS.values()]
    n = int(wide.loc[task].shape[0])
    rows.append([task.removeprefix("uci-"), str(n), *cells])
table = pd.DataFrame(rows, columns=["set", "n", *COLUMNS])
worse_sorted = int((wide["test_wis"] > wide["test_wis_raw"] + 1e-12).sum())
worse_iso = int((wide["test_wis_isotonic"] > wide["test_wis_raw"] + 1e-12).sum())
text = (
    "# Quantile regression on UCI: post-processing and conformal calibration\n\n"
    "`pinball` (levels 0.05/0.5/0.95), quick budget (40 epochs), splits 0-4; test set, last "
    "epoch, original units. WIS: weighted interval score (lower is better). Cover: % of test "
    "targets inside the 0.05-0.95 interval (nominal 90). CQR is fitted on the validation part "
    "and applied to the sorted quantiles. Made by `python results/uci-quantile/table.py` from "
    "runs.parquet (commands in docs/REPRODUCTION.md).\n\n"
    + table.to_markdown(index=False)
    + f"\n\nRuns where post sorting raised WIS: {worse_sorted} of {len(wide)}; where isotonic "
    f"regression raised it: {worse_iso} of {len(wide)} (the paper proves neither can).\n"
)
(HERE / "quantiles.md").write_text(text)
print(text)
