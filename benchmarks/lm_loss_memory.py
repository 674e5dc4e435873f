"""Memory and time of the LM loss, forward + backward: CE on materialised logits vs Cut
Cross-Entropy, across vocabulary sizes and tokens per batch.

CE: ``F.cross_entropy(hidden @ weight.T)``, torch's fused kernel on the [N, V] logits. CCE:
``lossbench.losses.lm.cut_cross_entropy`` (tiles of ``--token-block`` x ``--vocab-block``).
Both in float32 from the same hidden states [N, D] and head [V, D], both returning the
gradients of both. Memory: ``lossbench.memory.peak_bytes`` of one forward + backward (CPU: the
profiler's allocation events; CUDA: the allocator's peak); "grads" is the part any method must
allocate (the two gradients, (N + V) x D floats), so "CCE - grads" is CCE's own working memory.
Time: median of ``--repeats`` interleaved calls. CE cells whose logits would exceed ``--max-gb``
(three [N, V] float32 matrices) are skipped. Run:

    python benchmarks/lm_loss_memory.py [--dim 128] [--tokens 1024,4096]
        [--vocab 4096,16384,32768,65536,131072,262144] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import interleaved

from lossbench.losses.lm import TILE, cut_cross_entropy
from lossbench.memory import peak_bytes

MB = 2**20


def inputs(n: int, v: int, d: int, device: torch.device
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g).to(device).requires_grad_()
    w = (torch.randn(v, d, generator=g) / d**0.5).to(device).requires_grad_()
    return h, w, torch.randint(0, v, (n,), generator=g).to(device)


def ce_step(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(h @ w.T, y).backward()
    h.grad = w.grad = None


def cce_step(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, blocks: tuple[int, int]) -> None:
    cut_cross_entropy(h, w, y, *blocks).mean().backward()
    h.grad = w.grad = None


def row(n: int, v: int, d: int, blocks: tuple[int, int], repeats: int, max_gb: float,
        device: torch.device) -> list[str]:
    h, w, y = inputs(n, v, d, device)
    grads = (n + v) * d * 4 / MB
    cce_mb = peak_bytes(lambda: cce_step(h, w, y, blocks), device) / MB
    if 3 * n * v * 4 > max_gb * 2**30:
        cce_s = interleaved(lambda: cce_step(h, w, y, blocks), lambda: None, device, repeats,
                            warmup=1)[0]
        return [f"{n:,}", f"{v:,}", "skipped", f"{cce_mb:,.0f}", f"{cce_mb - grads:,.0f}", "",
                "skipped", f"{cce_s:.3f}", ""]
    ce_mb = peak_bytes(lambda: ce_step(h, w, y), device) / MB
    ce_s, cce_s = interleaved(lambda: ce_step(h, w, y), lambda: cce_step(h, w, y, blocks),
                              device, repeats, warmup=1)
    return [f"{n:,}", f"{v:,}", f"{ce_mb:,.0f}", f"{cce_mb:,.0f}", f"{cce_mb - grads:,.0f}",
            f"{cce_mb / ce_mb:.3f}", f"{ce_s:.3f}", f"{cce_s:.3f}", f"{cce_s / ce_s:.2f}"]


HEADER = ("tokens", "vocab", "CE MB", "CCE MB", "CCE - grads MB", "CCE/CE mem", "CE s",
          "CCE s", "CCE/CE time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tokens", default="1024,4096")
    parser.add_argument("--vocab", default="4096,16384,32768,65536,131072,262144")
    parser.add_argument("--token-block", type=int, default=TILE)
    parser.add_argument("--vocab-block", type=int, default=TILE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-gb", type=float, default=6.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    blocks = (args.token_block, args.vocab_block)
    # Markdown, a row as soon as it is measured (the large cells take minutes on a CPU).
    print(f"LM loss forward + backward, D = {args.dim}, float32, {device.type}, "
          f"{args.threads} thread(s); CCE tiles {blocks[0]} x {blocks[1]}; median of "
          f"{args.repeats}\n")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER), flush=True)
    for n in (int(t) for t in args.tokens.split(",")):
        for v in (int(t) for t in args.vocab.split(",")):
            cells = row(n, v, args.dim, blocks, args.repeats, args.max_gb, device)
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
