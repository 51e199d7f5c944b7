"""Worker for tests/test_eva_distributed.py, launched with `torchrun --nproc_per_node=2`.

Each rank feeds its own half of every batch (rows rank*H .. rank*H+H-1 of a shared, seeded batch)
and saves its EvaResult to <out>/rank<r>[_short]. The "short" run gives rank 1 one batch fewer,
so both ranks must stop together after rank 1 runs out.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from dt_eva.eva import EvaConfig, compute_eva

sys.path.insert(0, str(Path(__file__).parent))
from test_eva_distributed import NUM_BATCHES, build_model, full_batches  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model()
    config = EvaConfig(rank=2, rho=2.0, tau=0.99, max_batches=NUM_BATCHES, progress=False)

    def my_half(n):
        for x in full_batches(n):
            h = x.shape[0] // world
            yield x[rank * h : (rank + 1) * h]

    result = compute_eva(model, my_half(NUM_BATCHES), config)
    result.save(out / f"rank{rank}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short = compute_eva(model, my_half(3 - rank), EvaConfig(rank=2, tau=1.0, progress=False))
    assert short.num_batches == 2, short.num_batches
    assert any("batches ran out" in str(w.message) for w in caught)
    short.save(out / f"rank{rank}_short")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
