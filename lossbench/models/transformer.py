"""A small decoder-only transformer (nanoGPT-scale) for the ``lm`` family.

The model returns the final hidden states ``[B, T, D]``, not logits: the LM head is a separate
weight (``model.head``, ``[V, D]``) that the loss reads, so a loss can compute cross-entropy from
(hidden, weight) without materialising the ``[B*T, V]`` logits (Cut Cross-Entropy), or build the
logits itself (``model.logits``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lossbench.models import MODELS


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through torch's fused ``scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention then a 4x GELU MLP, each with a residual."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.mlp(self.ln2(x))


class DecoderLM(nn.Module):
    """Token + learned position embeddings, ``layers`` blocks, a final LayerNorm; ``head`` maps
    hidden states to vocabulary logits and is applied by the loss (or ``logits``)."""

    def __init__(self, vocab: int, context: int, layers: int, heads: int, width: int,
                 dropout: float) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, T]`` (T <= context) -> hidden states ``[B, T, D]``."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(positions))
        for block in self.blocks:
            x = block(x)
        return self.ln(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states -> vocabulary logits through the LM head."""
        return hidden @ self.head.weight.to(hidden.dtype).T


@MODELS.register("gpt")
def gpt(in_shape: tuple[int, ...], out_dim: int, layers: int = 4, heads: int = 4,
        width: int = 128, dropout: float = 0.0) -> nn.Module:
    """Decoder-only transformer (nanoGPT-style, pre-LN, causal SDPA); ``in_shape`` = (context,),
    ``out_dim`` = vocabulary size. Returns hidden states; the LM head is ``model.head``."""
    if min(layers, heads, width) <= 0 or len(in_shape) != 1 or in_shape[0] <= 0:
        raise ValueError(f"layers, heads, width and the context must be > 0, got {layers}, "
                         f"{heads}, {width}, {in_shape}")
    if width % heads:
        raise ValueError(f"width must be a multiple of heads, got width={width}, heads={heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return DecoderLM(out_dim, in_shape[0], layers, heads, width, dropout)
