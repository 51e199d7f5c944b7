"""Return conditioning and success metrics of online evaluation.

Units: the model sees returns-to-go divided by `rtg_scale` and rewards divided by `reward_scale`
(the same scaling as `dt_eva.data.WindowSampler`). With a target return `G` the first RTG token is
`R0 = G / rtg_scale`; after a step with raw reward `r` the next one is

    R <- min(R - r / rtg_scale, R0)

(all in scaled units). Meta-World rewards are >= 0, so the `min` only guards against a reward
that would push the conditioning above the target; R may go negative once the target is exceeded,
as in the reference DT code.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def update_returns_to_go(rtg, rewards, rtg_scale: float, initial):
    """Next scaled return-to-go: `min(rtg - rewards / rtg_scale, initial)`, element-wise.

    Works on numpy arrays and torch tensors alike (`rtg`, `rewards` and `initial` broadcast).
    """
    nxt = rtg - rewards / rtg_scale
    if isinstance(nxt, (np.ndarray, float, np.floating)):
        return np.minimum(nxt, initial)
    import torch

    return torch.minimum(nxt, torch.as_tensor(initial, dtype=nxt.dtype, device=nxt.device))


def episode_success(successes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(success at any step, success at the final step) per episode from per-step `info["success"]`.

    `successes` is `[episodes, steps]` (or `[steps]` for one episode), truthy where the step
    succeeded. Meta-World's flag is not sticky, so the two can differ.
    """
    s = np.asarray(successes) > 0
    return s.any(axis=-1), s[..., -1]


def first_success_step(successes: np.ndarray) -> np.ndarray:
    """The 1-based env step of each episode's first success (-1: never), from `[episodes, steps]` flags."""
    s = np.asarray(successes) > 0
    return np.where(s.any(axis=-1), s.argmax(axis=-1) + 1, -1)


def summarize_task(
    returns: np.ndarray, successes: np.ndarray, target_return: float
) -> dict[str, Any]:
    """The per-task entry of an evaluation result (see docs/architecture.md, "Evaluation").

    `returns` `[E]` raw episode returns; `successes` `[E, 200]` per-step success flags.
    `return_std` is the population standard deviation over episodes.
    """
    returns = np.asarray(returns, dtype=np.float64)
    any_, final = episode_success(successes)
    first = first_success_step(successes)
    return {
        "success_any": float(any_.mean()),
        "success_final": float(final.mean()),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "episodes": int(returns.shape[0]),
        "target_return": float(target_return),
        "success_any_per_episode": [float(x) for x in any_],
        "success_final_per_episode": [float(x) for x in final],
        "return_per_episode": [float(x) for x in returns],
        "first_success_step_per_episode": [int(x) if x >= 0 else None for x in first],
    }


def mean_over_tasks(per_task: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Unweighted mean of `success_any`, `success_final` and `return_mean` over tasks."""
    keys = ("success_any", "success_final", "return_mean")
    return {k: float(np.mean([entry[k] for entry in per_task.values()])) for k in keys}


def flatten_scalars(result: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """`{"eval/<task>/success_any": ..., "eval/success_any": ...}` for metrics.jsonl / TensorBoard."""
    out: dict[str, float] = {}
    for task, entry in result["tasks"].items():
        for key in ("success_any", "success_final", "return_mean"):
            out[f"{prefix}/{task}/{key}"] = float(entry[key])
    for key, value in result["mean"].items():
        out[f"{prefix}/{key}"] = float(value)
    return out
