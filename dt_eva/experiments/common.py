"""What the pre-training and fine-tuning drivers share: the DDP session, claiming the run directory on
rank 0 without leaving other ranks waiting and holding it, the batch split and the evaluation callback."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterator, Mapping, TypeVar

import torch

from dt_eva.config import save_config
from dt_eva.evaluation import evaluate_policy
from dt_eva.runs.guard import OpenRun, open_run_dir
from dt_eva.runs.layout import RunPaths
from dt_eva.runs.status import plan_run as plan_run_status
from dt_eva.training.distributed import DistContext, broadcast_object, init_distributed, shutdown_distributed
from dt_eva.utils.precision import precision_name

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
    """`runs.status.plan_run` on rank 0, its decision (or error) handed to every rank."""
    return on_main(dist, lambda: plan_run_status(paths.root, kind, cfg, resume=resume, force=force))


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
                 device: torch.device, results: dict[int, dict], autocast_dtype: torch.dtype | None
                 ) -> Callable[[torch.nn.Module, int], dict[str, float]]:
    """The Trainer's evaluation callback: online rollouts on `tasks` conditioned on `targets`, at the
    run's resolved precision `autocast_dtype` (what training runs at, never re-resolved here);
    keeps each full result in `results[step]` and returns the flat scalars for the metrics."""

    def eval_fn(model: torch.nn.Module, step: int) -> dict[str, float]:
        result = evaluate_policy(
            model, tasks, episodes=episodes, seed=seed, target_returns=targets, device=str(device),
            progress=False, autocast_dtype=autocast_dtype,
        )
        results[step] = {**result, "train_precision": precision_name(autocast_dtype)}
        return flatten_eval(result)

    return eval_fn


@contextlib.contextmanager
def distributed_session(device_spec: str) -> Iterator[DistContext]:
    """DDP for the life of a run (when under torchrun; else a one-process context), shut down however it ends."""
    dist = init_distributed(device_spec)
    try:
        yield dist
    finally:
        shutdown_distributed(dist)


def holding(run: OpenRun | None) -> ContextManager[Any]:
    """A `with` block that releases the run's lock (rank 0's `OpenRun`) however training ends; a no-op elsewhere."""
    return contextlib.nullcontext() if run is None else run
