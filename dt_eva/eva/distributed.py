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


def _collective_device() -> torch.device:
    """Where tensors must be for the process group's backend: CPU for gloo, this rank's GPU otherwise."""
    if dist.get_backend() == "gloo" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def gather_rows(rows: Tensor) -> Tensor:
    """Concatenate the (r_i, d) row blocks of all ranks, in rank order (r_i may differ)."""
    if not is_distributed():
        return rows
    device = _collective_device()
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
    device = _collective_device()
    t = flags.to(device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.to(device=flags.device, dtype=torch.bool)


def any_rank_stopped(stopped: bool) -> bool:
    """True on every rank as soon as one rank has no more batches, so collectives never hang."""
    if not is_distributed():
        return stopped
    probe = torch.tensor([int(stopped)], dtype=torch.long, device=_collective_device())
    dist.all_reduce(probe, op=dist.ReduceOp.MAX)
    return bool(probe.item())


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's value of a small picklable object, in rank order (`[obj]` when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


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
    device = _collective_device()
    t = tensor.to(device).contiguous().clone()
    dist.broadcast(t, src=0)
    return t.to(tensor.device)
