"""Retrieval evaluation: lossbench's ``retrieval_metrics`` vs faiss, torch and PML references.

Data: N unit embeddings, D = 128, classes of ``--class-size`` (class centre + Gaussian noise of
``--noise`` per dimension; noise 0 = random embeddings, the worst case for the AUC table).
Contenders, each timed in a fresh child process (one call after a small warm-up; peak = the
child's resident-memory high-water mark above what it held before the call), alternated over
the repeats:

* lossbench: the full metric set (Recall@K, precision@1, R-precision, MAP@R, exact AUC), with
  the default kNN (``auto``); lossbench-faiss: the same with ``knn="faiss"`` (when installed);
  before: ``retrieval_metrics`` of the checkout given by ``--before``;
* faiss: ``IndexFlatIP`` search + lossbench's kNN metric arithmetic (no AUC) -- the reference;
* torch-blocked: ``z @ z.T`` in 2^24-entry row blocks + ``topk`` + the same arithmetic (no AUC);
* PML: pytorch-metric-learning's ``AccuracyCalculator`` (precision@1, R-precision, MAP@R; its
  faiss kNN when faiss is installed, else its batched torch kNN).

Prints median seconds, ratios to faiss (to torch-blocked without faiss), peak MB, and the
largest difference of each contender's kNN metrics from lossbench's (0: identical values).
``--before PATH`` adds the contender "before": ``retrieval_metrics`` of another checkout.

    python benchmarks/retrieval_eval.py [--sizes 5000,20000,60000] [--repeats 3]
        [--repeats-large 1] [--noise 3.0] [--class-size 50] [--recall-at 1,2,4,8]
        [--before PATH] [--skip pml,lossbench-faiss]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ["before", "lossbench", "lossbench-faiss", "faiss", "torch-blocked", "pml"]
Case = tuple[float, int, tuple[int, ...]]  # noise, class size, recall_at


def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def make_data(n: int, noise: float, class_size: int, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) // class_size
    emb = torch.randn(n, 128, generator=g)
    if noise > 0:
        emb = torch.randn(int(labels.max()) + 1, 128, generator=g)[labels] + noise * emb
    return F.normalize(emb, dim=1), labels


def kmax_of(labels: torch.Tensor, recall_at: tuple[int, ...]) -> int:
    return min(len(labels) - 1, max(max(recall_at), int(torch.bincount(labels).max()) - 1))


def arithmetic(found: torch.Tensor, labels: torch.Tensor, recall_at: tuple[int, ...]
               ) -> dict[str, float]:
    """lossbench's kNN metric arithmetic on ranked neighbour indices [n, kmax]."""
    from lossbench.metrics_retrieval import knn_metrics

    r = torch.bincount(labels)[labels] - 1
    return knn_metrics(labels[found], labels, r, recall_at)


def run_faiss(z: torch.Tensor, labels: torch.Tensor, recall_at: tuple[int, ...]
              ) -> dict[str, float]:
    import faiss

    k = kmax_of(labels, recall_at)
    index = faiss.IndexFlatIP(z.shape[1])
    index.add(z.numpy())
    _, found = index.search(z.numpy(), k + 1)
    found_t = torch.from_numpy(found)
    other = found_t != torch.arange(len(z))[:, None]  # drop self; keep k others in order
    keep = other & (torch.cumsum(other, 1) <= k)
    return arithmetic(found_t[keep].view(len(z), k), labels, recall_at)


def run_torch_blocked(z: torch.Tensor, labels: torch.Tensor, recall_at: tuple[int, ...]
                      ) -> dict[str, float]:
    k = kmax_of(labels, recall_at)
    rows = max(1, 2**24 // len(z))
    found = []
    for s in range(0, len(z), rows):
        sim = z[s : s + rows] @ z.T
        sim[torch.arange(len(sim)), torch.arange(s, s + len(sim))] = -torch.inf
        found.append(sim.topk(k, dim=1).indices)
    return arithmetic(torch.cat(found), labels, recall_at)


def run_pml(z: torch.Tensor, labels: torch.Tensor, recall_at: tuple[int, ...]
            ) -> dict[str, float]:
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    knn = None if has_faiss() else CustomKNN(CosineSimilarity(), batch_size=2**24 // len(z))
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision",
                                       "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"), knn_func=knn)
    got = calc.get_accuracy(z, labels, z, labels, ref_includes_query=True)
    return {"precision@1": 100 * got["precision_at_1"], "r_precision": 100 * got["r_precision"],
            "map@r": 100 * got["mean_average_precision_at_r"]}


def run_lossbench(z: torch.Tensor, labels: torch.Tensor, recall_at: tuple[int, ...],
                  knn: str | None = None) -> dict[str, float]:
    from lossbench.metrics_retrieval import retrieval_metrics

    if knn is None:  # the default, also in code from before the knn argument
        return retrieval_metrics(z, labels, recall_at)
    return retrieval_metrics(z, labels, recall_at, knn=knn)


RUNNERS = {
    "before": run_lossbench,
    "lossbench": run_lossbench,
    "lossbench-faiss": lambda z, y, ks: run_lossbench(z, y, ks, "faiss"),
    "faiss": run_faiss,
    "torch-blocked": run_torch_blocked,
    "pml": run_pml,
}


def child(name: str, n: int, case: Case) -> None:
    """One timed call, reported as a JSON line: seconds, peak MB above the start, metrics."""
    noise, class_size, recall_at = case
    fn = RUNNERS[name]
    fn(*make_data(1000, noise, class_size, seed=1), recall_at)  # warm-up
    z, labels = make_data(n, noise, class_size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    metrics = fn(z, labels, recall_at)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mb": (peak - before) / 1024,
                      "metrics": metrics}))


def measure(name: str, n: int, case: Case, before: str) -> dict[str, Any]:
    roots = [before, str(ROOT)] if name == "before" else [str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [*roots, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    noise, class_size, recall_at = case
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--sizes", str(n), "--noise", str(noise),
         "--class-size", str(class_size), "--recall-at", ",".join(map(str, recall_at))],
        env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} at N={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000,60000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeats-large", type=int, default=1,
                        help="repeats for N >= 40000 (slow references)")
    parser.add_argument("--noise", type=float, default=3.0)
    parser.add_argument("--class-size", type=int, default=50)
    parser.add_argument("--recall-at", default="1,2,4,8")
    parser.add_argument("--before", default="",
                        help="another lossbench checkout (source root): its retrieval_metrics "
                             "runs as the contender 'before'")
    parser.add_argument("--skip", default="", help="comma list of contenders to leave out")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    case: Case = (args.noise, args.class_size,
                  tuple(int(k) for k in args.recall_at.split(",")))
    if args.child:
        child(args.child, int(args.sizes), case)
        return
    skip = set(filter(None, args.skip.split(",")))
    if not has_faiss():
        skip |= {"faiss", "lossbench-faiss"}
    if not args.before:
        skip.add("before")
    names = [c for c in CONTENDERS if c not in skip]
    ref = "faiss" if "faiss" in names else "torch-blocked"
    print(f"D 128, classes of {args.class_size}, noise {args.noise}, Recall@{args.recall_at}, "
          f"before = {args.before or '-'}, torch threads {torch.get_num_threads()}; median "
          f"seconds of alternated child runs; ratios to {ref}")
    header = (["N"] + [f"{c} s" for c in names] + [f"{c}/{ref}" for c in names if c != ref]
              + [f"{c} peak MB" for c in names] + ["max abs diff of kNN metrics"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        repeats = args.repeats if n < 40_000 else args.repeats_large
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in names}
        for _ in range(repeats):
            for c in names:
                runs[c].append(measure(c, n, case, args.before))
                print(f"  N={n} {c}: {runs[c][-1]['seconds']:.2f} s", file=sys.stderr)
        secs = {c: statistics.median(r["seconds"] for r in runs[c]) for c in names}
        peak = {c: max(r["peak_mb"] for r in runs[c]) for c in names}
        ours = runs["lossbench"][0]["metrics"] if "lossbench" in names else {}
        diffs = []
        for c in names:
            theirs = runs[c][0]["metrics"]
            shared = [m for m in theirs if m in ours and m != "auc"]
            if c != "lossbench" and shared:
                diffs.append(f"{c} {max(abs(theirs[m] - ours[m]) for m in shared):.2g}")
        row = ([str(n)] + [f"{secs[c]:.2f}" for c in names]
               + [f"{secs[c] / secs[ref]:.2f}" for c in names if c != ref]
               + [f"{peak[c]:.0f}" for c in names] + ["; ".join(diffs)])
        print("| " + " | ".join(row) + " |", flush=True)
        for c in ("before", "lossbench"):
            if c in names:
                print(f"  {c} metrics at N={n}: " + ", ".join(
                    f"{k} {v:.6f}" for k, v in runs[c][0]["metrics"].items()), file=sys.stderr)


if __name__ == "__main__":
    main()
