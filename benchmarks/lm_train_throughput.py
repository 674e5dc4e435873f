"""Training throughput of the lm family: lossbench's Trainer epoch (windows, the TokenLoss
adapter, the schedule) vs a hand-written nanoGPT-style loop, on the same model and batches.

Both sides: the task's transformer, AdamW, CE on ``hidden @ head.T``, ``steps`` random windows
per epoch from a seeded generator. The table prints median tokens/s of each and the ratio of
their times (goal: <= 1.05). Run:

    python benchmarks/lm_train_throughput.py [--task shakespeare-char] [--steps 10] [--repeats 5]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from timing import interleaved

from lossbench.data.text import load_corpus
from lossbench.engine.train import TrainConfig, Trainer
from lossbench.families.lm import (
    TokenWindows,
    build_loss,
    build_model,
    read_config,
    window_sampler,
)
from lossbench.spec import resolve_task


def minimal_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor,
                  block: int, batch: int, steps: int, g: torch.Generator) -> None:
    """nanoGPT's loop: random windows, forward, CE on the logits, backward, step."""
    model.train()
    offsets = torch.arange(block, device=ids.device)
    for _ in range(steps):
        starts = torch.randint(len(ids) - block, (batch,), generator=g).to(ids.device)
        x, y = ids[starts[:, None] + offsets], ids[starts[:, None] + offsets + 1]
        logits = model.logits(model(x))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def bench(task: str, budget: str, steps: int, repeats: int, threads: int, device: torch.device
          ) -> tuple[float, float, int]:
    torch.set_num_threads(threads)
    spec = resolve_task(task, budget)
    data, _, _ = read_config(spec)
    corpus = load_corpus(data.corpus, data.tokenizer, data.vocab_size, data.dir)
    block = data.block_size
    cfg = TrainConfig.from_spec(spec["train"] | {"amp": False, "epochs": 1000})
    ids = torch.tensor(corpus.train.ids).to(device)

    torch.manual_seed(0)
    model = build_model(spec, block, corpus.vocab_size).to(device)
    loss = build_loss("ce", {}, corpus, 0, model)
    trainer = Trainer(model, loss, cfg, device, steps, sampler=window_sampler(steps))
    x, y = TokenWindows(ids[:-1], block), TokenWindows(ids[1:], block)
    g1 = torch.Generator().manual_seed(0)

    torch.manual_seed(0)
    plain = build_model(spec, block, corpus.vocab_size).to(device)
    opt = torch.optim.AdamW(plain.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g2 = torch.Generator().manual_seed(0)
    ours, hand = interleaved(
        lambda: trainer.epoch(x, y, g1, 0),  # type: ignore[arg-type]
        lambda: minimal_epoch(plain, opt, ids, block, cfg.batch_size, steps, g2),
        device, repeats, warmup=1)
    return ours, hand, steps * cfg.batch_size * block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", default=None)
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    table = Table("task", "tokens/epoch", "lossbench tok/s", "minimal tok/s", "time ratio",
                  title=f"lm training throughput (median of {args.repeats}, "
                        f"{args.threads} thread(s), {device.type})")
    for task in args.task or ["shakespeare-char", "shakespeare-bpe"]:
        ours, hand, tokens = bench(task, args.budget, args.steps, args.repeats, args.threads,
                                   device)
        table.add_row(task, f"{tokens:,}", f"{tokens / ours:,.0f}", f"{tokens / hand:,.0f}",
                      f"{ours / hand:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
