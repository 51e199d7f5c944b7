"""torch.distributed set-up for `torchrun`: one process per device, DistributedDataParallel.

Launched with `torchrun --nproc_per_node=N -m dt_eva.cli pretrain ...` the environment carries
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; without torchrun everything is a single process and
these helpers are no-ops. Backend: NCCL for CUDA, gloo for CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dt_eva.utils.precision import resolve_device

# Rank 0 evaluates online while the other ranks wait in the next collective; give it time.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False  # this context initialised the process group and must destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_spec: str = "auto") -> DistContext:
    """Join the torchrun job (if any) and pick this rank's device.

    Reuses a process group the caller already initialised (and then leaves it to the caller).
    """
    if not launched_by_torchrun() and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=resolve_device(device_spec))
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        owns = True
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=dist.get_backend(),
        owns_group=owns,
    )


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (just `[obj]` without DDP)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (in place on a copy); identity without DDP."""
    if not ctx.enabled:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True when `flag` is true on at least one rank (a collective: every rank must call it)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def rank_seed(seed: int, rank: int) -> int:
    """Per-rank seed for data sampling and dropout; rank 0 keeps `seed` so 1-process runs match it."""
    return seed + 100_003 * rank
