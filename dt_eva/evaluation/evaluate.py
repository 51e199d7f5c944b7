"""`evaluate_policy`: a model, online, on Meta-World (`dt_eva.experiments.evaluate` does it for a run directory).

Scheduling: the (task, episode) pairs are ordered episode-major (episode 0 of every task, then
episode 1, ...) and cut into chunks of `num_envs`; each chunk is one lock-step batch of 200 steps
with one model forward per step. Envs are pooled per task and reused across chunks (building one
costs ~0.25 s, its layouts ~1.1 s per task). Episode j of a task always plays the same goal layout
(`slots.episode_layout`), so results do not depend on `num_envs` beyond float rounding of the
batched forward.

Pipelining: each chunk is cut into two halves, one model forward per half and step
(`rollout.rollout_groups`). With `env_workers` (default on machines with two or more cores) the
halves' envs step in worker processes, and the model computes one half's actions while the other
half's physics runs. The halves are the same with and without workers, so are the results.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from dt_eva.envs import ACT_DIM, EPISODE_LENGTH, STATE_DIM, resolve_task, resolve_tasks
from dt_eva.evaluation.metrics import mean_over_tasks, summarize_task
from dt_eva.evaluation.env_workers import (
    VectorEnvGroup,
    WorkerEnvGroup,
    default_env_workers,
    split_evenly,
    usable_cores,
)
from dt_eva.evaluation.rollout import model_device_dtype, rollout_groups
from dt_eva.evaluation.slots import LayoutEnv, SlotPool, check_eval_seed, episode_layout, task_layouts
from dt_eva.models import eval_mode
from dt_eva.utils.precision import check_resolved, cpu_model, precision_name

#: Lock-step envs when `num_envs` is None: all episodes at once up to this many (each env holds
#: ~16 MB and costs ~0.25 s to build; beyond a few dozen the batched forward is already amortised).
DEFAULT_MAX_ENVS = 64
#: Each chunk's envs are cut into this many groups, one model forward per group and step.
FORWARD_GROUPS = 2


def evaluate_policy(
    model: nn.Module, tasks: str | Iterable[str], episodes: int = 30, seed: int = 0,
    target_returns: float | Mapping[str, float] | None = None,
    num_envs: int | None = None, device: str = "cpu", progress: bool = True, video_dir: str | Path | None = None, *,
    dataset: Any = None, asynchronous: bool = False, autocast_dtype: torch.dtype | None = None,
    env_workers: int | None = None,
) -> dict[str, Any]:
    """Roll out a Decision Transformer online on Meta-World; success and returns per task.

    Args:
        model: a `dt_eva.models.DecisionTransformer` (or anything with its `cfg` and
            `predict_last_action`); moved to `device`, run in eval mode (its train flag is restored).
            Its `cfg.rtg_scale` / `cfg.reward_scale` divide returns-to-go / rewards before they reach
            it (as in training); R <- min(R - r / rtg_scale, R0) in scaled units after every step.
        tasks: `"cw10"`, `"mt40"`, a comma list or a list of task names.
        episodes: episodes per task; episode j plays layout `episode_layout(seed, j)`.
        seed: evaluation seed; MT1 seeds `seed + 10_000 + j // 50` (disjoint from training data).
        target_returns: raw target return, one number for all tasks or a task -> number mapping;
            tasks without one use the maximum return in `dataset` (the paper's rule).
        num_envs: envs stepped in lock-step (one forward per step for all); None = all episodes
            of all tasks, at most `DEFAULT_MAX_ENVS`.
        video_dir: if given, a GIF of episode 0 of every task goes there when rendering works
            (otherwise a warning).
        dataset: an `OfflineDataset` or a dataset path, for the target returns.
        asynchronous: step envs in worker processes (one per env; gymnasium `AsyncVectorEnv`),
            without pipelining; overrides `env_workers`.
        autocast_dtype: the run's resolved precision, `torch.bfloat16` (autocast) or None (fp32), as
            the driver resolved it once (`dt_eva.utils.precision.resolve_model_precision`); a precision
            option ("auto", ...) is a `TypeError`, bf16 for a model whose weights are not fp32 a `ValueError`.
        env_workers: worker processes that step the envs while the model runs (shared between the
            two halves of each chunk; the model computes one half while the other steps). 0: all in
            this process. None: `default_env_workers()`, i.e. 0 on one core, else one per core
            beyond the first and at least 2. Results do not depend on it. Torch runs with one thread
            per core the workers leave free (at least one) during the call.

    Returns the dict documented in docs/architecture.md ("Evaluation"); `seconds` is the whole
    call, `env_steps_per_s` counts the rollouts only (env construction and video excluded).
    """
    start = time.perf_counter()
    task_list = resolve_tasks(tasks)
    _check_arguments(tasks, task_list, episodes, seed, num_envs, env_workers)
    check_model_fits_envs(model)
    targets = resolve_target_returns(task_list, target_returns, dataset)
    check_resolved(autocast_dtype, model_device_dtype(model)[1])
    workers = 0 if asynchronous else (default_env_workers() if env_workers is None else int(env_workers))

    model.to(device)
    jobs = [(task, j) for j in range(episodes) for task in task_list]  # episode-major: see module doc
    chunk = min(len(jobs), num_envs or DEFAULT_MAX_ENVS)
    played = _play(model, jobs, chunk, seed, targets, autocast_dtype, _LockstepEnvs(asynchronous, workers), progress)
    out = _result(task_list, targets, played, episodes, seed, chunk, workers, autocast_dtype, device, model.cfg)
    if video_dir is not None:
        from dt_eva.evaluation.video import write_episode_gifs

        first = [{"task": t, "layout": episode_layout(seed, 0), "actions": played.first_actions[t]} for t in task_list]
        out["videos"] = write_episode_gifs(video_dir, first)
    out["seconds"] = time.perf_counter() - start
    return out


def _check_arguments(tasks: Any, task_list: list[str], episodes: Any, seed: Any, num_envs: Any,
                     env_workers: Any) -> None:
    """`ValueError` for the first argument of `evaluate_policy` out of its range, before anything is built."""
    if not task_list:
        raise ValueError(f"no tasks to evaluate in {tasks!r}; pass e.g. 'cw10' or 'hammer,push'")
    _check_positive_int("episodes", episodes)
    check_eval_seed(seed, episodes)
    if num_envs is not None:
        _check_positive_int("num_envs", num_envs)
    if env_workers is not None:
        _check_non_negative_int("env_workers", env_workers)


@dataclass
class _Played:
    """Every episode's outcome per task: returns `[episodes]`, successes `[episodes, 200]`, the actions of
    episode 0 (for the video), and the seconds spent in rollouts."""

    returns: dict[str, np.ndarray]
    successes: dict[str, np.ndarray]
    first_actions: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


def _play(model: nn.Module, jobs: list[tuple[str, int]], chunk: int, seed: int, targets: dict[str, float],
          autocast_dtype: torch.dtype | None, envs: "_LockstepEnvs", progress: bool) -> _Played:
    """Play `jobs` ((task, episode) pairs) in lock-step chunks of `chunk` envs; `envs` is closed at the end."""
    from tqdm.auto import tqdm

    episodes = 1 + max(j for _, j in jobs)
    tasks = list(dict.fromkeys(t for t, _ in jobs))
    played = _Played({t: np.zeros(episodes) for t in tasks},
                     {t: np.zeros((episodes, EPISODE_LENGTH), dtype=bool) for t in tasks})
    bar = tqdm(total=len(jobs) * EPISODE_LENGTH, unit="step", desc="evaluate", disable=not progress, leave=False)
    torch_threads = torch.get_num_threads()
    if envs.workers:  # leave the workers their cores (intra-op threads would spin against them)
        torch.set_num_threads(max(1, min(torch_threads, usable_cores() - envs.workers)))
    try:
        with eval_mode(model):
            for lo in range(0, len(jobs), chunk):
                batch_jobs = jobs[lo : lo + chunk]
                groups = envs.prepare(batch_jobs, seed)
                t0 = time.perf_counter()
                try:
                    result = rollout_groups(
                        model, groups, np.array([targets[t] for t, _ in batch_jobs]),
                        on_step=bar.update, autocast_dtype=autocast_dtype,
                    )
                finally:
                    envs.release(groups)
                played.seconds += time.perf_counter() - t0
                for i, (task, j) in enumerate(batch_jobs):
                    played.returns[task][j] = result.returns[i]
                    played.successes[task][j] = result.successes[i]
                    if j == 0:
                        played.first_actions[task] = result.actions[i]
    finally:
        torch.set_num_threads(torch_threads)
        bar.close()
        envs.close()
    return played


def _result(tasks: list[str], targets: dict[str, float], played: "_Played", episodes: int, seed: int, chunk: int,
            workers: int, autocast_dtype: torch.dtype | None, device: str, model_cfg: Any) -> dict[str, Any]:
    """The result dict of `evaluate_policy` (docs/architecture.md, "Evaluation"), `seconds` still 0."""
    per_task = {t: summarize_task(played.returns[t], played.successes[t], targets[t]) for t in tasks}
    return {
        "tasks": per_task,
        "mean": mean_over_tasks(per_task),
        "episodes": int(episodes),
        "seed": int(seed),
        "seconds": 0.0,
        "env_steps_per_s": len(tasks) * episodes * EPISODE_LENGTH / max(played.seconds, 1e-9),
        "num_envs": int(chunk),
        "env_workers": int(workers),
        "precision": precision_name(autocast_dtype),
        "device": str(device),
        "cpu": cpu_model(),
        "rtg_scale": float(model_cfg.rtg_scale),  # the model's own (docs/architecture.md)
        "reward_scale": float(model_cfg.reward_scale),
    }


class _LockstepEnvs:
    """The env groups of each chunk: pooled `LayoutEnv`s stepped here (one group) or in `workers`
    worker processes (one group each), or gymnasium's `AsyncVectorEnv` (`asynchronous`)."""

    def __init__(self, asynchronous: bool, workers: int = 0) -> None:
        self.asynchronous = asynchronous
        self.workers = workers
        self._pool = SlotPool()
        self._async_vec = None
        self._async_tasks: tuple[str, ...] = ()

    def prepare(self, jobs: list[tuple[str, int]], seed: int) -> list:
        import gymnasium as gym

        tasks = [t for t, _ in jobs]
        layouts = [episode_layout(seed, j) for _, j in jobs]
        if not self.asynchronous:
            for task, (mt1_seed, _) in zip(tasks, layouts):
                task_layouts(task, mt1_seed)  # generate (and cache) layouts up front (forked workers inherit them)
            slot_envs = self._pool.take(tasks)
            for env, layout in zip(slot_envs, layouts):
                env.layout = layout
            # Two halves, whatever the number of workers: the model's forward batches (and so the
            # results) are the same with and without workers; the workers are shared out between them.
            halves = split_evenly(slot_envs, FORWARD_GROUPS)
            processes = [self.workers // 2 + self.workers % 2, self.workers // 2][: len(halves)]
            return [
                WorkerEnvGroup(envs, p) if p else
                VectorEnvGroup(gym.vector.SyncVectorEnv([functools.partial(_same, e) for e in envs], copy=False))
                for envs, p in zip(halves, processes)
            ]
        if tuple(tasks) != self._async_tasks:  # same task mix as the last chunk: keep the workers
            self.close()
            self._async_vec = gym.vector.AsyncVectorEnv(
                [functools.partial(LayoutEnv, t) for t in tasks], copy=False
            )
            self._async_tasks = tuple(tasks)
        self._async_vec.set_attr("layout", layouts)
        return [VectorEnvGroup(self._async_vec)]

    @staticmethod
    def release(groups: list) -> None:
        for group in groups:
            group.close()

    def close(self) -> None:
        if self._async_vec is not None:
            self._async_vec.close()
            self._async_vec, self._async_tasks = None, ()
        if not self.asynchronous:
            self._pool.close()


def _same(env):
    return env


def check_model_fits_envs(model: nn.Module) -> None:
    """`ValueError` unless the model's state / action sizes and episode length fit Meta-World."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "predict_last_action"):
        raise ValueError(f"evaluate_policy needs a dt_eva DecisionTransformer, got {type(model).__name__}")
    if (cfg.state_dim, cfg.act_dim) != (STATE_DIM, ACT_DIM):
        raise ValueError(
            f"the model takes state_dim={cfg.state_dim}, act_dim={cfg.act_dim} but Meta-World has "
            f"state_dim={STATE_DIM}, act_dim={ACT_DIM}: it was not trained on Meta-World data"
        )
    if cfg.max_ep_len < EPISODE_LENGTH:
        raise ValueError(
            f"the model's max_ep_len={cfg.max_ep_len} is shorter than Meta-World's {EPISODE_LENGTH}-step episodes"
        )


def resolve_target_returns(
    tasks: list[str], target_returns: float | Mapping[str, float] | None, dataset: Any = None
) -> dict[str, float]:
    """Raw target return per task: given ones first, the rest from `dataset.max_return(task)`."""
    if isinstance(target_returns, numbers.Real) and not isinstance(target_returns, bool):
        given = {t: float(target_returns) for t in tasks}
    elif target_returns is None:
        given = {}
    elif isinstance(target_returns, Mapping):
        given = {resolve_task(t): float(v) for t, v in target_returns.items()}
    else:
        raise ValueError(f"target_returns must be a number, a task -> number mapping or None, got {target_returns!r}")
    for task, value in given.items():
        if not math.isfinite(value):
            raise ValueError(f"target return for {task} must be finite, got {value}")
    missing = [t for t in tasks if t not in given]
    if missing:
        ds = _open_dataset(dataset, missing)
        absent = [t for t in missing if t not in ds.tasks]
        if absent:
            raise ValueError(
                f"dataset {ds.path} has no data for {absent}, so their target returns are unknown; "
                "pass target returns (CLI: --target-return X)"
            )
        given.update({t: float(ds.max_return(t)) for t in missing})
    return {t: given[t] for t in tasks}


def _open_dataset(dataset: Any, tasks: list[str]):
    if dataset is None:
        raise ValueError(
            f"no target return for {tasks}: pass target returns (CLI: --target-return X) or the "
            "training dataset, whose maximum return per task is the default target"
        )
    if hasattr(dataset, "max_return"):
        return dataset
    path = Path(dataset)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {path} (needed for the default target returns: the maximum return per task) "
            "does not exist; pass target returns instead (CLI: --target-return X) or collect it "
            "with `dt-eva collect`"
        )
    from dt_eva.data import load_dataset

    return load_dataset(path)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer (0: no worker processes), got {value!r}")
