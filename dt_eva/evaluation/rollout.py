"""Decision Transformer rollouts: the batched lock-step loop, and the one-episode reference.

`rollout_lockstep` advances N envs together for one 200-step episode each, with ONE model forward
per step for all of them: histories live in pre-allocated `[N, 200, .]` tensors on the model's
device and the model sees the last `context_len` steps (fewer during the first steps; every
episode has the same length, so no padding or attention mask is needed).

`rollout_reference_episode` is the reference codebases' way (one env, one episode, histories
grown by concatenation, a full forward per step). It exists to check the batched loop against
(`tests/test_evaluation.py`) and as the baseline of `scripts/bench_eval.py`.
"""

from __future__ import annotations

import contextlib
from copy import deepcopy
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from dt_eva.envs import EPISODE_LENGTH
from dt_eva.evaluation.metrics import update_returns_to_go
from dt_eva.utils.precision import autocast


@dataclass
class EpisodeBatch:
    """What N lock-step episodes produced: actions `[N, 200, act_dim]` (float32, as sent to the env),
    raw rewards `[N, 200]` (float64) and per-step `info["success"]` `[N, 200]` (bool)."""

    actions: np.ndarray
    rewards: np.ndarray
    successes: np.ndarray

    @property
    def returns(self) -> np.ndarray:
        return self.rewards.sum(axis=1)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """`model.eval()` + `torch.inference_mode()`, restoring the train/eval flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _uses_rewards(model: nn.Module) -> bool:
    return "r" in model.cfg.layout_symbols


def rollout_lockstep(
    model: nn.Module,
    vec_env,
    target_returns: np.ndarray,
    rtg_scale: float = 200.0,
    reward_scale: float = 200.0,
    on_step: Callable[[int], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> EpisodeBatch:
    """Play one 200-step episode in each of the `vec_env.num_envs` sub-envs, all in lock-step.

    `vec_env` is a gymnasium vector env whose sub-envs already know their next episode (e.g.
    `LayoutEnv` with `layout` set); it is reset here. `target_returns` `[N]` are raw (unscaled)
    target returns. The model runs on its own device and dtype; call inside `eval_mode(model)`.
    `on_step(n)` is called after every step with the number of env steps just taken.
    `autocast_dtype` (e.g. `torch.bfloat16`) runs the model's forwards under autocast.
    """
    from dt_eva.evaluation.env_workers import VectorEnvGroup

    return rollout_groups(model, [VectorEnvGroup(vec_env)], target_returns, rtg_scale, reward_scale, on_step,
                          autocast_dtype)


def low_precision_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `model` whose linear layers hold `dtype` weights, for forwards under autocast.

    Autocast would cast every weight to bf16 at every op and step (its cast cache is off under
    `inference_mode`); the copy has them cast once. Everything else (layer norms, embeddings
    tables, adapter parameters outside `nn.Linear`) stays as it is and autocast handles it.
    """
    copy = deepcopy(model)
    for module in copy.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)
    return copy


def rollout_groups(
    model: nn.Module,
    groups: Sequence,
    target_returns: np.ndarray,
    rtg_scale: float = 200.0,
    reward_scale: float = 200.0,
    on_step: Callable[[int], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> EpisodeBatch:
    """`rollout_lockstep` over env groups (`dt_eva.evaluation.env_workers`), pipelined.

    The envs of all groups form one lock-step batch (group 0's envs first); the model runs once per
    step and group on that group's rows. Per step, for each group in turn: wait for its last step,
    record it, predict its next actions, send them (`step_async`) and go on to the next group. So
    while the model computes one group, the groups stepping in worker processes run their physics.
    Results depend only on the groups' sizes, not on where their envs step.
    """
    cfg = model.cfg
    device, dtype = model_device_dtype(model)
    sizes = [g.num_envs for g in groups]
    n, steps, k = sum(sizes), EPISODE_LENGTH, cfg.context_len
    if len(target_returns) != n:
        raise ValueError(f"got {len(target_returns)} target returns for {n} envs")
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()

    # pre-allocated histories; the model reads views of the last `context_len` steps
    states = torch.zeros(n, steps, cfg.state_dim, device=device, dtype=dtype)
    actions = torch.zeros(n, steps, cfg.act_dim, device=device, dtype=dtype)
    rewards = torch.zeros(n, steps, 1, device=device, dtype=dtype)  # scaled by reward_scale
    rtg = torch.zeros(n, steps, 1, device=device, dtype=dtype)  # scaled by rtg_scale
    timesteps = torch.arange(steps, device=device).expand(n, steps)
    use_rewards = _uses_rewards(model)

    initial = torch.as_tensor(np.asarray(target_returns, dtype=np.float64) / rtg_scale, dtype=dtype)
    initial = initial.to(device).view(n, 1)
    current = initial.clone()

    out_actions = np.zeros((n, steps, cfg.act_dim), dtype=np.float32)
    out_rewards = np.zeros((n, steps), dtype=np.float64)
    out_success = np.zeros((n, steps), dtype=bool)

    def record(lo: int, hi: int, t: int, reward: np.ndarray, success: np.ndarray) -> None:
        out_rewards[lo:hi, t] = reward
        out_success[lo:hi, t] = success
        reward_t = torch.as_tensor(reward, dtype=dtype).to(device, non_blocking=True).view(hi - lo, 1)
        rewards[lo:hi, t] = reward_t / reward_scale
        current[lo:hi] = update_returns_to_go(current[lo:hi], reward_t, rtg_scale, initial[lo:hi])
        if on_step is not None:
            on_step(hi - lo)

    policy = model if autocast_dtype is None else low_precision_copy(model, autocast_dtype)
    first_obs = [g.reset() for g in groups]
    with autocast(device, autocast_dtype):
        for t in range(steps):
            start = max(0, t + 1 - k)
            for i, group in enumerate(groups):
                lo, hi = bounds[i], bounds[i + 1]
                if t == 0:
                    obs = first_obs[i]
                else:
                    obs, reward, success = group.step_wait()
                    record(lo, hi, t - 1, reward, success)
                states[lo:hi, t] = torch.as_tensor(obs, dtype=dtype).to(device, non_blocking=True)
                rtg[lo:hi, t] = current[lo:hi]
                action = policy.predict_last_action(
                    states[lo:hi, start : t + 1],
                    actions[lo:hi, start : t + 1],  # step t's entry is still zero: a placeholder the model does not see
                    rtg[lo:hi, start : t + 1],
                    timesteps[lo:hi, start : t + 1],
                    rewards[lo:hi, start : t + 1] if use_rewards else None,
                )
                action = action.clamp(-1.0, 1.0)  # what the env executes, as in the training data
                actions[lo:hi, t] = action
                env_action = action.float().cpu().numpy()
                out_actions[lo:hi, t] = env_action
                group.step_async(env_action)
    for i, group in enumerate(groups):
        _, reward, success = group.step_wait()
        record(bounds[i], bounds[i + 1], steps - 1, reward, success)
    return EpisodeBatch(out_actions, out_rewards, out_success)


def rollout_reference_episode(
    model: nn.Module,
    env,
    target_return: float,
    rtg_scale: float = 200.0,
    reward_scale: float = 200.0,
) -> EpisodeBatch:
    """One 200-step episode on one (already configured) gymnasium env, the unbatched way.

    Histories are grown by concatenation and the model gets a full forward over the last
    `context_len` steps at every step (batch of one). Same conditioning as `rollout_lockstep`,
    so both give the same actions for the same layout (up to float rounding).
    Call inside `eval_mode(model)`. Returns an `EpisodeBatch` with N = 1.
    """
    cfg = model.cfg
    device, dtype = model_device_dtype(model)
    k = cfg.context_len
    obs, _ = env.reset()
    initial = torch.tensor([[target_return / rtg_scale]], device=device, dtype=dtype)
    states = torch.as_tensor(obs, dtype=dtype, device=device).view(1, 1, -1)
    actions = torch.zeros(1, 1, cfg.act_dim, device=device, dtype=dtype)
    rewards = torch.zeros(1, 1, 1, device=device, dtype=dtype)
    rtg = initial.view(1, 1, 1)
    timesteps = torch.zeros(1, 1, dtype=torch.long, device=device)
    acts, rews, succ = [], [], []
    for t in range(EPISODE_LENGTH):
        pred = model(
            states[:, -k:], actions[:, -k:], rtg[:, -k:], timesteps[:, -k:],
            rewards[:, -k:] if _uses_rewards(model) else None,
        )[:, -1].clamp(-1.0, 1.0)
        env_action = pred.float().cpu().numpy()[0]
        obs, reward, _, _, info = env.step(env_action)
        acts.append(env_action)
        rews.append(float(reward))
        succ.append(float(info["success"]) > 0)
        if t + 1 == EPISODE_LENGTH:
            break
        r = torch.tensor([[[float(reward)]]], device=device, dtype=dtype)
        actions[:, -1] = pred
        next_rtg = update_returns_to_go(rtg[:, -1:], r, rtg_scale, initial.view(1, 1, 1))
        states = torch.cat([states, torch.as_tensor(obs, dtype=dtype, device=device).view(1, 1, -1)], dim=1)
        actions = torch.cat([actions, torch.zeros(1, 1, cfg.act_dim, device=device, dtype=dtype)], dim=1)
        rewards[:, -1] = r / reward_scale
        rewards = torch.cat([rewards, torch.zeros(1, 1, 1, device=device, dtype=dtype)], dim=1)
        rtg = torch.cat([rtg, next_rtg], dim=1)
        timesteps = torch.cat([timesteps, torch.full((1, 1), t + 1, dtype=torch.long, device=device)], dim=1)
    return EpisodeBatch(
        np.asarray(acts, dtype=np.float32)[None], np.asarray(rews, dtype=np.float64)[None], np.asarray(succ)[None]
    )
