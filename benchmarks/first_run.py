"""First-run fixed cost: what a fresh process (a CLI call, each process-pool worker) pays before
its first run trains, compared with the same run repeated in that process.

Each sample is a fresh interpreter importing the lossbench of one checkout (this one, or
``--reference``, e.g. the main checkout as "before"): it times the engine import (torch
included), a first ``ce`` run of ``--task`` at ``--budget``, then the identical run again; the
first run's fixed cost is first - second. Checkouts alternate; the table shows medians and says
which heavy modules the runs pulled in. A second table times those modules' imports alone, each
in a fresh interpreter that has already imported torch. Run:

    cd benchmarks && python first_run.py [--reference /work/main] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
start = time.perf_counter()
import torch
torch.set_num_threads({threads})
from lossbench.engine.executors import run_one
from lossbench.engine.grid import expand
imported = time.perf_counter()
cfg = expand(["ce"], [{task!r}], [0], {budget!r})[0]
first_start = time.perf_counter()
first = run_one(cfg, "cpu")
second_start = time.perf_counter()
second = run_one(cfg, "cpu")
end = time.perf_counter()
assert first["metrics"] == second["metrics"], "the repeated run must give the same numbers"
print(json.dumps({{"import": imported - start, "first": second_start - first_start,
                  "second": end - second_start, "sklearn": "sklearn" in sys.modules,
                  "dynamo": "torch._dynamo" in sys.modules}}))
"""

MODULES = {
    "sklearn.datasets": "import sklearn.datasets",
    "torch._dynamo (first torch.optim.SGD)":
        "torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)",
}


def fresh(code: str, checkout: Path) -> str:
    env = os.environ | {"PYTHONPATH": str(checkout)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=checkout, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=None,
                        help="another checkout to measure as 'before' (e.g. /work/main)")
    parser.add_argument("--task", default="digits-noisy")
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    checkouts = {"this checkout": ROOT}
    if args.reference is not None:
        checkouts = {f"before ({args.reference})": args.reference} | checkouts
    code = CHILD.format(threads=args.threads, task=args.task, budget=args.budget)
    samples: dict[str, list[dict]] = {name: [] for name in checkouts}
    for _ in range(args.repeats):
        for name, checkout in checkouts.items():
            samples[name].append(json.loads(fresh(code, checkout)))

    table = Table(title=f"fresh process: ce · {args.task} · {args.budget} · {args.threads} "
                        f"thread(s), median of {args.repeats}")
    for column in ("checkout", "import s", "first run s", "second run s", "fixed cost s",
                   "imports sklearn", "imports dynamo"):
        table.add_column(column, justify="left" if column == "checkout" else "right")
    fixed = {}
    for name, runs in samples.items():
        fixed[name] = statistics.median(r["first"] - r["second"] for r in runs)
        table.add_row(name, *(f"{statistics.median(r[k] for r in runs):.2f}"
                              for k in ("import", "first", "second")),
                      f"{fixed[name]:.2f}", str(runs[0]["sklearn"]), str(runs[0]["dynamo"]))
    console = Console()
    console.print(table)
    if len(fixed) == 2:
        before, after = fixed.values()
        console.print(f"fixed cost after / before: {after / before:.2f}")

    parts = Table(title=f"import cost alone (fresh interpreter with torch imported), median of "
                        f"{args.repeats}")
    parts.add_column("module")
    parts.add_column("seconds", justify="right")
    for name, statement in MODULES.items():
        timer = ("import time, torch\nstart = time.perf_counter()\n"
                 f"{statement}\nprint(time.perf_counter() - start)")
        times = [float(fresh(timer, ROOT)) for _ in range(args.repeats)]
        parts.add_row(name, f"{statistics.median(times):.2f}")
    console.print(parts)


if __name__ == "__main__":
    main()
