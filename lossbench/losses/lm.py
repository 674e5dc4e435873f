"""Language-modelling losses that read hidden states and the LM head (``consumes="lm-hidden"``).

Contract of the kind: ``forward(hidden [N, D], target [N], *, weight [V, D], index=None) -> [N]``
per-token losses, with the logits ``z = hidden @ weight.T`` left to the loss: Cut Cross-Entropy
never builds them whole, EMO also reads the head's rows as token embeddings for its transport
cost. The ``lm`` family supplies both (``lossbench.families.lm``); logits losses run there
through an adapter that materialises ``z``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from lossbench.losses.base import LOSSES, Loss


class HiddenStateLoss(Loss):
    """Base of the ``lm-hidden`` kind: per-token losses from hidden states and the head weight."""

    consumes = "lm-hidden"

    def forward(  # type: ignore[override]
        self, output: Tensor, target: Tensor, *, weight: Tensor, index: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError


def _check(ok: bool, message: str) -> None:
    """Range checks raise ValueError; the registry turns it into a one-line UserError."""
    if not ok:
        raise ValueError(message)


# --------------------------------------------------------------------------------------------
# Cut Cross-Entropy.
# --------------------------------------------------------------------------------------------


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


class CutCrossEntropyFunction(torch.autograd.Function):
    """``CE_i = logsumexp_v(h_i . w_v) - h_i . w_{y_i}`` over (token block x vocabulary block)
    tiles: the forward keeps only the running log-sum-exp per token; the backward recomputes
    each tile's softmax and accumulates ``grad_hidden`` and ``grad_weight`` tile by tile.

    Memory beyond the inputs and the gradients every method returns: one tile of logits (plus
    its temporaries) and the per-token log-sum-exp. ``filter_eps > 0`` skips, in the backward,
    every tile whose softmax values are all below it (their gradient is below the precision of
    the sums they would join); ``stats`` counts tiles seen and skipped.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, hidden: Tensor, weight: Tensor, target: Tensor,  # type: ignore[override]
                token_block: int, vocab_block: int, filter_eps: float,
                stats: dict[str, int]) -> Tensor:
        n, v = hidden.shape[0], weight.shape[0]
        lse = hidden.new_full((n,), -math.inf)
        for rows in _blocks(n, token_block):
            h = hidden[rows]
            for cols in _blocks(v, vocab_block):
                tile = h @ weight[cols].T
                lse[rows] = torch.logaddexp(lse[rows], tile.logsumexp(dim=1))
        target_logit = torch.linalg.vecdot(hidden, weight[target])
        ctx.save_for_backward(hidden, weight, target, lse)
        ctx.blocks = (token_block, vocab_block, filter_eps)  # type: ignore[attr-defined]
        ctx.stats = stats  # type: ignore[attr-defined]
        return lse - target_logit

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, target, lse = ctx.saved_tensors
        token_block, vocab_block, filter_eps = ctx.blocks
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        seen = skipped = 0
        for rows in _blocks(hidden.shape[0], token_block):
            h, g, m = hidden[rows], grad[rows].unsqueeze(1), lse[rows].unsqueeze(1)
            for cols in _blocks(weight.shape[0], vocab_block):
                w = weight[cols]
                p = torch.mm(h, w.T).sub_(m).exp_()  # the tile's softmax
                seen += 1
                if filter_eps > 0 and float(p.max()) < filter_eps:
                    skipped += 1
                    continue
                p.mul_(g)
                if grad_h is not None:
                    grad_h[rows].addmm_(p, w)
                if grad_w is not None:
                    grad_w[cols].addmm_(p.T, h)
        # The target term -h_i . w_{y_i}: its gradients never go through the vocabulary tiles.
        if grad_h is not None:
            grad_h.sub_(grad.unsqueeze(1) * weight[target])
        if grad_w is not None:
            grad_w.index_add_(0, target, grad.unsqueeze(1) * hidden, alpha=-1.0)
        ctx.stats["tiles"] = ctx.stats.get("tiles", 0) + seen
        ctx.stats["skipped"] = ctx.stats.get("skipped", 0) + skipped
        return grad_h, grad_w, None, None, None, None, None


TILE = 1024
"""Default tile side (tokens and vocabulary): 4 MiB of float32 logits. On a CPU, smaller tiles
were as fast and larger ones slower (benchmarks/RESULTS.md, section 10)."""


def cut_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, token_block: int = TILE,
                      vocab_block: int = TILE, filter_eps: float = 0.0,
                      stats: dict[str, int] | None = None) -> Tensor:
    """Per-token cross-entropy of ``hidden @ weight.T`` without the [N, V] logits (see
    ``CutCrossEntropyFunction``)."""
    return CutCrossEntropyFunction.apply(hidden, weight, target.long(), token_block,
                                         vocab_block, filter_eps,
                                         {} if stats is None else stats)


@LOSSES.register(
    "cce",
    consumes="lm-hidden",
    paper="Wijmans, Huval, Hertzberg, Koltun, Krähenbühl, Cut Your Losses in Large-Vocabulary "
    "Language Models, ICLR 2025 (arXiv:2411.09009)",
)
class CutCrossEntropy(HiddenStateLoss):
    """Cut Cross-Entropy: CE from hidden states and the head without materialising the logits.

    ``CE_i = log sum_v exp(c_v . e_i) - c_{x_i} . e_i``: the paper's split of CE into an
    indexed matrix multiplication (the target logit) and a linear-log-sum-exp (Sec. 4 of the
    paper; the equation numbers could not be checked from here), computed over token x
    vocabulary tiles: forward, an online log-sum-exp per token; backward, each tile's softmax
    recomputed from the saved log-sum-exp and its contribution to both gradients accumulated,
    as the paper's blockwise backward pass does. Values and gradients are those of CE on the
    materialised logits (to float rounding; checked against the ``cut-cross-entropy`` package
    by ``benchmarks/cce_crosscheck.py``). ``filter_eps > 0`` is the paper's gradient
    filtering: tiles whose softmax entries are all below ``filter_eps`` are skipped in the
    backward; 0 (default) is exact. The package's "high" setting is ``finfo(dtype).eps / 32``
    (2^-12 for bf16). The paper's vocabulary sorting (which makes filtering skip more tiles)
    is not done here. Tile sizes change speed and memory, never the values beyond rounding.
    """

    def __init__(self, token_block: int = TILE, vocab_block: int = TILE,
                 filter_eps: float = 0.0) -> None:
        super().__init__()
        _check(token_block >= 1 and vocab_block >= 1,
               f"token_block and vocab_block must be >= 1, got {token_block}, {vocab_block}")
        _check(0.0 <= filter_eps < 1.0, f"filter_eps must be in [0, 1), got {filter_eps}")
        self.token_block, self.vocab_block, self.filter_eps = token_block, vocab_block, filter_eps
        self.stats: dict[str, int] = {}
        """Backward tiles seen and skipped by gradient filtering, over the whole run."""

    def forward(  # type: ignore[override]
        self, output: Tensor, target: Tensor, *, weight: Tensor, index: Tensor | None = None
    ) -> Tensor:
        return cut_cross_entropy(output, weight.to(output.dtype), target, self.token_block,
                                 self.vocab_block, self.filter_eps, self.stats)

    def run_info(self) -> dict[str, Any]:
        """What the run records about gradient filtering."""
        tiles = self.stats.get("tiles", 0)
        return {"cce_filter_eps": self.filter_eps, "cce_backward_tiles": tiles,
                "cce_skipped_tiles": self.stats.get("skipped", 0)}


# --------------------------------------------------------------------------------------------
# EMO.
# --------------------------------------------------------------------------------------------


def demd(logits: Tensor, target: Tensor, embeddings: Tensor) -> Tensor:
    """EMO's differentiable upper bound of the earth mover distance between the model's
    next-token distribution ``q = softmax(z)`` and the one-hot data distribution at ``y``:
    ``sum_k q_k C(k, y)`` with ``C(i, j) = 1 - cos(e_i, e_j)``, computed as
    ``1 - e_y^T (sum_k q_k e_k)`` on unit-normalised embeddings."""
    emb = F.normalize(embeddings.to(logits.dtype), dim=1)
    expected = logits.softmax(dim=1) @ emb
    return 1.0 - torch.linalg.vecdot(emb[target], expected)


EmoCost = Literal["live", "init"]


@LOSSES.register(
    "emo",
    consumes="lm-hidden",
    paper="Ren, Wu, Zhu, EMO: Earth Mover Distance Optimization for Auto-Regressive Language "
    "Modeling, ICLR 2024 (arXiv:2310.04691)",
)
class EMO(HiddenStateLoss):
    """EMO: MLE plus the DEMD upper bound of the earth mover distance, dynamically weighted.

    Per token, ``L = (CE + sg(CE / DEMD) * DEMD) / 2`` (``sg``: stop-gradient), so the value
    equals CE and the gradient is ``(grad CE + (CE / DEMD) grad DEMD) / 2``; ``DEMD = sum_k q_k
    (1 - cos(e_k, e_y))`` (``demd``): the transport plan ``q x p`` is feasible, so DEMD bounds
    the EMD from above, and for a one-hot ``p`` it is the EMD itself. This is the paper's
    language-modelling objective as its official code computes it
    (DRSY/EMO ``language_modeling/gpt2.py``, mode ``emo``; the same formula as ``emo_patch.py``;
    the official one-hot is smoothed by 1e-15, dropped here). The transport cost ``C`` comes from
    the LM head's rows, detached: ``cost = "init"`` freezes them at the first step (the official
    ``emo`` mode, which clones the head of the pre-trained model it fine-tunes); ``cost =
    "live"`` (default) reads the current head every step (the official ``adaptive_emo`` mode):
    a model trained from scratch has no pre-trained head, and a frozen random one makes every
    cost about 1. The PyPI ``EMOLoss`` package's mode 1 clips the ratio at 3; the language
    modelling code does not, nor does this.
    """

    def __init__(self, cost: EmoCost = "live") -> None:
        super().__init__()
        self.cost = cost
        self.register_buffer("frozen", None)

    def forward(  # type: ignore[override]
        self, output: Tensor, target: Tensor, *, weight: Tensor, index: Tensor | None = None
    ) -> Tensor:
        logits = output @ weight.to(output.dtype).T
        ce = F.cross_entropy(logits, target.long(), reduction="none")
        if self.cost == "init":
            if self.frozen is None:
                self.frozen = weight.detach().clone()
            embeddings = self.frozen
        else:
            embeddings = weight.detach()
        bound = demd(logits, target.long(), embeddings)
        return 0.5 * (ce + (ce / (bound + 1e-10)).detach() * bound)
