"""iSogCLR's learned temperatures by class frequency, from finished runs' records.

    python benchmarks/isogclr_tau_frequency.py RESULTS_DIR [--loss isogclr] [--state tau]

Every ``ok`` record of the loss (self-supervised retrieval mode) stores its per-example state
summarised by class after training (``info.example_state_by_class``: count, mean, quartiles;
labels are read only there, after training). Printed: one row per class (training count, and
the state's mean and median over the seeds' runs), then per run the Spearman rank correlation
between class count and the class's mean state. Qiu et al. (ICML 2023) claim that frequent
semantics get larger temperatures: a positive correlation on a long-tailed task.
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
    print(f"{'class':>5} {'count':>6} {'mean':>8} {'median':>8}   (over runs: mean of per-run "
          "values)")
    for k, c in enumerate(classes):
        print(f"{c:>5} {counts[k]:>6} {means[:, k].mean():>8.4f} {medians[:, k].mean():>8.4f}")
    rhos = [spearman(counts, list(row)) for row in means]
    print("Spearman(count, class mean): " + ", ".join(f"{r:+.3f}" for r in rhos)
          + f"; mean {np.mean(rhos):+.3f}")


if __name__ == "__main__":
    main()
