"""Runs per hour for a grid: one worker vs several, packed vs one by one.

Default grid: every logits loss x 3 seeds on digits-noisy at the quick budget (``--epochs``
shortens it; the table says so). Each configuration runs the whole grid into a fresh folder.

    python benchmarks/grid_throughput.py [--epochs 150] [--seeds 0,1,2] [--configs 1x1,2x1,1x8]
        [--device cpu|cuda]   (on a GPU: --configs 1x1,1x4,1x16,1xauto)
        [--task letter-noisy --budget paper --seeds 0 --tune-points --loss ce --loss ldr ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from rich.console import Console
from rich.table import Table

from lossbench.engine.executors import run_local
from lossbench.engine.grid import expand, parse_seeds
from lossbench.engine.store import Store
from lossbench.tuning import tuned_specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits-noisy")
    parser.add_argument("--loss", action="append", default=None,
                        help="loss spec (repeat; default: all); --tune-points expands spaces")
    parser.add_argument("--tune-points", action="store_true",
                        help="every point of each loss's declared search space (as --tune)")
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--epochs", type=int, default=0, help="override train.epochs (0: keep)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", default="1x1,2x1,1x8,2x8",
                        help="comma list of WORKERSxPACK (PACK may be auto)")
    args = parser.parse_args()
    overrides = [f"train.epochs={args.epochs}"] if args.epochs else []
    losses = args.loss or ["all"]
    if args.tune_points:
        losses = tuned_specs(losses, [], None)
    configs = expand(losses, [args.task], parse_seeds(args.seeds), args.budget, overrides)
    epochs = configs[0].spec["train"]["epochs"]
    table = Table("workers", "pack", "runs", "wall s", "runs/hour", "vs 1x1",
                  title=f"{args.task} {args.budget} ({epochs} epochs), {len(losses)} losses, "
                        f"seeds {args.seeds}, {args.device}")
    base = None
    for item in args.configs.split(","):
        workers_text, pack = item.split("x")
        workers = int(workers_text)
        with tempfile.TemporaryDirectory() as out:
            store = Store(out)
            start = time.perf_counter()
            for record in run_local(configs, args.device, workers=workers, pack=pack):
                store.write(record)
            wall = time.perf_counter() - start
            ok = sum(r["status"] == "ok" for r in store.records())
        rate = 3600 * len(configs) / wall
        base = base or rate
        table.add_row(str(workers), pack, f"{len(configs)} ({ok} ok)", f"{wall:.1f}",
                      f"{rate:.0f}", f"{rate / base:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
