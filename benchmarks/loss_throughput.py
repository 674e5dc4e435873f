"""Loss throughput: forward+backward time of every loss vs a reference on the same inputs.

References: torch's fused ``F.cross_entropy`` for logits losses, ``F.mse_loss`` for regression
losses, and pytorch-metric-learning's implementation of the same loss for embedding losses where
it has one (else plain CE on a cosine head). Prints the fastest of the alternated repeats in
microseconds per call (sub-millisecond calls: see ``timing``) and the ratio.

    python benchmarks/loss_throughput.py [--device cpu|cuda] [--n 4096] [--classes 100]
        [--reg-batch 128] [--loss NAME ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from timing import interleaved

from lossbench.losses import LOSSES

PML_EQUIVALENT = {  # our name -> pytorch-metric-learning class name (default settings)
    "ms": "MultiSimilarityLoss",
    "contrastive": "ContrastiveLoss",
    "triplet": "TripletMarginLoss",
    "supcon": "SupConLoss",
    "proxy-anchor": "ProxyAnchorLoss",
    "arcface": "ArcFaceLoss",
    "cosface": "CosFaceLoss",
    "norm-softmax": "NormalizedSoftmaxLoss",
}


def backward_of(fn: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...]
                ) -> Callable[[], None]:
    """A call of ``fn().backward()`` with the input grads cleared first."""

    def step() -> None:
        for x in inputs:
            x.grad = None
        fn().backward()

    return step


def compare(ours: Callable[[], torch.Tensor], ref: Callable[[], torch.Tensor],
            inputs: tuple[torch.Tensor, ...], device: torch.device, repeats: int
            ) -> tuple[float, float]:
    """Fastest microseconds of ours and of the reference, measured alternately."""
    a, b = interleaved(backward_of(ours, inputs), backward_of(ref, inputs), device, repeats,
                       stat=min)
    return 1e6 * a, 1e6 * b


def pml_reference(name: str, dim: int, classes: int, device: torch.device):  # type: ignore[no-untyped-def]
    try:
        from pytorch_metric_learning import losses as pml
    except ImportError:
        return None
    cls = getattr(pml, PML_EQUIVALENT.get(name, ""), None)
    if cls is None:
        return None
    try:
        return cls(num_classes=classes, embedding_size=dim).to(device)
    except TypeError:
        return cls().to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--emb-batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--reg-batch", type=int, default=128,
                        help="regression batch (the tasks use 32-100; cs-div is O(batch^2))")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--loss", action="append", metavar="NAME",
                        help="time only this loss (repeatable); default: every loss")
    args = parser.parse_args()
    unknown = set(args.loss or ()) - {entry.name for entry in LOSSES}
    if unknown:
        parser.error(f"unknown loss {', '.join(sorted(unknown))}; see `lossbench list losses`")
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n, k = args.n, args.classes
    logits = torch.randn(n, k, generator=g).to(device).requires_grad_(True)
    labels = torch.randint(0, k, (n,), generator=g).to(device)
    index = torch.arange(n, device=device)
    nb = args.emb_batch
    emb = torch.randn(nb, args.dim, generator=g).to(device).requires_grad_(True)
    emb_labels = torch.arange(nb // 8).repeat_interleave(8).to(device)
    counts = tuple(torch.bincount(labels.cpu(), minlength=k).tolist())
    context = {"num_classes": k, "num_train": n, "embedding_dim": args.dim,
               "class_counts": counts, "seed": 0, "train_inputs": torch.randn(n, 8, generator=g)}
    nr = args.reg_batch
    targets = torch.randn(nr, generator=g).to(device)

    table = Table("loss", "consumes", "reference", "loss µs", "reference µs", "ratio",
                  title=f"forward+backward, {device} (logits {n}x{k}; embeddings {nb}x{args.dim}; "
                        f"regression batch {nr})")
    for entry in LOSSES:
        if args.loss and entry.name not in args.loss:
            continue
        consumes = entry.tags["consumes"]
        if consumes in ("logits", "binary"):
            loss = entry.build({}, **context).to(device)
            ours, theirs = compare(lambda loss=loss: loss(logits, labels, index=index).mean(),
                                   lambda: F.cross_entropy(logits, labels), (logits,), device,
                                   args.repeats)
            table.add_row(entry.name, consumes, "F.cross_entropy", f"{ours:.0f}",
                          f"{theirs:.0f}", f"{ours / theirs:.2f}")
        elif consumes == "embeddings":
            loss = entry.build({}, **context | {"num_classes": nb // 8}).to(device)
            ref = pml_reference(entry.name, args.dim, nb // 8, device)
            if ref is None:
                ours, _ = compare(lambda loss=loss: loss(emb, emb_labels).mean(),
                                  lambda loss=loss: loss(emb, emb_labels).mean(), (emb,), device,
                                  args.repeats)
                table.add_row(entry.name, consumes, "— (no PML equivalent)", f"{ours:.0f}", "", "")
                continue
            ours, theirs = compare(lambda loss=loss: loss(emb, emb_labels).mean(),
                                   lambda ref=ref: ref(emb, emb_labels), (emb,), device,
                                   args.repeats)
            table.add_row(entry.name, consumes, f"PML {type(ref).__name__}", f"{ours:.0f}",
                          f"{theirs:.0f}", f"{ours / theirs:.2f}")
        elif consumes == "regression":
            loss = entry.build({}, **context).to(device)
            pred = torch.randn(nr, int(loss.head_dim), generator=g).to(device).requires_grad_(True)
            ours, theirs = compare(
                lambda loss=loss, pred=pred: loss(pred, targets, index=index[:nr]).mean(),
                lambda pred=pred: F.mse_loss(pred[:, 0], targets), (pred,), device, args.repeats)
            table.add_row(entry.name, consumes, "F.mse_loss", f"{ours:.0f}", f"{theirs:.0f}",
                          f"{ours / theirs:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
