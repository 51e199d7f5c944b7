"""Evaluation envs: one Meta-World env per lock-step slot, each episode pinned to a known goal layout.

Seed convention (evaluation goals never coincide with training goals): episode `j` of a task is
played on layout `j % 50` of MT1 seed `seed + EVAL_SEED_OFFSET + j // 50`. Collection envs use MT1
seeds from `dt_eva.data.ENV_SEED_BASE` (1_000_000) up, evaluation seeds stay below it, and different
MT1 seeds give disjoint layouts. Because the layout is a function of (seed, task, episode index)
only, results do not depend on how many envs step together (`num_envs`) or on the schedule.

Why not `make_env` per slot: building a Meta-World env through gymnasium costs ~1.3 s, of which
~1.1 s generates the 50 layouts. A slot here builds the bare env class (~0.25 s) and takes its
layouts from one `make_env` per (task, seed), cached per process. Trajectories are bit-identical
to those of a `make_env` env pinned to the same layout (checked in tests/test_evaluation.py).
"""

from __future__ import annotations

import numbers
from typing import Any

import gymnasium as gym
import numpy as np

from dt_eva.envs import EPISODE_LENGTH, filter_third_party_warnings, make_env, resolve_task

#: Evaluation MT1 seeds are `seed + EVAL_SEED_OFFSET + episode // LAYOUTS_PER_SEED`.
EVAL_SEED_OFFSET = 10_000
#: Goal layouts that one MT1 seed generates.
LAYOUTS_PER_SEED = 50
#: Collection seeds start here (mirrors `dt_eva.data.ENV_SEED_BASE`; evaluation must stay below).
_COLLECTION_SEED_BASE = 1_000_000

# (task, MT1 seed) -> the 50 metaworld Task layouts; one per process, filled lazily
_LAYOUT_CACHE: dict[tuple[str, int], list[Any]] = {}


def episode_layout(seed: int, episode: int) -> tuple[int, int]:
    """(MT1 seed, layout index) of evaluation episode `episode` for evaluation seed `seed`."""
    return int(seed) + EVAL_SEED_OFFSET + int(episode) // LAYOUTS_PER_SEED, int(episode) % LAYOUTS_PER_SEED


def check_eval_seed(seed: int, episodes: int) -> None:
    """`ValueError` unless `seed` is a non-negative int whose layout seeds stay below collection's."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"the evaluation seed must be a non-negative int, got {seed!r}")
    last_seed, _ = episode_layout(seed, max(int(episodes), 1) - 1)
    if last_seed >= _COLLECTION_SEED_BASE:
        raise ValueError(
            f"evaluation seed {seed} with {episodes} episodes reaches MT1 seed {last_seed}, inside the "
            f"range used for training data (>= {_COLLECTION_SEED_BASE}); use a seed below "
            f"{_COLLECTION_SEED_BASE - EVAL_SEED_OFFSET - (episodes - 1) // LAYOUTS_PER_SEED}"
        )


def task_layouts(task: str, mt1_seed: int) -> list[Any]:
    """The 50 goal layouts (metaworld `Task`s) that MT1 seed `mt1_seed` generates for `task` (cached)."""
    key = (resolve_task(task), int(mt1_seed))
    if key not in _LAYOUT_CACHE:
        env = make_env(key[0], key[1])
        _LAYOUT_CACHE[key] = list(env.get_wrapper_attr("tasks"))
        env.close()
    return _LAYOUT_CACHE[key]


def _env_class(task: str) -> type:
    filter_third_party_warnings()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return ALL_V3_ENVIRONMENTS[resolve_task(task)]


class LayoutEnv(gym.Env):
    """A 200-step Meta-World episode on an explicitly chosen goal layout.

    Set `layout = (mt1_seed, index)` (directly, or per sub-env with a vector env's
    `set_attr("layout", [...])`) before `reset()`. `step` returns `truncated=True` at step 200 and
    an info with only `success` (per step, not sticky), which keeps vector-env bookkeeping cheap.
    `render_size` (pixels) turns on `rgb_array` rendering from the default (upright) camera.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str, render_size: int | None = None) -> None:
        self.task = resolve_task(task)
        kwargs: dict[str, Any] = {}
        if render_size is not None:
            kwargs = {"render_mode": "rgb_array", "width": int(render_size), "height": int(render_size)}
        self._env = _env_class(self.task)(**kwargs)
        self.render_mode = kwargs.get("render_mode")
        self.observation_space = self._env.observation_space
        self.action_space = self._env.action_space
        self.layout: tuple[int, int] | None = None
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if self.layout is None:
            raise RuntimeError("LayoutEnv.reset() needs `layout = (mt1_seed, index)` set first")
        mt1_seed, index = self.layout
        self._env.set_task(task_layouts(self.task, mt1_seed)[index])
        obs, _ = self._env.reset()
        self._steps = 0
        return obs, {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        return obs, float(reward), False, self._steps >= EPISODE_LENGTH, {"success": float(info["success"])}

    def render(self) -> np.ndarray | None:
        return self._env.render()

    def close(self) -> None:
        self._env.close()


class SlotPool:
    """Reusable `LayoutEnv`s per task, so lock-step chunks share envs instead of rebuilding them."""

    def __init__(self) -> None:
        self._free: dict[str, list[LayoutEnv]] = {}
        self._all: list[LayoutEnv] = []

    def take(self, tasks: list[str]) -> list[LayoutEnv]:
        """One env per entry of `tasks` (in order), building only what the pool lacks."""
        taken: dict[str, int] = {}
        out = []
        for task in tasks:
            envs = self._free.setdefault(task, [])
            i = taken.get(task, 0)
            if i == len(envs):
                env = LayoutEnv(task)
                envs.append(env)
                self._all.append(env)
            out.append(envs[i])
            taken[task] = i + 1
        return out

    def close(self) -> None:
        for env in self._all:
            env.close()
        self._free.clear()
        self._all.clear()
