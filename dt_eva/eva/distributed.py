"""torch.distributed helpers: EVA sees the activations of every rank and every rank ends identical."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def _collective_device(tensor: Tensor) -> torch.device:
    # gloo works on CPU tensors; NCCL needs CUDA ones
    return tensor.device if dist.get_backend() != "gloo" else torch.device("cpu")


def gather_rows(rows: Tensor) -> Tensor:
    """Concatenate the (r_i, d) row blocks of all ranks, in rank order (r_i may differ)."""
    if not is_distributed():
        return rows
    device = _collective_device(rows)
    local = rows.to(device)
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.long, device=device))
    counts = [int(s.item()) for s in sizes]
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local
    blocks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(blocks, padded.contiguous())
    return torch.cat([b[:c] for b, c in zip(blocks, counts)], dim=0).to(rows.device)


def all_ranks_true(flags: Tensor) -> Tensor:
    """Element-wise AND of a bool vector over ranks (identity when not distributed)."""
    if not is_distributed():
        return flags
    device = _collective_device(flags)
    t = flags.to(device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.to(device=flags.device, dtype=torch.bool)


def any_rank_stopped(stopped: bool, device: torch.device) -> bool:
    """True on every rank as soon as one rank has no more batches, so collectives never hang."""
    if not is_distributed():
        return stopped
    probe = torch.zeros(1, dtype=torch.long, device=device if dist.get_backend() != "gloo" else "cpu")
    probe[0] = int(stopped)
    dist.all_reduce(probe, op=dist.ReduceOp.MAX)
    return bool(probe.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of a small picklable object on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensor(tensor: Tensor) -> Tensor:
    """Rank 0's copy of a tensor whose shape is the same on every rank."""
    if not is_distributed():
        return tensor
    device = _collective_device(tensor)
    t = tensor.to(device).contiguous().clone()
    dist.broadcast(t, src=0)
    return t.to(tensor.device)
