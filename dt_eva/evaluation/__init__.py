"""Batched online evaluation of Decision Transformers on Meta-World.

`evaluate_policy(model, tasks, ...)` rolls out all episodes in lock-step (one model forward per
step for all envs) and returns success at any step, success at the final step and returns per
task. `dt_eva.experiments.evaluate.evaluate_run(run_dir, ...)` does it for a run directory.
Conventions (return conditioning, goal-layout seeds) are in `metrics.py` and `slots.py`.
"""

from dt_eva.evaluation.evaluate import DEFAULT_MAX_ENVS, check_model_fits_envs, evaluate_policy, resolve_target_returns
from dt_eva.evaluation.metrics import (
    episode_success,
    flatten_scalars,
    mean_over_tasks,
    summarize_task,
    update_returns_to_go,
)
from dt_eva.evaluation.rollout import EpisodeBatch, rollout_lockstep, rollout_reference_episode
from dt_eva.evaluation.slots import EVAL_SEED_OFFSET, LayoutEnv, SlotPool, episode_layout, task_layouts
from dt_eva.models import eval_mode

__all__ = [
    "DEFAULT_MAX_ENVS",
    "EVAL_SEED_OFFSET",
    "EpisodeBatch",
    "LayoutEnv",
    "SlotPool",
    "check_model_fits_envs",
    "episode_layout",
    "episode_success",
    "eval_mode",
    "evaluate_policy",
    "flatten_scalars",
    "mean_over_tasks",
    "resolve_target_returns",
    "rollout_lockstep",
    "rollout_reference_episode",
    "summarize_task",
    "task_layouts",
    "update_returns_to_go",
]
