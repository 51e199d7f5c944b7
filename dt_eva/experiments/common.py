"""What the pre-training and fine-tuning drivers share: claiming the run directory on rank 0 without
leaving other ranks waiting, the batch split, the evaluation callback and the summary file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch

from dt_eva.config import load_config, save_config
from dt_eva.evaluation import evaluate_policy
from dt_eva.runs.guard import OpenRun, check_resume_compatible, open_run_dir, plan_run_dir
from dt_eva.runs.layout import RunPaths
from dt_eva.training.distributed import DistContext, broadcast_object, init_distributed, shutdown_distributed

T = TypeVar("T")


def on_main(dist: DistContext, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 and hand its result, or its error, to every rank (none waits forever)."""
    result, error = None, None
    if dist.is_main:
        try:
            result = fn()
        except Exception as e:  # re-raised below, on every rank
            error = e
    result, error = broadcast_object(dist, (result, error))
    if error is not None:
        raise error
    return result  # type: ignore[return-value]


def plan_run(dist: DistContext, cfg: Any, paths: RunPaths, kind: str, resume: bool, force: bool) -> str:
    """Decide (without touching the disk) whether the run is new, resumed or restarted, and check a
    resumed run's saved config against `cfg`."""

    def plan() -> str:
        decision = plan_run_dir(paths.root, kind, resume=resume, force=force)
        if decision == "resume" and paths.config.is_file():
            check_resume_compatible(load_config(type(cfg), paths.config), cfg, paths.root)
        return decision

    return on_main(dist, plan)


def claim_run(dist: DistContext, cfg: Any, paths: RunPaths, kind: str, resume: bool, force: bool,
              meta: Mapping[str, Any] | None = None) -> tuple[OpenRun | None, bool]:
    """Rank 0 creates / locks / marks the run directory and saves the config; the last step before
    anything is deleted or written. Returns (the open run on rank 0, whether a checkpoint will be resumed)."""
    holder: dict[str, OpenRun] = {}

    def claim() -> bool:
        run = open_run_dir(paths.root, kind, resume=resume, force=force, meta=dict(meta or {}))
        holder["run"] = run
        try:
            save_config(cfg, paths.config)
        except BaseException:
            run.close()
            raise
        return run.resume

    resuming = on_main(dist, claim)
    return holder.get("run"), bool(resuming)


def local_batch_size(global_batch: int, world_size: int) -> int:
    """This rank's share of the global batch; it must divide evenly."""
    if global_batch % world_size:
        raise ValueError(
            f"train.batch_size={global_batch} is the global batch and must be divisible by the number of "
            f"processes ({world_size}); use e.g. train.batch_size={global_batch - global_batch % world_size or world_size}"
        )
    return global_batch // world_size


def flatten_eval(result: Mapping[str, Any]) -> dict[str, float]:
    """`evaluate_policy` result -> `{"eval/<task>/success_any": ..., "eval/success_any": ...}`."""
    out: dict[str, float] = {}
    for task, stats in result.get("tasks", {}).items():
        for key in ("success_any", "success_final", "return_mean"):
            if key in stats:
                out[f"eval/{task}/{key}"] = float(stats[key])
    for key, value in result.get("mean", {}).items():
        out[f"eval/{key}"] = float(value)
    return out


def make_eval_fn(tasks: list[str], targets: dict[str, float], episodes: int, seed: int,
                 device: torch.device, results: dict[int, dict], precision: str
                 ) -> Callable[[torch.nn.Module, int], dict[str, float]]:
    """The Trainer's evaluation callback: online rollouts on `tasks` conditioned on `targets`, at the
    run's resolved `precision` ("fp32" or "bf16": what training runs at, never re-resolved here);
    keeps each full result in `results[step]` and returns the flat scalars for the metrics."""

    def eval_fn(model: torch.nn.Module, step: int) -> dict[str, float]:
        result = evaluate_policy(
            model, tasks, episodes=episodes, seed=seed, target_returns=targets, device=str(device),
            progress=False, precision=precision,
        )
        results[step] = {**result, "train_precision": precision}
        return flatten_eval(result)

    return eval_fn


def run_experiment(cfg: Any, prepare: Callable[..., Any], finish: Callable[[Any, Any], Any], resume: bool,
                   force: bool) -> Path:
    """The run wrapper of both drivers: set up DDP (when under torchrun), prepare (validate, claim the run
    directory, build), train, finish; the run's lock is released and DDP shut down however it ends."""
    dist = init_distributed(cfg.train.device)
    try:
        setup = prepare(cfg, resume=resume, force=force, dist=dist)
        try:
            finish(setup, setup.trainer.fit(resume=setup.resume))
        finally:
            if setup.run is not None:
                setup.run.close()
        return setup.run_dir
    finally:
        shutdown_distributed(dist)
