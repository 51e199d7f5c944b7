"""Causal self-attention with a choice of kernels.

Backends (`DTConfig.attn_backend`):
- "sdpa":  `torch.nn.functional.scaled_dot_product_attention(is_causal=True)`; no mask tensor is
  built, so PyTorch picks its fused flash / memory-efficient kernels (CPU and GPU). One exception:
  training on CPU with attention dropout, where PyTorch's SDPA has no fused kernel and falls back to
  its unfused math path; there we run our own math path instead, the same computation with a cached
  causal mask and the cheaper dropout mask of `dropout.py`.
- "flash": `flash_attn.flash_attn_func(causal=True)` (GPU, fp16/bf16 only).
- "auto":  flash when it is installed and the call runs on CUDA in fp16/bf16, else sdpa.
- "eager": explicit softmax(QK^T / sqrt(d) + causal mask) V with `F.dropout`; slow, the reference
  for tests.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import FastDropout, fast_dropout

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_flash_attn_func: Callable | None = None
_flash_checked = False


def flash_attn_available() -> bool:
    """True when the `flash_attn` package imports (it needs a CUDA build)."""
    return _load_flash_attn() is not None


def _load_flash_attn() -> Callable | None:
    global _flash_attn_func, _flash_checked
    if not _flash_checked:
        _flash_checked = True
        try:
            from flash_attn import flash_attn_func  # type: ignore[import-not-found]

            _flash_attn_func = flash_attn_func
        except Exception:  # ImportError, or a broken CUDA build raising at import
            _flash_attn_func = None
    return _flash_attn_func


def require_flash_attn() -> Callable:
    """The `flash_attn_func` kernel, or a `ValueError` that says how to install it."""
    fn = _load_flash_attn()
    if fn is None:
        raise ValueError(
            "attn_backend='flash' needs the flash-attn package (CUDA only), which is not installed; "
            "install it with `pip install dt-eva[gpu]` or use attn_backend='auto' / 'sdpa'"
        )
    return fn


def future_mask(t_query: int, t_key: int, query_offset: int = 0, query_stride: int = 1,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool `[t_query, t_key]`, True where key j lies after query i's position `offset + i * stride`."""
    positions = query_offset + query_stride * torch.arange(t_query, device=device)
    return torch.arange(t_key, device=device) > positions[:, None]


def eager_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
                           query_offset: int = 0, query_stride: int = 1) -> torch.Tensor:
    """Reference attention on `[B, heads, T, d]` tensors: softmax(QK^T/sqrt(d) + causal mask) V,
    where query i sits at sequence position `query_offset + i * query_stride`."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    future = future_mask(q.shape[-2], k.shape[-2], query_offset, query_stride, device=q.device)
    weights = F.dropout(torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1), p=dropout_p)
    return weights @ v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused `qkv` projection and an output `proj`."""

    def __init__(self, hidden_size: int, n_head: int, dropout: float, backend: str = "auto") -> None:
        super().__init__()
        self.n_head = n_head
        self.head_dim = hidden_size // n_head
        self.dropout = dropout
        self.backend = backend
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.resid_dropout = FastDropout(dropout)
        self._mask_cache: dict[tuple, torch.Tensor] = {}
        if backend == "flash":
            require_flash_attn()  # fail at construction, not at the first step

    def _use_flash(self, x: torch.Tensor) -> bool:
        if self.backend == "flash":
            if not x.is_cuda or x.dtype not in _FLASH_DTYPES:
                raise ValueError(
                    "attn_backend='flash' needs CUDA tensors in float16/bfloat16 (use autocast), "
                    f"got {x.device.type} {x.dtype}; use attn_backend='auto' to fall back to SDPA"
                )
            return True
        return self.backend == "auto" and x.is_cuda and x.dtype in _FLASH_DTYPES and flash_attn_available()

    def _future_mask(self, t_query: int, t_key: int, offset: int, stride: int, device: torch.device) -> torch.Tensor:
        key = (t_query, t_key, offset, stride, device)
        if key not in self._mask_cache:  # a handful of shapes per run (context lengths)
            self._mask_cache[key] = future_mask(t_query, t_key, offset, stride, device)
        return self._mask_cache[key]

    def _allowed_mask(self, t_query: int, t_key: int, offset: int, stride: int, device: torch.device) -> torch.Tensor:
        key = ("allowed", t_query, t_key, offset, stride, device)
        if key not in self._mask_cache:
            self._mask_cache[key] = ~self._future_mask(t_query, t_key, offset, stride, device)
        return self._mask_cache[key]

    def _additive_future_mask(self, t_query: int, t_key: int, offset: int, stride: int,
                              dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = ("additive", t_query, t_key, offset, stride, dtype, device)
        if key not in self._mask_cache:
            mask = self._future_mask(t_query, t_key, offset, stride, device)
            self._mask_cache[key] = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(mask, float("-inf"))
        return self._mask_cache[key]

    def _cpu_dropout_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
                               offset: int, stride: int) -> torch.Tensor:
        """softmax(QK^T/sqrt(d) + causal mask) with dropout, times V, on `[B, heads, T, d]` tensors.

        SDPA has no fused CPU kernel with dropout; this math path fuses the scale and the (cached,
        additive) mask into one `baddbmm` and uses the cheap dropout mask.
        """
        b, h, t_q, d = q.shape
        t = k.shape[2]
        mask = self._additive_future_mask(t_q, t, offset, stride, q.dtype, q.device)
        scores = torch.baddbmm(mask, q.reshape(b * h, t_q, d), k.reshape(b * h, t, d).transpose(1, 2),
                               alpha=1.0 / math.sqrt(d))
        weights = fast_dropout(torch.softmax(scores, dim=-1), dropout_p)
        return torch.bmm(weights, v.reshape(b * h, t, d)).view(b, h, t_q, d)

    def forward(self, x: torch.Tensor, query_tokens: tuple[int, int] | None = None) -> torch.Tensor:
        """Attention output `[B, T, C]`, or `[B, T_q, C]` for the queries `x[:, offset::stride]`
        when `query_tokens=(offset, stride)` (keys and values still cover all T tokens)."""
        b, t, c = x.shape
        # [B, T, 3, heads, d]: flash-attn takes [B, T, heads, d] directly, SDPA wants heads first.
        qkv = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim)
        dropout_p = self.dropout if self.training else 0.0
        if query_tokens is None and self._use_flash(qkv):
            q, k, v = qkv.unbind(2)
            y = require_flash_attn()(q, k, v, dropout_p=dropout_p, causal=True)
            return self.resid_dropout(self.proj(y.reshape(b, t, c)))

        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, T, d] each
        offset, stride = query_tokens if query_tokens is not None else (0, 1)
        if query_tokens is not None:
            q = q[:, :, offset::stride]
        t_q = q.shape[2]
        if self.backend == "eager":
            y = eager_causal_attention(q, k, v, dropout_p, offset, stride)
        elif dropout_p > 0.0 and q.device.type == "cpu":
            y = self._cpu_dropout_attention(q, k, v, dropout_p, offset, stride)
        elif query_tokens is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif t_q == 1 and offset == t - 1:  # the last token alone (inference) sees every key: no mask
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:  # strided queries: is_causal would align query i with key i, so pass the mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self._allowed_mask(t_q, t, offset, stride, q.device),
                                               dropout_p=dropout_p)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t_q, c)))
