"""Per-epoch scoring cost of a classification run: time outside the training passes, per epoch,
as a share of the training pass.

Each measurement is a fresh interpreter that imports the lossbench of one checkout (this one,
or ``--reference``, e.g. the main checkout as "before"), warms up (source cache, imports) with a
one-epoch run, then runs ``--task`` at ``--budget`` for one seed with ``Trainer.epoch`` (the
training pass) and ``Trainer.predict`` (forward passes on the validation and test sets) timed.
Everything outside the training passes -- forward passes, metrics, and the run's small fixed
setup -- is reported per epoch, and as a share of the training pass (median of the per-repeat
shares). Checkouts and configurations alternate, and
the table shows medians. A second table times the ECE itself: the per-bin loop lossbench used
before against the bucketize + bincount form, in this process. Run:

    cd benchmarks && python eval_share.py [--reference /work/main] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from timing import interleaved

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import torch
torch.set_num_threads({threads})
from lossbench.engine import train
from lossbench.engine.executors import run_one
from lossbench.engine.grid import expand

spent = {{"epoch": 0.0, "predict": 0.0}}

def timed(name):
    method = getattr(train.Trainer, name)
    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
    setattr(train.Trainer, name, wrapper)

timed("epoch")
timed("predict")
sets = {sets!r}
run_one(expand(["ce"], [{task!r}], [0], "smoke", ["train.epochs=1", *sets])[0], "cpu")
cfg = expand(["ce"], [{task!r}], [0], {budget!r}, sets + {epochs!r})[0]
spent |= {{"epoch": 0.0, "predict": 0.0}}
start = time.perf_counter()
record = run_one(cfg, "cpu")
total = time.perf_counter() - start
epochs = cfg.spec["train"]["epochs"]
print(json.dumps({{"epochs": epochs, "train": spent["epoch"] / epochs,
                  "outside": (total - spent["epoch"]) / epochs,
                  "forward": spent["predict"] / epochs, "status": record["status"],
                  "test_top1": record["metrics"].get("test_top1")}}))
"""


def measure(checkout: Path, task: str, budget: str, sets: list[str], epochs: int | None,
            threads: int) -> dict:
    code = CHILD.format(threads=threads, task=task, budget=budget, sets=sets,
                        epochs=[f"train.epochs={epochs}"] if epochs else [])
    env = os.environ | {"PYTHONPATH": str(checkout)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=checkout, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ece_loop(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """The per-bin loop ``expected_calibration_error`` used before it was vectorised."""
    conf, pred = probs.max(dim=1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return 100.0 * ece.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=None,
                        help="another checkout to measure as 'before' (e.g. /work/main)")
    parser.add_argument("--task", default="digits-noisy")
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    cases: list[tuple[str, Path, list[str]]] = []
    if args.reference is not None:
        cases.append(("before (--reference)", args.reference, []))
    cases += [
        ("defaults", ROOT, []),
        ("eval.test_curves=true", ROOT, ["eval.test_curves=true"]),
        ("eval.every=5", ROOT, ["eval.every=5"]),
    ]
    runs: dict[str, list[dict]] = {name: [] for name, *_ in cases}
    for _ in range(args.repeats):
        for name, checkout, sets in cases:
            runs[name].append(measure(checkout, args.task, args.budget, sets, args.epochs,
                                      args.threads))

    table = Table(title=f"{args.task} · {args.budget} ({runs[cases[0][0]][0]['epochs']} epochs) · "
                        f"{args.threads} thread(s) · median of {args.repeats}: per-epoch time "
                        "outside the training pass")
    for column in ("case", "train ms/epoch", "outside ms/epoch", "share of train",
                   "of which forward passes", "test_top1"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for name, results in runs.items():
        train, outside, forward = (statistics.median(r[k] / r["train"] if k != "train" else r[k]
                                                     for r in results)
                                   for k in ("train", "outside", "forward"))
        table.add_row(name, f"{1000 * train:.2f}",
                      f"{1000 * statistics.median(r['outside'] for r in results):.2f}",
                      f"{100 * outside:.1f}%", f"{100 * forward:.1f}%",
                      f"{results[0]['test_top1']:.4f}")
    console = Console()
    console.print(table)

    from lossbench.metrics import expected_calibration_error

    torch.set_num_threads(args.threads)
    ece = Table(title="ECE (15 bins), fastest of 200 alternated calls")
    for column in ("n", "K", "per-bin loop µs", "bincount µs", "ratio", "|difference|"):
        ece.add_column(column, justify="right")
    cpu = torch.device("cpu")
    for n, k in ((201, 10), (450, 10), (10_000, 100)):
        g = torch.Generator().manual_seed(n)
        probs = (torch.randn(n, k, generator=g) * 3).softmax(dim=1)
        y = torch.randint(0, k, (n,), generator=g)
        loop, vec = interleaved(lambda p=probs, y=y: ece_loop(p, y),
                                lambda p=probs, y=y: expected_calibration_error(p, y), cpu,
                                repeats=200, stat=min)
        diff = abs(ece_loop(probs, y) - expected_calibration_error(probs, y))
        ece.add_row(str(n), str(k), f"{1e6 * loop:.0f}", f"{1e6 * vec:.0f}",
                    f"{loop / vec:.1f}", f"{diff:.1e}")
    console.print(ece)


if __name__ == "__main__":
    main()
