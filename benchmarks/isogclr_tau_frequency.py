"""iSogCLR's learned temperatures by class frequency, from finished runs' records.

    python benchmarks/isogclr_tau_frequency.py RESULTS_DIR [--loss isogclr] [--state tau]
        [--baseline BALANCED_RESULTS_DIR]

Every ``ok`` record of the loss (self-supervised retrieval mode) stores its per-example state
summarised by class after training (``info.example_state_by_class``: count, mean, quartiles;
labels are read only there, after training). Printed: one row per class (training count, and
the state's mean and median over the seeds' runs), then per run the Spearman rank correlation
between class count and the class's mean state. Qiu et al. (ICML 2023) claim that frequent
semantics get larger temperatures: a positive correlation on a long-tailed task.

On a long-tailed task frequency is confounded with the classes themselves (class 0 is always
the head). ``--baseline`` names runs of the same loss on the balanced task: each class's mean
is then also shown divided by its balanced mean, and that ratio is rank-correlated with count.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def ranks(values: list[float]) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's coefficient needs."""
    array = np.asarray(values, dtype=float)
    order = array.argsort(kind="stable")
    out = np.empty(len(array))
    out[order] = np.arange(len(array), dtype=float)
    for value in np.unique(array):
        tied = array == value
        out[tied] = out[tied].mean()
    return out


def spearman(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def load(folder: Path, loss: str) -> list[dict[str, Any]]:
    records = [json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))]
    return [r for r in records if r["status"] == "ok" and r["config"]["loss"] == loss
            and r["info"].get("example_state_by_class")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--loss", default="isogclr")
    parser.add_argument("--state", default="tau", help="tau (iSogCLR) or u (the moving average)")
    parser.add_argument("--baseline", type=Path, help="runs of the balanced task")
    args = parser.parse_args()
    records = load(args.results, args.loss)
    if not records:
        raise SystemExit(f"no finished '{args.loss}' runs with per-example state in "
                         f"{args.results}")
    by_class = [r["info"]["example_state_by_class"] for r in records]
    classes, counts = by_class[0]["class"], by_class[0]["count"]
    means = np.array([s[args.state]["mean"] for s in by_class])
    medians = np.array([s[args.state]["median"] for s in by_class])
    print(f"{args.loss} {args.state}_i by class, {len(records)} run(s) of "
          f"{records[0]['config']['task']} (seeds {[r['config']['seed'] for r in records]})")
    base = None
    if args.baseline is not None:
        balanced = load(args.baseline, args.loss)
        if not balanced:
            raise SystemExit(f"no finished '{args.loss}' runs in {args.baseline}")
        base = np.array([r["info"]["example_state_by_class"][args.state]["mean"]
                         for r in balanced]).mean(axis=0)
        print(f"baseline: {len(balanced)} run(s) of {balanced[0]['config']['task']}")
    extra = f" {'balanced':>9} {'ratio':>7}" if base is not None else ""
    print(f"{'class':>5} {'count':>6} {'mean':>8} {'median':>8}{extra}   (over runs: mean of "
          "per-run values)")
    for k, c in enumerate(classes):
        row = f"{c:>5} {counts[k]:>6} {means[:, k].mean():>8.4f} {medians[:, k].mean():>8.4f}"
        if base is not None:
            row += f" {base[k]:>9.4f} {means[:, k].mean() / base[k]:>7.3f}"
        print(row)
    rhos = [spearman(counts, list(row)) for row in means]
    print("Spearman(count, class mean): " + ", ".join(f"{r:+.3f}" for r in rhos)
          + f"; mean {np.mean(rhos):+.3f}")
    if base is not None:
        ratio = [spearman(counts, list(row / base)) for row in means]
        print("Spearman(count, class mean / balanced mean): "
              + ", ".join(f"{r:+.3f}" for r in ratio) + f"; mean {np.mean(ratio):+.3f}")


if __name__ == "__main__":
    main()
