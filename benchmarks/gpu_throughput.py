"""Training throughput of the CIFAR quick model: images/s and fraction of measured peak FLOP/s,
one run alone vs M runs packed.

In one process: the device's peak FLOP/s from a large square matmul (bf16 on CUDA with --amp,
float32 otherwise), the model's training FLOPs per image (torch's FlopCounterMode over one
forward+backward), then one epoch of the engine's own training path on synthetic CIFAR-shaped
data held on the device, for each pack size (1: ``Trainer``; M > 1: ``PackedTrainer`` with M
differently seeded models, each with its own data order). Median of --repeats after a warm-up
epoch. On a GPU (defaults: 50,000 images, 8192^3 matmul):

    python benchmarks/gpu_throughput.py [--model airbench] [--packs 1,2,4,8] [--markdown]

On the CPU, tiny settings (a smoke check, not a measurement):

    python benchmarks/gpu_throughput.py --device cpu --train-size 512 --batch-size 64 \\
        --packs 1,2 --repeats 1 --matmul-size 512
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from tabulate import tabulate
from timing import once
from torch.utils.flop_counter import FlopCounterMode

from lossbench.data.augment import crop_flip
from lossbench.engine.packed import PackedTrainer
from lossbench.engine.train import TrainConfig, Trainer, resolve_device
from lossbench.losses import LOSSES
from lossbench.models import MODELS

SHAPE = (3, 32, 32)
COLUMNS = ["model", "pack", "s/epoch", "images/s", "TFLOP/s", "% of peak", "vs pack 1"]


def peak_flops(device: torch.device, size: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """Median FLOP/s of ``size``^3 matmuls: the denominator of "fraction of peak" is measured on
    this very device and clock state, not taken from a datasheet."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def work() -> None:
        for _ in range(5):  # several per timing so the synchronize cost is negligible
            a @ b

    work()
    return 5 * 2 * size**3 / statistics.median(once(work, device) for _ in range(repeats))


def build_model(name: str, classes: int, seed: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODELS.get(name).build({}, in_shape=SHAPE, out_dim=classes).to(device)


def flops_per_image(model: torch.nn.Module, batch: int, classes: int,
                    device: torch.device) -> float:
    """Training FLOPs (forward + backward) per image, as counted by torch's FlopCounterMode."""
    x = torch.randn(batch, *SHAPE, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def epoch_seconds(pack: int, args: argparse.Namespace, device: torch.device, x: torch.Tensor,
                  y: torch.Tensor) -> float:
    """Median seconds of one training epoch of ``pack`` runs, through the engine's trainers."""
    cfg = TrainConfig(epochs=args.repeats + 1, batch_size=args.batch_size, amp=args.amp,
                      compile=args.compile, channels_last=args.channels_last,
                      augment=args.augment)
    steps = len(x) // args.batch_size
    augment = crop_flip if args.augment else None
    models = [build_model(args.model, args.classes, seed, device) for seed in range(pack)]
    losses = [LOSSES.get("ce").build({}, num_classes=args.classes, num_train=len(x))
              for _ in range(pack)]
    generators = [torch.Generator().manual_seed(seed) for seed in range(pack)]
    trainer: Trainer | PackedTrainer
    if pack == 1:
        trainer = Trainer(models[0], losses[0], cfg, device, steps, augment=augment)
        labels, gens = y, generators[0]
    else:
        trainer = PackedTrainer(models, losses, cfg, device, steps, augment=augment)
        labels, gens = [y] * pack, generators
    times = [once(partial(trainer.epoch, x, labels, gens, e), device)
             for e in range(args.repeats + 1)]
    return statistics.median(times[1:])  # epoch 0 is the warm-up (compile, lazy CUDA init)


def pack_row(pack: int, args: argparse.Namespace, device: torch.device, x: torch.Tensor,
             y: torch.Tensor, per_image: float, peak: float, base: float | None
             ) -> tuple[list[str], float | None]:
    """One table row; a pack that does not fit in GPU memory reads OOM instead of crashing."""
    try:
        seconds = epoch_seconds(pack, args, device, x, y)
    except torch.OutOfMemoryError:
        seconds = None
    if seconds is None:
        torch.cuda.empty_cache()  # after the except block, so the failed pack's tensors are freed
        return [args.model, str(pack), "OOM", "-", "-", "-", "-"], None
    rate = pack * len(x) / seconds
    achieved = rate * per_image
    speedup = f"{rate / base:.2f}" if base else "-"
    return [args.model, str(pack), f"{seconds:.3f}", f"{rate:,.0f}", f"{achieved / 1e12:.3g}",
            f"{100 * achieved / peak:.1f}", speedup], rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flag = argparse.BooleanOptionalAction
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--model", default="airbench")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--train-size", type=int, default=0, help="0: 50,000 (CUDA), 2,048 (CPU)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--packs", default="1,2,4,8", help="comma list of pack sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per pack")
    parser.add_argument("--matmul-size", type=int, default=0, help="0: 8192 (CUDA), 1024 (CPU)")
    parser.add_argument("--amp", action=flag, default=True, help="bf16 autocast (CUDA only)")
    parser.add_argument("--channels-last", action=flag, default=True, help="(CUDA only)")
    parser.add_argument("--compile", action=flag, default=False, help="torch.compile (CUDA only)")
    parser.add_argument("--augment", action=flag, default=True, help="crop_flip on the device")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    n = args.train_size or (50_000 if cuda else 2_048)
    dtype = torch.bfloat16 if cuda and args.amp else torch.float32
    peak = peak_flops(device, args.matmul_size or (8192 if cuda else 1024), dtype)
    per_image = flops_per_image(build_model(args.model, args.classes, 0, device),
                                args.batch_size, args.classes, device)
    x = torch.randn(n, *SHAPE, device=device)
    y = torch.randint(0, args.classes, (n,), device=device)

    rows: list[list[str]] = []
    base = None
    for pack in (int(p) for p in args.packs.split(",")):
        row, rate = pack_row(pack, args, device, x, y, per_image, peak, base)
        rows.append(row)
        if pack == 1:
            base = rate
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    header = (f"{name}, torch {torch.__version__}; peak {peak / 1e12:.3g} TFLOP/s "
              f"({str(dtype).removeprefix('torch.')} matmul); {per_image / 1e6:.1f} MFLOP per "
              f"training image; {n:,} images/epoch, batch {args.batch_size}, "
              f"amp={args.amp and cuda}, "
              f"channels_last={args.channels_last and cuda}, compile={args.compile and cuda}, "
              f"augment={args.augment}; median of {args.repeats} epochs after 1 warm-up")
    note = ("images/s = pack x images/epoch / s; FLOPs count matmuls and convolutions only "
            "(FlopCounterMode, 2 per multiply-add), not BatchNorm, activations, pooling, "
            "optimizer; channels_last and compile apply to pack 1 only (PackedTrainer's vmap "
            "runs grouped convolutions)")
    table = Table(*COLUMNS, title=header, caption=note)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if args.markdown:
        print(f"\n{header}\n\n{tabulate(rows, COLUMNS, tablefmt='github')}\n\n{note}")


if __name__ == "__main__":
    main()
