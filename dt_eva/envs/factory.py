"""Meta-World env factory: single envs, fixed goals, vector envs.

One env holds the 50 (object, goal) layouts that its MT1 `seed` generates and draws one of them at
every `reset()` (with replacement, from the env's own seeded generator). Different seeds give
disjoint layouts, which is how training data and evaluation keep their goals apart (see
`data/README.md`).
"""

from __future__ import annotations

import functools
import numbers
import warnings
from typing import Sequence

import gymnasium as gym

from dt_eva.envs.registry import EPISODE_LENGTH, resolve_task

# metaworld's own step limit: stepping past it without a reset raises inside the env.
_METAWORLD_MAX_PATH_LENGTH = 500
_NUM_LAYOUTS = 50


def filter_third_party_warnings() -> None:
    """Silence the per-step warnings of metaworld's scripted policies and envs (process-wide)."""
    warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"metaworld(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"metaworld(\.|$)")


def make_env(
    task: str,
    seed: int,
    max_episode_steps: int = EPISODE_LENGTH,
    goal_index: int | None = None,
) -> gym.Env:
    """A Meta-World v3 env for `task` whose episodes end with `truncated=True` after `max_episode_steps`.

    Goals are re-sampled at every reset from the 50 layouts of MT1 seed `seed`; pass `goal_index`
    (0..49) to pin one layout instead (see `fix_goal`). Building an env costs about a second
    (it generates the layouts): build once and reuse it across episodes.
    """
    filter_third_party_warnings()
    import metaworld  # noqa: F401  (registers the Meta-World/* gymnasium ids)

    name = resolve_task(task)
    _check_seed(seed)
    if not 1 <= int(max_episode_steps) <= _METAWORLD_MAX_PATH_LENGTH:
        raise ValueError(
            f"max_episode_steps must be in 1..{_METAWORLD_MAX_PATH_LENGTH} (Meta-World's own limit), "
            f"got {max_episode_steps}"
        )
    env = gym.make(
        "Meta-World/MT1",
        env_name=name,
        seed=int(seed),
        max_episode_steps=int(max_episode_steps),
        disable_env_checker=True,
    )
    if goal_index is not None:
        fix_goal(env, goal_index)
    return env


def fix_goal(env: gym.Env, goal_index: int | None) -> None:
    """Pin `env` to layout `goal_index` of its seeded list (None: sample per reset again).

    Takes effect at the next `reset()`.
    """
    tasks = env.get_wrapper_attr("tasks")
    toggle = env.get_wrapper_attr("toggle_sample_tasks_on_reset")
    if goal_index is None:
        toggle(True)
        return
    if not 0 <= int(goal_index) < len(tasks):
        raise ValueError(f"goal_index must be in 0..{len(tasks) - 1}, got {goal_index}")
    toggle(False)
    env.unwrapped.set_task(tasks[int(goal_index)])


def make_vector_env(
    task_or_tasks: str | Sequence[str],
    num_envs: int,
    seed: int,
    asynchronous: bool = False,
    max_episode_steps: int = EPISODE_LENGTH,
    autoreset_mode: gym.vector.AutoresetMode | str | None = None,
    context: str | None = None,
) -> gym.vector.VectorEnv:
    """`num_envs` Meta-World envs in one gymnasium vector env; sub-env `i` has seed `seed + i`.

    With a list of tasks, sub-env `i` runs `tasks[i % len(tasks)]` (all tasks share the spaces).
    `asynchronous=True` steps each env in its own process (`context`: multiprocessing start
    method, default the platform's). The default autoreset mode is gymnasium's (NEXT_STEP).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    _check_seed(seed)
    tasks = [resolve_task(task_or_tasks)] if isinstance(task_or_tasks, str) else [
        resolve_task(t) for t in task_or_tasks
    ]
    if not tasks:
        raise ValueError("make_vector_env needs at least one task")
    env_fns = [
        functools.partial(make_env, tasks[i % len(tasks)], int(seed) + i, max_episode_steps)
        for i in range(num_envs)
    ]
    kwargs: dict = {}
    if autoreset_mode is not None:
        kwargs["autoreset_mode"] = autoreset_mode
    if asynchronous:
        return gym.vector.AsyncVectorEnv(env_fns, context=context, **kwargs)
    return gym.vector.SyncVectorEnv(env_fns, **kwargs)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"an env seed must be a non-negative int, got {seed!r}")
