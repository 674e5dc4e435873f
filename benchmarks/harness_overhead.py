"""Harness overhead: lossbench's training epoch vs a hand-written minimal PyTorch loop.

Same model, data, batch order, optimizer and loss (CE) in the same process; the table prints the
median seconds per epoch of each and their ratio (goal: <= 1.03). Run:

    python benchmarks/harness_overhead.py [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from timing import interleaved

from lossbench.engine.train import TrainConfig, Trainer, batches
from lossbench.losses import LOSSES
from lossbench.models import MODELS

CASES = {
    # name: (model, model params, input shape, examples, classes, batch size)
    "mlp-digits": ("mlp", {"hidden": 512}, (64,), 1536, 10, 64),
    "small-cnn-cifar": ("small-cnn", {"width": 32}, (3, 32, 32), 2048, 100, 256),
}


def minimal_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor, batch: int, g: torch.Generator) -> None:
    """The loop a researcher would write by hand: no schedule, no bookkeeping."""
    model.train()
    for idx in batches(y, batch, g):
        idx = idx.to(x.device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def bench(case: str, device: torch.device, repeats: int) -> tuple[float, float]:
    model_name, params, shape, n, k, batch = CASES[case]
    x = torch.randn(n, *shape, device=device)
    y = torch.randint(0, k, (n,), device=device)
    # The same numerics on both sides: no autocast, default memory format.
    cfg = TrainConfig(epochs=1000, batch_size=batch, lr=0.01, momentum=0.9, amp=False,
                      channels_last=False)

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return MODELS.get(model_name).build(params, in_shape=shape, out_dim=k).to(device)

    ours = Trainer(build(), LOSSES.get("ce").build({}), cfg, device, n // batch)
    g1 = torch.Generator().manual_seed(0)
    plain = build()
    opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=cfg.weight_decay)
    g2 = torch.Generator().manual_seed(0)
    return interleaved(lambda: ours.epoch(x, y, g1, 0),
                       lambda: minimal_epoch(plain, opt, x, y, batch, g2), device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    table = Table("case", "device", "lossbench s/epoch", "minimal loop s/epoch", "ratio",
                  title="harness overhead (median of repeats)")
    for case in CASES:
        ours, plain = bench(case, device, args.repeats)
        table.add_row(case, str(device), f"{ours:.4f}", f"{plain:.4f}", f"{ours / plain:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
