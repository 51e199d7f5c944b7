"""Worker for tests/test_eva_distributed.py, launched with `torchrun --nproc_per_node=2`.

Each rank feeds its own half of every batch (rows rank*H .. rank*H+H-1 of a shared, seeded batch),
so the data differ per rank while the EvaConfig is the same, and saves under <out>/:
- rank<r>:         compute_eva's result (rank 0's, broadcast to every rank);
- rank<r>_local:   the result this rank computed itself, before that final broadcast;
- rank<r>_seeded[_local]: the same with a randomized SVD whose start directions come from the seed;
- rank<r>_short:   rank 1 gets one batch fewer, so both ranks must stop together when it runs out;
- rank<r>_refused.txt: the error compute_eva raises when the seed differs per rank.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

import dt_eva.eva.core as eva_core
from dt_eva.eva import EvaConfig, compute_eva

sys.path.insert(0, str(Path(__file__).parent))
from test_eva_distributed import NUM_BATCHES, SEEDED, build_model, full_batches  # noqa: E402


def record_local_results() -> list:
    """Keep a copy of each result this rank computes, taken before compute_eva broadcasts rank 0's
    result to every rank (that broadcast would hide ranks that drifted apart)."""
    local = []
    run = eva_core._EvaRun.run

    def recording_run(self, batches):
        result = run(self, batches)
        local.append(copy.deepcopy(result))
        return result

    eva_core._EvaRun.run = recording_run
    return local


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model()
    local = record_local_results()

    def my_half(n):
        for x in full_batches(n):
            h = x.shape[0] // world
            yield x[rank * h : (rank + 1) * h]

    config = EvaConfig(rank=2, rho=2.0, tau=0.99, max_batches=NUM_BATCHES, progress=False)
    compute_eva(model, my_half(NUM_BATCHES), config).save(out / f"rank{rank}")
    local[-1].save(out / f"rank{rank}_local")

    compute_eva(model, my_half(NUM_BATCHES), EvaConfig(**SEEDED)).save(out / f"rank{rank}_seeded")
    local[-1].save(out / f"rank{rank}_seeded_local")

    # a per-rank seed breaks the contract: every rank refuses it (none is left waiting in a collective)
    try:
        compute_eva(model, my_half(NUM_BATCHES), EvaConfig(**{**SEEDED, "seed": SEEDED["seed"] + rank}))
    except ValueError as err:
        (out / f"rank{rank}_refused.txt").write_text(str(err))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short = compute_eva(model, my_half(3 - rank), EvaConfig(rank=2, tau=1.0, progress=False))
    assert short.num_batches == 2, short.num_batches
    assert any("batches ran out" in str(w.message) for w in caught)
    short.save(out / f"rank{rank}_short")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
