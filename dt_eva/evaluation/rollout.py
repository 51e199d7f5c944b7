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

from copy import deepcopy
from dataclasses import dataclass
from typing import Callable, Sequence

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


def _uses_rewards(model: nn.Module) -> bool:
    return "r" in model.cfg.layout_symbols


def rollout_lockstep(
    model: nn.Module,
    vec_env,
    target_returns: np.ndarray,
    on_step: Callable[[int], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> EpisodeBatch:
    """Play one 200-step episode in each of the `vec_env.num_envs` sub-envs, all in lock-step.

    `vec_env` is a gymnasium vector env whose sub-envs already know their next episode (e.g.
    `LayoutEnv` with `layout` set); it is reset here. `target_returns` `[N]` are raw (unscaled)
    target returns; the model's `cfg.rtg_scale` / `cfg.reward_scale` scale its inputs. The model
    runs on its own device and dtype; call inside `eval_mode(model)`.
    `on_step(n)` is called after every step with the number of env steps just taken.
    `autocast_dtype` (e.g. `torch.bfloat16`) runs the model's forwards under autocast.
    """
    from dt_eva.evaluation.env_workers import VectorEnvGroup

    return rollout_groups(model, [VectorEnvGroup(vec_env)], target_returns, on_step, autocast_dtype)


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


class _Histories:
    """N lock-step episodes: the model's pre-allocated inputs `[N, 200, .]` (scaled as in training)
    and what the envs returned. The model reads views of the last `context_len` steps."""

    def __init__(self, model: nn.Module, target_returns: np.ndarray) -> None:
        cfg = model.cfg
        self.device, self.dtype = device, dtype = model_device_dtype(model)
        self.rtg_scale, self.reward_scale, self.k = cfg.rtg_scale, cfg.reward_scale, cfg.context_len
        n, steps = len(target_returns), EPISODE_LENGTH
        self.states = torch.zeros(n, steps, cfg.state_dim, device=device, dtype=dtype)
        self.actions = torch.zeros(n, steps, cfg.act_dim, device=device, dtype=dtype)
        self.rewards = torch.zeros(n, steps, 1, device=device, dtype=dtype)  # divided by reward_scale
        self.rtg = torch.zeros(n, steps, 1, device=device, dtype=dtype)  # divided by rtg_scale
        self.timesteps = torch.arange(steps, device=device).expand(n, steps)
        self.use_rewards = _uses_rewards(model)
        initial = torch.as_tensor(np.asarray(target_returns, dtype=np.float64) / self.rtg_scale, dtype=dtype)
        self.initial = initial.to(device).view(n, 1)
        self.current = self.initial.clone()
        self.out = EpisodeBatch(np.zeros((n, steps, cfg.act_dim), dtype=np.float32),
                                np.zeros((n, steps), dtype=np.float64), np.zeros((n, steps), dtype=bool))

    def record(self, lo: int, hi: int, t: int, reward: np.ndarray, success: np.ndarray) -> None:
        """Step `t`'s rewards and success flags of rows `lo:hi`; the next return-to-go follows."""
        self.out.rewards[lo:hi, t] = reward
        self.out.successes[lo:hi, t] = success
        reward_t = torch.as_tensor(reward, dtype=self.dtype).to(self.device, non_blocking=True).view(hi - lo, 1)
        self.rewards[lo:hi, t] = reward_t / self.reward_scale
        self.current[lo:hi] = update_returns_to_go(self.current[lo:hi], reward_t, self.rtg_scale, self.initial[lo:hi])

    def act(self, policy: nn.Module, lo: int, hi: int, t: int, obs: np.ndarray) -> np.ndarray:
        """Observe `obs` at step `t` in rows `lo:hi` and return the actions the envs execute."""
        start = max(0, t + 1 - self.k)
        self.states[lo:hi, t] = torch.as_tensor(obs, dtype=self.dtype).to(self.device, non_blocking=True)
        self.rtg[lo:hi, t] = self.current[lo:hi]
        action = policy.predict_last_action(
            self.states[lo:hi, start : t + 1],
            self.actions[lo:hi, start : t + 1],  # step t's entry is still zero: a placeholder the model does not see
            self.rtg[lo:hi, start : t + 1],
            self.timesteps[lo:hi, start : t + 1],
            self.rewards[lo:hi, start : t + 1] if self.use_rewards else None,
        )
        action = action.clamp(-1.0, 1.0)  # what the env executes, as in the training data
        self.actions[lo:hi, t] = action
        env_action = action.float().cpu().numpy()
        self.out.actions[lo:hi, t] = env_action
        return env_action


def rollout_groups(
    model: nn.Module,
    groups: Sequence,
    target_returns: np.ndarray,
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
    sizes = [g.num_envs for g in groups]
    if len(target_returns) != sum(sizes):
        raise ValueError(f"got {len(target_returns)} target returns for {sum(sizes)} envs")
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    h = _Histories(model, target_returns)

    def record(i: int, t: int, reward: np.ndarray, success: np.ndarray) -> None:
        h.record(bounds[i], bounds[i + 1], t, reward, success)
        if on_step is not None:
            on_step(sizes[i])

    policy = model if autocast_dtype is None else low_precision_copy(model, autocast_dtype)
    first_obs = [g.reset() for g in groups]
    with autocast(h.device, autocast_dtype):
        for t in range(EPISODE_LENGTH):
            for i, group in enumerate(groups):
                if t == 0:
                    obs = first_obs[i]
                else:
                    obs, reward, success = group.step_wait()
                    record(i, t - 1, reward, success)
                group.step_async(h.act(policy, bounds[i], bounds[i + 1], t, obs))
    for i, group in enumerate(groups):
        _, reward, success = group.step_wait()
        record(i, EPISODE_LENGTH - 1, reward, success)
    return h.out


def rollout_reference_episode(model: nn.Module, env, target_return: float) -> EpisodeBatch:
    """One 200-step episode on one (already configured) gymnasium env, the unbatched way.

    Histories are grown by concatenation and the model gets a full forward over the last
    `context_len` steps at every step (batch of one). Same conditioning as `rollout_lockstep`,
    so both give the same actions for the same layout (up to float rounding).
    Call inside `eval_mode(model)`. Returns an `EpisodeBatch` with N = 1.
    """
    cfg = model.cfg
    device, dtype = model_device_dtype(model)
    k, rtg_scale, reward_scale = cfg.context_len, cfg.rtg_scale, cfg.reward_scale
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
