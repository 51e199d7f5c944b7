"""Pre-LN GPT-2 transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

from __future__ import annotations

import torch
from torch import nn

from .attention import CausalSelfAttention
from .dropout import FastDropout


class MLP(nn.Module):
    """GELU feed-forward with 4x expansion: `fc` -> GELU -> `proj` -> dropout."""

    def __init__(self, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden_size, 4 * hidden_size)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * hidden_size, hidden_size)
        self.dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """One pre-LN block; module names `ln1`, `attn.qkv`, `attn.proj`, `ln2`, `mlp.fc`, `mlp.proj`."""

    def __init__(self, hidden_size: int, n_head: int, dropout: float, attn_backend: str) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden_size)
        self.attn = CausalSelfAttention(hidden_size, n_head, dropout, attn_backend)
        self.ln2 = nn.LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size, dropout)

    def forward(self, x: torch.Tensor, query_tokens: tuple[int, int] | None = None) -> torch.Tensor:
        """`[B, T, C] -> [B, T, C]`; with `query_tokens=(offset, stride)` only the tokens
        `x[:, offset::stride]` are computed (they still attend to all earlier tokens)."""
        residual = x if query_tokens is None else x[:, query_tokens[0]::query_tokens[1]]
        x = residual + self.attn(self.ln1(x), query_tokens)
        return x + self.mlp(self.ln2(x))
