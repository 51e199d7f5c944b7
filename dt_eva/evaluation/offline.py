"""Offline evaluation: the action MSE of a policy on held-out episodes (the low-noise metric the CW10
study logs beside online success). Every window of every held-out episode at a fixed stride, so the
value is deterministic and comparable between runs and steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dt_eva.data import WindowSampler
from dt_eva.envs import EPISODE_LENGTH
from dt_eva.models import DTConfig, eval_mode
from dt_eva.utils.precision import autocast


def heldout_batches(dataset: Any, task: str, model_cfg: DTConfig, stride: int | None = None,
                    batch_size: int = 256) -> list[dict[str, torch.Tensor]]:
    """All windows of `task`'s episodes in `dataset` starting every `stride` steps (default: the
    context length, i.e. non-overlapping windows), in batches of `batch_size`, with the context
    length and return / reward scaling of the model they are for (`model_cfg`)."""
    context_len = model_cfg.context_len
    sampler = WindowSampler(dataset, context_len, 1, rtg_scale=model_cfg.rtg_scale,
                            reward_scale=model_cfg.reward_scale, tasks=[task])
    stride = int(stride or context_len)
    starts = np.arange(0, EPISODE_LENGTH - context_len + 1, stride, dtype=np.int64)
    episodes = np.repeat(np.arange(sampler.num_episodes, dtype=np.int64), len(starts))
    starts = np.tile(starts, sampler.num_episodes)
    tasks = np.zeros_like(episodes)
    return [sampler.gather(tasks[i:i + batch_size], episodes[i:i + batch_size], starts[i:i + batch_size])
            for i in range(0, len(episodes), batch_size)]


def heldout_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]],
                 autocast_dtype: torch.dtype | None = None) -> float:
    """The mean action MSE over every window of `batches`, in eval mode (dropout off), at the run's
    precision: `autocast_dtype` (bf16) or None (fp32); the loss itself is always computed in fp32."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model, inference=False):
        for batch in batches:
            n = int(batch["states"].shape[0])
            with autocast(device, autocast_dtype):
                loss = model.loss(batch)
            total += float(loss) * n
            count += n
    return total / max(count, 1)
