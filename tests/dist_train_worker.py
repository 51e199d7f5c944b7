"""Helper for tests/test_training.py: one torchrun rank of a pre-training run.

    torchrun --standalone --nproc_per_node=2 tests/dist_train_worker.py OUT_DIR key=value ...

Runs the same code as `run_pretrain` (prepare, fit, finish), then saves this rank's final weights to
`OUT_DIR/rank<r>.pt` so the test can check that every rank ends with identical parameters, with the
steps at which the loop's stop-flag all-reduce ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dt_eva.config import load_config
from dt_eva.experiments.pretrain import finish_pretrain, prepare_pretrain
from dt_eva.runs.configs import PretrainConfig
from dt_eva.training import init_distributed, loop, shutdown_distributed


def main(out_dir: str, overrides: list[str]) -> None:
    cfg = load_config(PretrainConfig, None, overrides)
    dist = init_distributed(cfg.train.device)
    stop_checks: list[int] = []  # the steps at which the ranks agreed on the stop flag (a collective)
    agree = loop.any_rank

    def counted_any_rank(ctx, flag):
        stop_checks.append(setup.trainer.step)
        return agree(ctx, flag)

    loop.any_rank = counted_any_rank
    try:
        setup = prepare_pretrain(cfg, dist=dist)
        result = setup.trainer.fit()
        finish_pretrain(setup, result)
        if setup.run is not None:
            setup.run.close()
        state = {k: v.detach().cpu() for k, v in setup.trainer.model.state_dict().items()}
        torch.save({"state": state, "backend": dist.backend, "world_size": dist.world_size, "stop_checks": stop_checks},
                   Path(out_dir) / f"rank{dist.rank}.pt")
    finally:
        shutdown_distributed(dist)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
