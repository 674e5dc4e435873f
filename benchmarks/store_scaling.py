"""What a no-op resume and a ``compare`` cost as the results folder grows.

Synthetic records shaped like a quick digits classification record (28 final metrics, 13 curves
x 150 epochs, a noise report; 2% diverged) and keyed like the real grid ``--loss all --task``
(the 18 classification tasks) ``--seeds 0-S`` (S from --records: 378 runs a seed), so ``lossbench
run`` finds every run finished and ``compare`` has a paper-like table (21 losses x 18 tasks).
Each code version (``--code NAME=PATH``, a lossbench checkout; default ``after`` = this one) runs
as a fresh ``python -m lossbench.cli`` process, as a user would, on its own hard-linked copy of
the records; the versions alternate. Time: median (min-max) of --repeats; memory: the process's
peak RSS. ``store only`` rows time the store calls alone, in-process (no imports, no grid), and
``imports only`` is the floor both commands pay before touching the store (torch, pandas, the
registries), so a loaded machine's share can be told apart.

    python benchmarks/store_scaling.py --records 1000,10000 --code before=/tmp/lb-main \\
        --code after=. [--before-max 3000] [--repeats 3] [--dir /tmp/lossbench-store-bench]

Records are written under --dir (about 45 KB each: 100,000 records are 4.5 GB) and removed at
the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from lossbench.engine.grid import RunConfig, expand

METRICS = [
    "best_epoch", "best_val_bacc", "best_val_bacc_epoch", "best_val_top1", "test_ada_ece",
    "test_auroc", "test_auroc@best_val", "test_auroc@best_val_bacc", "test_bacc",
    "test_bacc@best_val", "test_bacc@best_val_bacc", "test_brier", "test_ece",
    "test_ece@best_val", "test_ece@best_val_bacc", "test_macro_f1", "test_macro_f1@best_val",
    "test_macro_f1@best_val_bacc", "test_nll", "test_top1", "test_top1@best_val",
    "test_top1@best_val_bacc", "test_top5", "test_top5@best_val", "test_top5@best_val_bacc",
    "train_loss", "val_bacc", "val_top1",
]
CURVES = ["test_ada_ece", "test_auroc", "test_bacc", "test_brier", "test_ece", "test_f1",
          "test_macro_f1", "test_nll", "test_top1", "test_top5", "train_loss", "val_bacc",
          "val_top1"]
EPOCHS = 150
TASKS = ["breast-cancer", "cifar10", "cifar10-binary", "cifar10-lt", "cifar10-noisy", "cifar100",
         "cifar100-lt", "cifar100-noisy", "cifar100n", "cifar10n-aggregate", "cifar10n-random1",
         "cifar10n-random2", "cifar10n-random3", "cifar10n-worst", "digits", "digits-binary",
         "digits-lt", "digits-noisy"]
IMPORTS = "import lossbench.engine.executors, lossbench.report.compare, pandas, pyarrow.parquet"
STORE_ONLY = """
import json, sys, time
from pathlib import Path
import lossbench.report.compare
from lossbench.engine.store import Store
from lossbench.report.load import load_runs, report_metrics
out = Path(sys.argv[1])
t, c = time.perf_counter(), time.process_time()
Store(out).finished()
a = [time.perf_counter() - t, time.process_time() - c]
t, c = time.perf_counter(), time.process_time()
m = report_metrics([out], None)
load_runs([out], set(m.values()))
print(json.dumps([a, [time.perf_counter() - t, time.process_time() - c]]))
"""


def grid(seeds: range) -> list[RunConfig]:
    return expand(["all"], TASKS, list(seeds), "quick")


def seeds_for(n_records: int) -> int:
    """As many seeds as make at least ``n_records`` runs."""
    return math.ceil(n_records / len(grid(range(1))))


def write_records(folder: Path, configs: list[RunConfig], seed: int = 0) -> None:
    """One JSON file per config, as ``Store.write`` lays it out (indent 1, sorted keys)."""
    rng = np.random.default_rng(seed)
    curves = [json.dumps({c: (rng.random(EPOCHS) * 100).tolist() for c in CURVES}, indent=1,
                         sort_keys=True) for _ in range(32)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, cfg in enumerate(configs):
        ok = i % 50 != 7
        transition = (rng.dirichlet(np.ones(10), 10).round(6)).tolist()
        rec = {
            "run_key": cfg.key, "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
            "status": "ok" if ok else "diverged",
            "metrics": {m: float(rng.random() * 100) for m in METRICS} if ok else {},
            "curves": "@CURVES@" if ok else {},
            "info": {"noise": {"kind": "symmetric", "labels_hash": f"{i:016x}",
                               "params": {"include_true": False, "rate": 0.4},
                               "realised_rate": 0.4 + rng.random() * 0.01,
                               "requested_rate": 0.4, "seed": cfg.seed,
                               "transition": transition},
                     "num_train": 1146, "class_counts": [115] * 10} if ok else {},
            "device": "cpu:x86_64", "git_commit": "benchmark", "torch_threads": 1,
            "versions": {"lossbench": "0.1.0", "numpy": "2.4.6", "python": "3.11.7",
                         "torch": "2.13.0+cpu"},
            "started_at": "2026-11-29T00:00:00+00:00", "finished_at": "2026-11-29T00:00:12+00:00",
            "wall_s": 11.8,
        }
        if not ok:
            rec["reason"] = "non-finite loss at epoch 3"
        text = json.dumps(rec, indent=1, sort_keys=True, default=str)
        (folder / f"{cfg.key}.json").write_text(text.replace('"@CURVES@"', curves[i % 32]))


def linked_copy(records: Path, out: Path) -> None:
    """``out/records`` as hard links to ``records`` (same files, no copy)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "records").mkdir(parents=True)
    for entry in os.scandir(records):
        os.link(entry.path, out / "records" / entry.name)


def timed(cmd: list[str], code: Path) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS MB, stdout) of one fresh process. CPU time (user +
    system) is what a busy machine does not inflate: wall time waits for the CPU too."""
    env = os.environ | {"PYTHONPATH": str(code), "LOSSBENCH_WORKERS": "1", "COLUMNS": "200"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd="/tmp", stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0,):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="1000,10000")
    parser.add_argument("--code", action="append", default=[],
                        help="NAME=PATH of a lossbench checkout (repeat); default after=.")
    parser.add_argument("--before-max", type=int, default=3000,
                        help="largest record count for codes other than the last (the old "
                             "store's memory grows with the folder)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lossbench-store-bench"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    codes = dict(c.split("=", 1) for c in args.code) or {"after": "."}
    codes = {name: Path(path).resolve() for name, path in codes.items()}
    newest = list(codes)[-1]
    console = Console()
    table = Table("records", "operation", "code", "wall s (median, min–max)", "CPU s",
                  "peak MB",
                  title=f"store cost, --loss all x {len(TASKS)} tasks, synthetic quick records "
                        f"({len(METRICS)} metrics, {len(CURVES)} curves x {EPOCHS} epochs)")
    py = sys.executable
    try:
        for n in (int(x) for x in args.records.split(",")):
            seeds = seeds_for(n)
            configs = grid(range(seeds))
            source = args.dir / f"records-{n}"
            if not source.is_dir() or sum(1 for _ in os.scandir(source)) != len(configs):
                start = time.perf_counter()
                write_records(source, configs)
                console.print(f"wrote {len(configs)} records in {time.perf_counter() - start:.0f}"
                              " s", highlight=False)
            run = [py, "-m", "lossbench.cli", "run", "--loss", "all", "--task", ",".join(TASKS),
                   "--budget", "quick", "--device", "cpu", "--seeds", f"0-{seeds - 1}"]
            active = {name: path for name, path in codes.items()
                      if name == newest or n <= args.before_max}
            outs = {name: args.dir / f"{n}-{name}" for name in active}
            for name, out in outs.items():
                linked_copy(source, out)
                if name == newest:  # the first read of a records-only folder builds the tables
                    s, cpu, mb, _ = timed([py, "-m", "lossbench.cli", "tables", str(out)],
                                          active[name])
                    table.add_row(f"{len(configs):,}", "first read: tables from all records",
                                  name, f"{s:.2f}", f"{cpu:.2f}", f"{mb:.0f}")
            samples: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
            for _ in range(args.repeats):
                for op, extra in (("no-op resume", run[3:]), ("compare", ["compare"])):
                    for name, code in active.items():
                        cmd = ([py, "-m", "lossbench.cli", *extra, "--out", str(outs[name])]
                               if op != "compare" else [py, "-m", "lossbench.cli", "compare",
                                                        str(outs[name])])
                        s, cpu, mb, text = timed(cmd, code)
                        if op == "no-op resume":
                            assert f"{len(configs)} already finished" in text, text[-2000:]
                        samples.setdefault((op, name), []).append((s, cpu, mb))
                for name, code in active.items():
                    samples.setdefault(("imports only", name), []).append(timed(
                        [py, "-c", IMPORTS], code)[:3])
                if newest in active:
                    text = timed([py, "-c", STORE_ONLY, str(outs[newest])], active[newest])[-1]
                    finished, compare_load = json.loads(text.strip().splitlines()[-1])
                    samples.setdefault(("store only: finished()", newest), []).append(
                        (finished[0], finished[1], math.nan))
                    samples.setdefault(("store only: compare's load", newest), []).append(
                        (compare_load[0], compare_load[1], math.nan))
            for (op, name), values in samples.items():
                times = [s for s, _, _ in values]
                peak = max(mb for _, _, mb in values)
                table.add_row(f"{len(configs):,}", op, name,
                              f"{statistics.median(times):.2f} ({min(times):.2f}–{max(times):.2f})",
                              f"{statistics.median(c for _, c, _ in values):.2f}",
                              "" if math.isnan(peak) else f"{peak:.0f}")
            if newest in active:  # a run killed before its rows were added: 1% pending
                pending = grid(range(seeds, seeds + 1))[: max(1, len(configs) // 100)]
                write_records(outs[newest] / "records", pending, seed=1)
                s, cpu, mb, _ = timed([py, "-m", "lossbench.cli", "compare", str(outs[newest])],
                                      active[newest])
                table.add_row(f"{len(configs):,}", f"compare with {len(pending)} records pending",
                              newest, f"{s:.2f}", f"{cpu:.2f}", f"{mb:.0f}")
            for out in outs.values():
                shutil.rmtree(out)
            table.add_section()
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    console.print(table)


if __name__ == "__main__":
    main()
