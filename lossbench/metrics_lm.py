"""Language-model metrics: next-token scores accumulated chunk by chunk, and the diversity of
sampled text. Pure functions of tensors and strings.

Per token: cross-entropy in nats, bits per character (the test text's total negative
log-likelihood in bits over its number of characters, so it compares across tokenisations),
perplexity ``exp(CE per token)``, next-token accuracy and ECE (percent), and pass@N of the next
token, ``1 - (1 - p_y)^N``: the chance that N samples from the model's softmax include the
actual next token (the DCO paper's quantity, in percent).

Sampled text (Li et al., NAACL 2016, distinct-n; Welleck et al., ICLR 2020, seq-rep-n): text is
split into words at whitespace, so the numbers compare across tokenisations. ``distinct-n`` is
the number of distinct word n-grams over the number of word n-grams, pooled over all samples;
``rep-n`` is the fraction of repeated n-grams within one sample (``1 - distinct / total``),
averaged over samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lossbench.metrics import confidence_ece


@dataclass
class TokenScores:
    """Per-token quantities of one split, gathered chunk by chunk on the CPU."""

    log_py: list[torch.Tensor] = field(default_factory=list)
    confidence: list[torch.Tensor] = field(default_factory=list)
    correct: list[torch.Tensor] = field(default_factory=list)

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Score one chunk: ``logits`` [n, V], ``target`` [n]."""
        logp = logits.float().log_softmax(dim=1)
        best, pred = logp.max(dim=1)
        self.log_py.append(logp.gather(1, target.unsqueeze(1)).squeeze(1).double().cpu())
        self.confidence.append(best.exp().cpu())
        self.correct.append((pred == target).float().cpu())

    def metrics(self, chars: int, pass_at: Sequence[int], bins: int) -> dict[str, float]:
        """The split's scores; ``chars`` is the number of characters the scored tokens cover."""
        log_py = torch.cat(self.log_py)
        nll = -float(log_py.sum())
        ce = nll / len(log_py)
        out = {"ce": ce, "bpc": nll / math.log(2.0) / chars,
               "ppl": math.exp(ce) if ce < 700 else math.inf,
               "acc": 100.0 * float(torch.cat(self.correct).mean()),
               "ece": confidence_ece(torch.cat(self.confidence), torch.cat(self.correct), bins)}
        for n in pass_at:
            out[f"pass@{n}"] = 100.0 * float(pass_at_n(log_py, n).mean())
        return out


def pass_at_n(log_py: torch.Tensor, n: int) -> torch.Tensor:
    """``1 - (1 - p)^n`` from ``log p``, as ``-expm1(n log1p(-p))`` (accurate for small p)."""
    return -torch.expm1(n * torch.log1p(-log_py.exp()))


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all word n-grams, pooled over ``texts`` (0 if there are none)."""
    grams = [g for text in texts for g in ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(texts: Sequence[str], n: int = 4) -> float:
    """seq-rep-n: per text, the fraction of its word n-grams that repeat an earlier one; mean over
    the texts that have n-grams (0 if none does)."""
    rates = []
    for text in texts:
        grams = ngrams(text.split(), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def diversity(texts: Sequence[str], orders: Sequence[int] = (1, 2, 3, 4)) -> dict[str, float]:
    """``distinct_n`` for each order and ``rep_4`` of a set of texts."""
    return {f"distinct_{n}": distinct_n(texts, n) for n in orders} | {
        "rep_4": repetition(texts, 4)}
