"""Retrieval evaluation: lossbench's ``retrieval_metrics`` vs faiss, torch and PML references.

Data: N unit embeddings, D = 128, classes of 50 (class centre + Gaussian noise of ``--noise``
per dimension; 0 = random embeddings, the worst case for the AUC table). Contenders, each
timed in a fresh child process (one call after a small warm-up; the peak is the child's
resident-memory high-water mark above what it held before the call), alternated over the
repeats:

* lossbench: the full metric set (Recall@K, precision@1, R-precision, MAP@R, exact AUC), with
  the default kNN, and with ``knn="faiss"`` when faiss is installed;
* faiss: ``IndexFlatIP`` search + the kNN metric arithmetic (no AUC) -- the reference;
* torch-blocked: ``z @ z.T`` in 2^24-entry row blocks + ``topk`` + the same arithmetic (no AUC);
* PML: pytorch-metric-learning's ``AccuracyCalculator`` (precision@1, R-precision, MAP@R; its
  faiss kNN when installed, else its batched torch kNN).

Prints median seconds, ratios to faiss (or to torch-blocked without faiss), peak MB, and the
largest difference of each reference's kNN metrics from lossbench's (0 when they agree).
``--code PATH`` makes the lossbench contender import another checkout (for a before/after).

    python benchmarks/retrieval_eval.py [--sizes 5000,20000,60000] [--repeats 3]
        [--repeats-large 1] [--noise 3.0] [--code PATH] [--skip pml,lossbench-faiss]
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

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ["lossbench", "lossbench-faiss", "faiss", "torch-blocked", "pml"]
KNN_METRICS = ["recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "r_precision",
               "map@r"]


def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def make_data(n: int, noise: float, seed: int = 0):  # type: ignore[no-untyped-def]
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) // 50
    centres = torch.randn(int(labels.max()) + 1, 128, generator=g)
    emb = torch.randn(n, 128, generator=g)
    if noise > 0:
        emb = centres[labels] + noise * emb
    return F.normalize(emb, dim=1), labels


def arithmetic(neighbour_labels, labels, ks=(1, 2, 4, 8)) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The kNN metric arithmetic of lossbench, on ranked neighbour labels [n, kmax]."""
    import torch

    from lossbench.metrics_retrieval import knn_metrics

    r = torch.bincount(labels)[labels] - 1
    return knn_metrics(neighbour_labels, labels, r, ks)


def kmax_of(labels) -> int:  # type: ignore[no-untyped-def]
    import torch

    return min(len(labels) - 1, max(8, int(torch.bincount(labels).max()) - 1))


def run_faiss(z, labels) -> dict[str, float]:  # type: ignore[no-untyped-def]
    import faiss
    import torch

    k = kmax_of(labels)
    index = faiss.IndexFlatIP(z.shape[1])
    data = z.numpy()
    index.add(data)
    _, found = index.search(data, k + 1)
    found_t = torch.from_numpy(found)
    not_self = found_t != torch.arange(len(z))[:, None]
    # drop self (first when no exact duplicate scores as high), keep k others in order
    rank = torch.cumsum(not_self, 1) - 1
    keep = not_self & (rank < k)
    nbrs = found_t[keep].view(len(z), k)
    return arithmetic(labels[nbrs], labels)


def run_torch_blocked(z, labels) -> dict[str, float]:  # type: ignore[no-untyped-def]
    import torch

    k = kmax_of(labels)
    rows = max(1, 2**24 // len(z))
    found = []
    for s in range(0, len(z), rows):
        sim = z[s : s + rows] @ z.T
        sim[torch.arange(len(sim)), torch.arange(s, s + len(sim))] = -torch.inf
        found.append(sim.topk(k, dim=1).indices)
    return arithmetic(labels[torch.cat(found)], labels)


def run_pml(z, labels) -> dict[str, float]:  # type: ignore[no-untyped-def]
    import torch
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


def run_lossbench(z, labels, knn: str | None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from lossbench.metrics_retrieval import retrieval_metrics

    return retrieval_metrics(z, labels) if knn is None else retrieval_metrics(z, labels, knn=knn)


def child(name: str, n: int, noise: float) -> None:
    """One timed call, reported as a JSON line: seconds, peak MB above the start, metrics."""

    fn = {
        "lossbench": lambda z, y: run_lossbench(z, y, None),
        "lossbench-faiss": lambda z, y: run_lossbench(z, y, "faiss"),
        "faiss": run_faiss,
        "torch-blocked": run_torch_blocked,
        "pml": run_pml,
    }[name]
    warm_z, warm_y = make_data(1000, noise, seed=1)
    fn(warm_z, warm_y)
    z, labels = make_data(n, noise)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    metrics = fn(z, labels)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mb": (peak - before) / 1024,
                      "metrics": metrics}))


def measure(name: str, n: int, noise: float, code: str) -> dict[str, Any]:
    roots = [code, str(ROOT)] if name == "lossbench" else [str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [*roots, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--sizes", str(n), "--noise", str(noise)],
        env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} at N={n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000,60000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeats-large", type=int, default=1,
                        help="repeats for N >= 40000 (slow references)")
    parser.add_argument("--noise", type=float, default=3.0)
    parser.add_argument("--code", default=str(ROOT),
                        help="lossbench source root the lossbench contender imports")
    parser.add_argument("--skip", default="", help="comma list of contenders to leave out")
    parser.add_argument("--child", default="")
    args = parser.parse_args()
    if args.child:
        child(args.child, int(args.sizes), args.noise)
        return
    skip = set(filter(None, args.skip.split(",")))
    if not has_faiss():
        skip |= {"faiss", "lossbench-faiss"}
    names = [c for c in CONTENDERS if c not in skip]
    ref = "faiss" if "faiss" in names else "torch-blocked"
    print(f"noise {args.noise}, D 128, classes of 50, lossbench from {args.code}; "
          f"median seconds of alternated child runs; ratios to {ref}")
    header = (["N"] + [f"{c} s" for c in names] + [f"{c}/{ref}" for c in names if c != ref]
              + [f"{c} peak MB" for c in names] + ["max |diff| vs lossbench"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for n in (int(s) for s in args.sizes.split(",")):
        repeats = args.repeats if n < 40_000 else args.repeats_large
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in names}
        for _ in range(repeats):
            for c in names:
                runs[c].append(measure(c, n, args.noise, args.code))
                print(f"  N={n} {c}: {runs[c][-1]['seconds']:.2f} s", file=sys.stderr)
        secs = {c: statistics.median(r["seconds"] for r in runs[c]) for c in names}
        peak = {c: max(r["peak_mb"] for r in runs[c]) for c in names}
        ours = runs["lossbench"][0]["metrics"] if "lossbench" in names else {}
        diffs = []
        for c in names:
            theirs = runs[c][0]["metrics"]
            shared = [m for m in KNN_METRICS if m in theirs and m in ours]
            if c != "lossbench" and shared:
                diffs.append(f"{c} {max(abs(theirs[m] - ours[m]) for m in shared):.2g}")
        row = ([str(n)] + [f"{secs[c]:.2f}" for c in names]
               + [f"{secs[c] / secs[ref]:.2f}" for c in names if c != ref]
               + [f"{peak[c]:.0f}" for c in names] + ["; ".join(diffs)])
        print("| " + " | ".join(row) + " |", flush=True)
        if ours:
            print(f"  lossbench metrics at N={n}: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in ours.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
