"""Language modelling: a small decoder-only transformer trained on contiguous windows of text.

Data (``lossbench.data.text``): a corpus cut by characters into 90% train, 5% validation and 5%
test, tokenised per split (``data.tokenizer = "char"`` or ``"bpe"``, BPE trained on the training
split only). Training follows nanoGPT's sampler: each step draws ``batch_size`` windows of
``data.block_size`` tokens at random start positions (the run's seeded generator) and predicts
every next token. An "epoch" is ``lm.steps_per_epoch`` optimizer steps, after which the whole
validation and test splits are scored on consecutive non-overlapping blocks (``eval.max_blocks``
caps them for smoke runs).

Metrics (``lossbench.metrics_lm``): test CE per token, bits per character, perplexity,
next-token accuracy, ECE and pass@N, last epoch and at the best-validation-CE epoch (``@best_val``);
after training, word-level distinct-n and rep-4 of ``eval.samples`` texts sampled at temperature 1
(``info`` holds the same numbers for the human test text they continue). Every record has the
training throughput (``tokens_per_s``: tokens trained on per second of training steps) and the
loss's peak memory (``loss_peak_mb``: ``lossbench.memory.peak_bytes`` of one forward + backward
of the loss alone on a training batch's hidden states, gradients included; ``loss_grads_mb`` is
the part every loss must allocate, the gradients of the hidden states and of the head).

Losses: ``lm-hidden`` losses get (hidden states, head weight); ``logits`` losses run on the
materialised logits ``hidden @ head.T`` through ``TokenLoss``. Loss context: ``num_classes`` =
vocabulary size, ``num_train`` = number of training target positions (per-token ids for
stateful losses: a window starting at ``s`` predicts positions ``s .. s + block - 1``),
``class_counts`` = training token counts, ``seed``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lossbench.data.text import TOKENIZERS, Corpus, TokenisedSplit, load_corpus
from lossbench.engine.train import Diverged, Sampler, TrainConfig, Trainer, seed_everything
from lossbench.errors import require
from lossbench.families.base import FAMILIES, RunContext, RunOutput, config_table
from lossbench.losses import LOSSES, Loss
from lossbench.memory import peak_bytes
from lossbench.metrics_lm import TokenScores, diversity
from lossbench.models import MODELS

LM_MODELS = ("gpt",)
"""Models with an LM head (``.head``, ``.logits``) that return hidden states."""


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: the corpus, its tokenisation and the context length."""

    corpus: str = "tinyshakespeare"
    tokenizer: str = "char"
    vocab_size: int = 0
    """BPE only: the vocabulary size asked of the BPE trainer."""
    block_size: int = 128
    dir: str = ""


@dataclass(frozen=True)
class LMConfig:
    """``[lm]``: optimizer steps between two evaluations (one "epoch")."""

    steps_per_epoch: int = 100


@dataclass(frozen=True)
class EvalConfig:
    """``[eval]``: calibration bins, pass@N budgets, split caps and sampling."""

    ece_bins: int = 15
    pass_at: tuple[int, ...] = (1, 4, 16, 64)
    max_blocks: int = 0
    """Score only the first ``max_blocks`` blocks of validation and test (0: all)."""
    samples: int = 8
    sample_length: int = 200
    """Tokens sampled per text."""


def read_config(spec: Mapping[str, Any]) -> tuple[DataConfig, LMConfig, EvalConfig]:
    data = config_table(DataConfig, spec, "data")
    lm = config_table(LMConfig, spec, "lm")
    ev = config_table(EvalConfig, spec, "eval")
    require(data.tokenizer in TOKENIZERS,
            f"unknown data.tokenizer '{data.tokenizer}'; accepted: {', '.join(TOKENIZERS)}")
    require(data.tokenizer != "bpe" or data.vocab_size >= 257,
            f"data.vocab_size must be >= 257 for bpe, got {data.vocab_size}")
    require(data.block_size >= 2, f"data.block_size must be >= 2, got {data.block_size}")
    require(lm.steps_per_epoch >= 1, f"lm.steps_per_epoch must be >= 1, got {lm.steps_per_epoch}")
    require(ev.ece_bins >= 1, f"eval.ece_bins must be >= 1, got {ev.ece_bins}")
    require(all(n >= 1 for n in ev.pass_at), f"eval.pass_at must be >= 1, got {ev.pass_at}")
    require(ev.max_blocks >= 0, f"eval.max_blocks must be >= 0, got {ev.max_blocks}")
    require(ev.samples >= 0 and ev.sample_length >= 1,
            f"eval.samples must be >= 0 and eval.sample_length >= 1, got {ev.samples}, "
            f"{ev.sample_length}")
    return data, lm, ev


def check_spec(spec: Mapping[str, Any]) -> None:
    """Validate a resolved spec before any data is loaded."""
    read_config(spec)
    model = dict(spec["model"])
    name = str(model.pop("name", ""))
    require(name in LM_MODELS,
            f"model.name '{name}' has no LM head; lm tasks accept: {', '.join(LM_MODELS)}")
    MODELS.get(name).resolve(model)
    TrainConfig.from_spec(spec["train"])


# --------------------------------------------------------------------------------------------
# Training data: windows of a token stream.
# --------------------------------------------------------------------------------------------


class TokenWindows:
    """Every ``block``-token window of a token stream, indexed by start position and gathered on
    demand (the Trainer indexes it like a tensor of windows; nothing is materialised)."""

    def __init__(self, ids: torch.Tensor, block: int) -> None:
        self.ids, self.block = ids, block
        self.offsets = torch.arange(block, device=ids.device)

    def __len__(self) -> int:
        return len(self.ids) - self.block + 1

    def __getitem__(self, starts: torch.Tensor) -> torch.Tensor:
        return self.ids[starts.unsqueeze(1) + self.offsets]

    def cpu(self) -> TokenWindows:
        return self if self.ids.device.type == "cpu" else TokenWindows(self.ids.cpu(), self.block)


def window_sampler(steps: int) -> Sampler:
    """``steps`` batches of random window starts per epoch (nanoGPT's ``get_batch``)."""

    def sample(windows: Any, batch_size: int, generator: torch.Generator
               ) -> Iterator[torch.Tensor]:
        for _ in range(steps):
            yield torch.randint(len(windows), (batch_size,), generator=generator)

    return sample


# --------------------------------------------------------------------------------------------
# Losses: hidden states and the head, or materialised logits.
# --------------------------------------------------------------------------------------------


class TokenLoss(nn.Module):
    """The loss as the Trainer calls it: hidden states ``[B, T, D]``, targets ``[B, T]``, window
    starts ``[B]`` -> per-token losses ``[B*T]``. ``weight`` returns the model's head weight
    (read, not owned: the optimizer sees it once, through the model)."""

    def __init__(self, inner: Loss, kind: str, weight: Callable[[], torch.Tensor]) -> None:
        super().__init__()
        self.inner, self.kind, self.weight = inner, kind, weight

    def per_token(self, hidden: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                  index: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token losses of flat hidden states [N, D] and targets [N]."""
        if self.kind == "lm-hidden":
            return self.inner(hidden, target, weight=weight, index=index)
        return self.inner(hidden @ weight.to(hidden.dtype).T, target, index=index)

    def forward(self, output: torch.Tensor, target: torch.Tensor, *,
                index: torch.Tensor | None = None) -> torch.Tensor:
        width = output.shape[-1]
        tokens = None
        if index is not None:
            tokens = (index.unsqueeze(1) + torch.arange(output.shape[1], device=index.device))
            tokens = tokens.reshape(-1)
        return self.per_token(output.reshape(-1, width), target.reshape(-1), self.weight(),
                              tokens)

    def on_epoch_end(self, epoch: int) -> None:
        self.inner.on_epoch_end(epoch)


def loss_context(corpus: Corpus, seed: int) -> dict[str, Any]:
    """What an lm task supplies to losses (see the module doc)."""
    targets = corpus.train.ids[1:]
    counts = np.bincount(targets, minlength=corpus.vocab_size)
    return {"num_classes": corpus.vocab_size, "num_train": len(targets),
            "class_counts": tuple(int(c) for c in counts), "seed": seed}


def build_loss(name: str, params: Mapping[str, Any], corpus: Corpus, seed: int,
               model: nn.Module) -> TokenLoss:
    entry = LOSSES.get(name)
    inner = entry.build(params, **loss_context(corpus, seed))
    return TokenLoss(inner, str(entry.tags["consumes"]), lambda: model.head.weight)


def loss_memory(loss: TokenLoss, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                device: torch.device) -> dict[str, float]:
    """Peak memory of one loss forward + backward on a batch's hidden states (computed without
    gradient in eval mode; a copy of the loss, so no state or RNG of the run moves)."""
    with torch.no_grad():
        model.eval()
        hidden = model(x).float()
    h = hidden.reshape(-1, hidden.shape[-1]).detach().requires_grad_()
    w = model.head.weight.detach().clone().requires_grad_()
    probe = copy.deepcopy(loss)

    def work() -> None:
        probe.per_token(h, y.reshape(-1), w).mean().backward()

    peak = peak_bytes(work, device)
    grads = (h.numel() + w.numel()) * h.element_size()
    return {"loss_peak_mb": peak / 2**20, "loss_grads_mb": grads / 2**20}


# --------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------


def eval_blocks(split: TokenisedSplit, block: int, max_blocks: int) -> tuple[int, int]:
    """(number of blocks scored, characters their targets cover): targets are tokens
    ``1 .. n * block`` of the split."""
    n = (len(split.ids) - 1) // block
    if max_blocks:
        n = min(n, max_blocks)
    require(n >= 1, f"a split of {len(split.ids)} tokens is shorter than one block of {block} "
                    "+ 1; lower data.block_size")
    return n, int(split.ends[n * block] - split.ends[0])


@torch.no_grad()
def score_split(trainer: Trainer, split: TokenisedSplit, block: int, ev: EvalConfig,
                vocab: int, device: torch.device) -> dict[str, float]:
    """Next-token metrics on consecutive blocks of a split, a few blocks at a time (so the
    logits held at once stay near 2^24 numbers whatever the vocabulary)."""
    model = trainer.model
    model.eval()
    n, chars = eval_blocks(split, block, ev.max_blocks)
    ids = torch.tensor(split.ids[: n * block + 1])
    x, y = ids[:-1].view(n, block), ids[1:].view(n, block)
    per_batch = max(1, min(64, 2**24 // (block * vocab)))
    scores = TokenScores()
    for start in range(0, n, per_batch):
        xb, yb = x[start : start + per_batch].to(device), y[start : start + per_batch].to(device)
        with trainer.autocast():
            hidden = model(xb)
        logits = model.logits(hidden.float().reshape(-1, hidden.shape[-1]))
        scores.add(logits, yb.reshape(-1))
    return scores.metrics(chars, ev.pass_at, ev.ece_bins)


@torch.no_grad()
def sample_texts(trainer: Trainer, corpus: Corpus, block: int, ev: EvalConfig, seed: int,
                 device: torch.device) -> tuple[list[str], list[str]]:
    """``eval.samples`` continuations sampled at temperature 1, each prompted with one test token
    (evenly spaced through the test split), and the human test text that follows each prompt."""
    model = trainer.model
    model.eval()
    ids = corpus.test.ids
    length = ev.sample_length
    starts = np.linspace(0, max(0, len(ids) - length - 1), ev.samples).astype(int)
    seq = torch.as_tensor(ids[starts]).unsqueeze(1).to(device)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(length):
        with trainer.autocast():
            hidden = model(seq[:, -block:])[:, -1]
        probs = model.logits(hidden.float()).softmax(dim=1).cpu()
        seq = torch.cat([seq, torch.multinomial(probs, 1, generator=generator).to(device)], 1)
    samples = [corpus.decode(row[1:].tolist()) for row in seq.cpu()]
    human = [corpus.decode(ids[s + 1 : s + 1 + length].tolist()) for s in starts]
    return samples, human


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------


SELECTED = ("ce", "bpc", "ppl", "acc")
"""Test metrics also reported at the best-validation-CE epoch."""


def final_metrics(curves: Mapping[str, list[float]]) -> dict[str, float]:
    """Last-epoch test metrics, the best-validation-CE epoch's, and the selection facts."""
    best = int(np.argmin(curves["val_ce"]))
    metrics = {k: v[-1] for k, v in curves.items() if k.startswith("test_")}
    metrics |= {f"test_{m}@best_val": curves[f"test_{m}"][best] for m in SELECTED}
    return metrics | {"val_ce": curves["val_ce"][-1], "val_bpc": curves["val_bpc"][-1],
                      "best_val_ce": curves["val_ce"][best], "best_epoch": float(best + 1),
                      "train_loss": curves["train_loss"][-1]}


def build_model(spec: Mapping[str, Any], block: int, vocab: int) -> nn.Module:
    model_spec = {k: v for k, v in spec["model"].items() if k != "name"}
    return MODELS.get(spec["model"]["name"]).build(model_spec, in_shape=(block,), out_dim=vocab)


@FAMILIES.register(
    "lm",
    accepts=("logits", "lm-hidden"),
    summary=("test_bpc", "test_bpc@best_val", "test_ppl", "test_ece", "distinct_2"),
    check=check_spec,
    supplies=("num_classes", "num_train", "class_counts", "seed"),
)
def run_lm(ctx: RunContext) -> RunOutput:
    """Train a small transformer LM with a logits or lm-hidden loss; next-token metrics on the
    test text, last epoch and best-by-validation, and the diversity of sampled text."""
    spec = ctx.spec
    data, lm, ev = read_config(spec)
    cfg = TrainConfig.from_spec(spec["train"])
    corpus = load_corpus(data.corpus, data.tokenizer, data.vocab_size, data.dir)
    block = data.block_size
    train_ids = torch.tensor(corpus.train.ids).to(ctx.device)
    x_train, y_train = TokenWindows(train_ids[:-1], block), TokenWindows(train_ids[1:], block)

    seed_everything(ctx.seed)
    model = build_model(spec, block, corpus.vocab_size).to(ctx.device)
    loss = build_loss(ctx.loss, ctx.loss_params, corpus, ctx.seed, model).to(ctx.device)
    trainer = Trainer(model, loss, cfg, ctx.device, lm.steps_per_epoch,
                      sampler=window_sampler(lm.steps_per_epoch))
    generator = torch.Generator().manual_seed(ctx.seed)

    probe = torch.arange(cfg.batch_size, device=ctx.device) % len(x_train)
    memory = loss_memory(loss, model, x_train[probe], y_train[probe], ctx.device)

    curves: dict[str, list[float]] = {}
    train_s = 0.0
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        train_loss = trainer.epoch(x_train, y_train, generator, epoch)  # type: ignore[arg-type]
        train_s += time.perf_counter() - start
        scores = {"val": score_split(trainer, corpus.val, block, ev, corpus.vocab_size,
                                     ctx.device),
                  "test": score_split(trainer, corpus.test, block, ev, corpus.vocab_size,
                                      ctx.device)}
        if not math.isfinite(scores["val"]["ce"]):
            raise Diverged(f"non-finite validation cross-entropy at epoch {epoch + 1}")
        curves.setdefault("train_loss", []).append(train_loss)
        for split, result in scores.items():
            for name, value in result.items():
                curves.setdefault(f"{split}_{name}", []).append(value)
        ctx.report(epoch + 1, cfg.epochs, {"loss": train_loss, "val_bpc": scores["val"]["bpc"],
                                           "test_bpc": scores["test"]["bpc"]})

    tokens = cfg.epochs * lm.steps_per_epoch * cfg.batch_size * block
    metrics = final_metrics(curves) | memory | {"tokens_per_s": tokens / train_s}
    info: dict[str, Any] = dict(corpus.info) | {"block_size": block, "train_tokens": tokens,
                                                "train_s": train_s}
    if ev.samples:
        samples, human = sample_texts(trainer, corpus, block, ev, ctx.seed, ctx.device)
        metrics |= diversity(samples)
        info |= {"human_" + k: v for k, v in diversity(human).items()}
        info["sample"] = samples[0][:400]
    run_info = getattr(loss.inner, "run_info", None)
    if run_info is not None:
        info |= run_info()
    return RunOutput(metrics, curves, info)
