"""Training batches of K-step windows drawn from an `OfflineDataset`.

At construction the selected tasks' observations, actions, scaled rewards and scaled returns-to-go
are copied (read through the memory maps once) into four contiguous arrays, all episodes of all
tasks in one index space of rows `episode * 200 + t`. A batch is then one `np.take` per array with
a `[B, K]` row index: no Python loop over samples.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from dt_eva.data.format import OfflineDataset
from dt_eva.envs.registry import EPISODE_LENGTH, resolve_tasks


class WindowSampler:
    """Uniform over tasks, then over that task's episodes, then over window starts `0..200-K`.

    `sample()` returns CPU tensors: `states [B,K,39] f32`, `actions [B,K,4] f32`,
    `rewards [B,K,1] f32` (divided by `reward_scale`), `returns_to_go [B,K,1] f32` (the stored
    undiscounted returns-to-go divided by `rtg_scale`), `timesteps [B,K] int64` (0..199),
    `task_ids [B] int64` (index into `self.tasks`). The generator state round-trips through
    `state_dict()` / `load_state_dict()`, so a resumed run draws the same batches.
    """

    def __init__(
        self,
        dataset: OfflineDataset,
        context_len: int,
        batch_size: int,
        rtg_scale: float = 200.0,
        reward_scale: float = 200.0,
        seed: int = 0,
        tasks: str | Iterable[str] | None = None,
    ):
        if not isinstance(context_len, (int, np.integer)) or not 1 <= context_len <= EPISODE_LENGTH:
            raise ValueError(
                f"context_len must be an int in 1..{EPISODE_LENGTH} (episodes are {EPISODE_LENGTH} steps), got {context_len!r}"
            )
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        for name, scale in (("rtg_scale", rtg_scale), ("reward_scale", reward_scale)):
            if not np.isfinite(scale) or scale <= 0:
                raise ValueError(f"{name} must be a positive number, got {scale!r}")
        self.tasks: list[str] = list(dataset.tasks) if tasks is None else resolve_tasks(tasks)
        missing = [t for t in self.tasks if t not in dataset.tasks]
        if missing:
            raise ValueError(
                f"dataset {dataset.path} has no data for {', '.join(missing)} (loaded tasks: {', '.join(dataset.tasks)})"
            )
        self.context_len = int(context_len)
        self.batch_size = int(batch_size)
        self.rtg_scale = float(rtg_scale)
        self.reward_scale = float(reward_scale)
        self.seed = int(seed)

        counts = np.array([dataset.num_episodes(t) for t in self.tasks], dtype=np.int64)
        self._episodes_per_task = counts
        self._first_episode = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        per_task = [dataset.task_arrays(t) for t in self.tasks]
        self._states = _concat_rows([a["observations"] for a in per_task])
        self._actions = _concat_rows([a["actions"] for a in per_task])
        self._rewards = _concat_rows([a["rewards"] for a in per_task]) / np.float32(self.reward_scale)
        self._rtg = _concat_rows([a["returns_to_go"] for a in per_task]) / np.float32(self.rtg_scale)
        self._offsets = np.arange(self.context_len, dtype=np.int64)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self.batches_drawn = 0

    @property
    def num_episodes(self) -> int:
        return int(self._episodes_per_task.sum())

    def sample_indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw the next batch's (task ids, episode index within the task, window start), each `[B]` int64."""
        B = self.batch_size
        task_ids = self._rng.integers(0, len(self.tasks), size=B, dtype=np.int64)
        episodes = self._rng.integers(0, self._episodes_per_task[task_ids], dtype=np.int64)
        starts = self._rng.integers(0, EPISODE_LENGTH - self.context_len + 1, size=B, dtype=np.int64)
        self.batches_drawn += 1
        return task_ids, episodes, starts

    def gather(self, task_ids: np.ndarray, episodes: np.ndarray, starts: np.ndarray) -> dict[str, torch.Tensor]:
        """The windows at the given indices (as returned by `sample_indices`)."""
        timesteps = starts[:, None] + self._offsets  # [B, K]
        rows = (self._first_episode[task_ids] + episodes)[:, None] * EPISODE_LENGTH + timesteps
        return {
            "states": torch.from_numpy(np.take(self._states, rows, axis=0)),
            "actions": torch.from_numpy(np.take(self._actions, rows, axis=0)),
            "rewards": torch.from_numpy(np.take(self._rewards, rows, axis=0)[..., None]),
            "returns_to_go": torch.from_numpy(np.take(self._rtg, rows, axis=0)[..., None]),
            "timesteps": torch.from_numpy(timesteps),
            "task_ids": torch.from_numpy(np.ascontiguousarray(task_ids, dtype=np.int64)),
        }

    def sample(self) -> dict[str, torch.Tensor]:
        """The next batch (see the class docstring for keys and shapes)."""
        return self.gather(*self.sample_indices())

    def __iter__(self):
        while True:
            yield self.sample()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue drawing the same batches (plain Python types)."""
        return {
            "rng": self._rng.bit_generator.state,
            "batches_drawn": self.batches_drawn,
            "tasks": list(self.tasks),
            "context_len": self.context_len,
            "batch_size": self.batch_size,
            "episodes_per_task": self._episodes_per_task.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; the sampler must be built on the same tasks, episodes, K and B."""
        mine = {k: v for k, v in self.state_dict().items() if k not in ("rng", "batches_drawn")}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(f"sampler state was saved for {theirs}, but this sampler has {mine}")
        self._rng.bit_generator.state = state["rng"]
        self.batches_drawn = int(state["batches_drawn"])


def _concat_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate `[E, 200, ...]` arrays into one contiguous `[sum E * 200, ...]` array."""
    return np.ascontiguousarray(np.concatenate([np.asarray(a).reshape(-1, *a.shape[2:]) for a in arrays], axis=0))
