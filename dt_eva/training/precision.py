"""Device and mixed-precision choice: bf16 autocast where the device has it, fp32 elsewhere."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """"auto" -> CUDA (this rank's GPU under DDP) when available, else CPU; "cuda" / "cuda:N" / "cpu"."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={spec!r} but CUDA is not available here; use train.device=cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (`torch.bfloat16`) or None for plain fp32.

    "auto": bf16 on CUDA devices that support it (Ampere and newer), fp32 on CPU; bf16 needs no loss
    scaling, so there is no GradScaler. "bf16" forces bf16 autocast (also on CPU); "fp32" disables it.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("train.precision=bf16 but this GPU has no bf16 support; use precision=fp32 or auto")
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    raise ValueError(f"unknown precision {precision!r}; use auto, bf16 or fp32")


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """`torch.autocast` for `dtype`, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else str(dtype).replace("torch.", "").replace("bfloat16", "bf16")
