"""Env groups for the lock-step rollout: stepped in this process, or in a worker process each.

`rollout_groups` (rollout.py) cuts the lock-step envs into groups and runs the model on one group
while the others step: with each group in its own worker process, MuJoCo physics and the model's
forward overlap on different cores. A group is anything with `num_envs`, `reset()`, `step_async()`
and `step_wait()`:

- `VectorEnvGroup` wraps a gymnasium vector env in this process (`step_async` only stores the
  actions; `step_wait` steps), i.e. no overlap: the unpipelined evaluation.
- `WorkerEnvGroup` steps its `LayoutEnv`s in one or more worker processes, so `step_async`
  returns at once.

Both step the same envs with the same actions, so a rollout's results do not depend on where the
envs step (the model's forward batches are the groups, the same either way). On Linux the worker is forked with the already built envs (and the cached goal layouts),
so starting one costs milliseconds; elsewhere it is spawned and builds its envs itself.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from typing import Any

import numpy as np

#: At most this many env worker processes by default (one per core beyond the first).
MAX_DEFAULT_ENV_WORKERS = 8


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_env_workers(cores: int | None = None) -> int:
    """Env worker processes for `cores` cores: none on one core; else one per core beyond the one the
    model runs on, and at least two (one per half of the envs), at most `MAX_DEFAULT_ENV_WORKERS`."""
    cores = usable_cores() if cores is None else cores
    if cores < 2:
        return 0
    return min(MAX_DEFAULT_ENV_WORKERS, max(2, cores - 1))


class VectorEnvGroup:
    """A gymnasium vector env stepped in this process when its results are asked for."""

    def __init__(self, vec_env: Any) -> None:
        self.vec_env = vec_env
        self.num_envs = int(vec_env.num_envs)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        obs, _ = self.vec_env.reset()
        return np.asarray(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs, reward, _, _, info = self.vec_env.step(self._actions)
        return np.asarray(obs), np.asarray(reward, dtype=np.float64), np.asarray(info["success"]) > 0

    def close(self) -> None:
        pass  # the vector env belongs to the caller


class WorkerEnvGroup:
    """`LayoutEnv`s (each with its `layout` set) stepped in `processes` worker processes, split evenly."""

    def __init__(self, envs: list, processes: int = 1) -> None:
        self.num_envs = len(envs)
        self._workers = [_Worker(part) for part in split_evenly(envs, processes)]

    def reset(self) -> np.ndarray:
        for w in self._workers:
            w.send(("reset", None))
        return np.concatenate([w.receive() for w in self._workers])

    def step_async(self, actions: np.ndarray) -> None:
        start = 0
        for w in self._workers:
            w.send(("step", actions[start : start + w.num_envs]))
            start += w.num_envs

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        replies = [w.receive() for w in self._workers]
        return tuple(np.concatenate(parts) for parts in zip(*replies))  # type: ignore[return-value]

    def close(self) -> None:
        for w in self._workers:
            w.close()


def split_evenly(items: list, parts: int) -> list[list]:
    """`items` cut into `min(parts, len(items))` consecutive runs whose sizes differ by at most one."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


class _Worker:
    """One worker process and the pipe to it."""

    def __init__(self, envs: list) -> None:
        self.num_envs = len(envs)
        fork = sys.platform.startswith("linux")
        ctx = mp.get_context("fork" if fork else "spawn")
        self._conn, child = ctx.Pipe()
        # fork: the child inherits the built envs; spawn: it rebuilds them from (task, layout)
        payload = envs if fork else [(env.task, env.layout) for env in envs]
        self._process = ctx.Process(target=_serve, args=(child, payload, fork), daemon=True)
        self._process.start()
        child.close()

    def send(self, message: Any) -> None:
        self._conn.send(message)

    def receive(self) -> Any:
        try:
            kind, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"env worker process {self._process.pid} died (exit code {self._process.exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"env worker process {self._process.pid} failed: {value}")
        return value

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn.close()


def _serve(conn: Any, payload: list, forked: bool) -> None:
    """Worker loop: reset / step the envs on request, reply with stacked arrays."""
    try:
        if forked:
            envs = payload
        else:
            from dt_eva.evaluation.slots import LayoutEnv

            envs = []
            for task, layout in payload:
                env = LayoutEnv(task)
                env.layout = layout
                envs.append(env)
    except Exception as exc:  # noqa: BLE001 - reported to the main process
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            command, actions = conn.recv()
        except EOFError:
            return
        if command == "close":
            return
        try:
            if command == "reset":
                reply = np.stack([env.reset()[0] for env in envs])
            else:
                obs, rewards, successes = [], [], []
                for env, action in zip(envs, actions):
                    o, r, _, _, info = env.step(action)
                    obs.append(o)
                    rewards.append(r)
                    successes.append(info["success"] > 0)
                reply = (np.stack(obs), np.asarray(rewards, dtype=np.float64), np.asarray(successes))
            conn.send(("ok", reply))
        except Exception as exc:  # noqa: BLE001 - reported to the main process
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
