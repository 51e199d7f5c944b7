"""Batched online evaluation (`dt_eva.evaluation`): real Meta-World envs, a real tiny DT.

The key check: the lock-step batched rollout gives the same actions, returns and success flags per
episode as the one-env, one-episode-at-a-time reference rollout of the same model on `make_env`
envs pinned to the same goal layouts.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from dt_eva.envs import EPISODE_LENGTH, fix_goal, make_env
from dt_eva.evaluation import (
    EVAL_SEED_OFFSET,
    episode_layout,
    episode_success,
    eval_mode,
    evaluate_policy,
    rollout_reference_episode,
    summarize_task,
    update_returns_to_go,
)
from dt_eva.models import DecisionTransformer, DTConfig

CONTRACT_TASK_KEYS = {
    "success_any", "success_final", "return_mean", "return_std", "episodes", "target_return",
    "success_any_per_episode",
}


def tiny_dt(token_layout: str = "s,R,a,r", context_len: int = 8, dtype=torch.float64, **scales) -> DecisionTransformer:
    """A tiny DT with random weights whose actions react visibly to states, RTG and rewards; `scales`:
    its `rtg_scale` / `reward_scale`."""
    torch.manual_seed(0)
    cfg = DTConfig.tiny(hidden_size=32, n_layer=2, n_head=2, context_len=context_len, token_layout=token_layout,
                        **scales)
    model = DecisionTransformer(cfg)
    with torch.no_grad():  # larger random weights than the GPT-2 init: actions away from 0
        torch.nn.init.normal_(model.action_head.weight, std=1.0)
        torch.nn.init.normal_(model.embed_state.weight, std=0.3)
    return model.to(dtype)


# --- return conditioning and success semantics -----------------------------------------------------
def test_rtg_update_matches_hand_computation():
    r0 = 400.0 / 200.0
    rtg = np.array([r0])
    seq = []
    for r in [3.0, 5.0, 0.0, -20.0, -100.0]:  # negative rewards would raise R above R0: clipped
        rtg = update_returns_to_go(rtg, np.array([r]), 200.0, r0)
        seq.append(float(rtg[0]))
    expected = [2.0 - 0.015, 2.0 - 0.015 - 0.025, 1.96, 2.0, 2.0]
    np.testing.assert_allclose(seq, expected, rtol=0, atol=1e-12)
    # the torch path (used in the rollout) agrees, per env
    t = update_returns_to_go(torch.tensor([[2.0], [1.0]]), torch.tensor([[10.0], [-300.0]]), 200.0,
                             torch.tensor([[2.0], [1.0]]))
    np.testing.assert_allclose(t.numpy(), [[1.95], [1.0]], rtol=0, atol=1e-6)


def test_success_any_vs_final():
    seqs = np.zeros((4, EPISODE_LENGTH), dtype=bool)
    seqs[1, 60:90] = True  # succeeded at step 60, lost it again: any but not final
    seqs[2, 150:] = True  # succeeded and stayed: both
    seqs[3, -1] = True  # only the very last step
    any_, final = episode_success(seqs.astype(np.float64))  # info["success"] comes as 0.0 / 1.0
    assert any_.tolist() == [False, True, True, True]
    assert final.tolist() == [False, False, True, True]
    entry = summarize_task(np.array([1.0, 2.0, 3.0, 6.0]), seqs, target_return=7.0)
    assert entry["success_any"] == 0.75 and entry["success_final"] == 0.5
    assert entry["return_mean"] == 3.0 and entry["return_std"] == pytest.approx(np.std([1, 2, 3, 6]))
    assert entry["success_any_per_episode"] == [0.0, 1.0, 1.0, 1.0]


def test_success_semantics_on_a_recorded_expert_episode():
    """A real episode's `info["success"]` sequence: any = max over steps, final = the last step."""
    from metaworld.policies import ENV_POLICY_MAP

    env = make_env("reach", seed=EVAL_SEED_OFFSET, goal_index=0)
    policy = ENV_POLICY_MAP["reach-v3"]()
    obs, _ = env.reset()
    recorded = []
    for _ in range(EPISODE_LENGTH):
        obs, _, _, truncated, info = env.step(policy.get_action(obs))
        recorded.append(info["success"])
    env.close()
    assert truncated and len(recorded) == EPISODE_LENGTH
    any_, final = episode_success(np.array([recorded]))
    assert bool(any_[0]) == (max(recorded) > 0) and bool(final[0]) == (recorded[-1] > 0)
    assert any_[0], "the scripted expert solves reach"


# --- seeds -------------------------------------------------------------------------------------------
def test_evaluation_layouts_are_disjoint_from_collection_and_distinct():
    from dt_eva.data import ENV_SEED_BASE

    layouts = [episode_layout(0, j) for j in range(120)]
    assert len(set(layouts)) == 120
    assert layouts[0] == (EVAL_SEED_OFFSET, 0) and layouts[50] == (EVAL_SEED_OFFSET + 1, 0)
    assert all(s < ENV_SEED_BASE for s, _ in layouts)
    model = tiny_dt()
    with pytest.raises(ValueError, match="range used for training data"):
        evaluate_policy(model, "reach", episodes=1, seed=ENV_SEED_BASE, target_returns=1.0, progress=False)


# --- the batched rollout ------------------------------------------------------------------------------
@pytest.mark.slow
def test_batched_rollout_equals_one_episode_at_a_time():
    model = tiny_dt("s,R,a,r", rtg_scale=150.0, reward_scale=40.0)  # distinct, so a swapped scale shows
    tasks, episodes, seed, target = ["reach", "push"], 2, 3, 900.0
    # 3 envs in lock-step for 4 episodes: chunks of mixed tasks and a short last chunk
    result = evaluate_policy(model, tasks, episodes=episodes, seed=seed, target_returns=target,
                             num_envs=3, progress=False)
    assert (result["rtg_scale"], result["reward_scale"]) == (150.0, 40.0)  # the model's own scaling

    with eval_mode(model):
        for task in tasks:
            entry = result["tasks"][f"{task}-v3"]
            env = make_env(task, episode_layout(seed, 0)[0])  # episodes < 50: all from one MT1 seed
            for j in range(episodes):
                mt1_seed, index = episode_layout(seed, j)
                assert mt1_seed == episode_layout(seed, 0)[0]
                fix_goal(env, index)
                ref = rollout_reference_episode(model, env, target)
                assert ref.actions.shape == (1, EPISODE_LENGTH, 4)
                np.testing.assert_allclose(entry["return_per_episode"][j], ref.returns[0], rtol=1e-9)
                any_, final = episode_success(ref.successes)
                assert entry["success_any_per_episode"][j] == float(any_[0])
                assert entry["success_final_per_episode"][j] == float(final[0])
            env.close()
    # the policy did something: episodes differ from one another
    returns = [r for e in result["tasks"].values() for r in e["return_per_episode"]]
    assert len(set(np.round(returns, 6))) == len(returns)


@pytest.mark.slow
def test_lockstep_actions_equal_reference_actions():
    """Action-level check on one chunk (returns could in principle agree by accident), with the
    other token layout (no reward tokens), a short context and non-default scales."""
    import gymnasium as gym

    from dt_eva.evaluation import LayoutEnv, rollout_lockstep

    model = tiny_dt("R,s,a", context_len=5, rtg_scale=100.0, reward_scale=50.0)
    layouts = [episode_layout(0, 0), episode_layout(0, 7)]
    envs = [LayoutEnv("reach") for _ in layouts]
    for env, layout in zip(envs, layouts):
        env.layout = layout
    vec = gym.vector.SyncVectorEnv([lambda e=e: e for e in envs])
    targets = np.array([500.0, 1200.0])
    with eval_mode(model):
        batch = rollout_lockstep(model, vec, targets)
        env = make_env("reach", layouts[0][0])  # both layouts come from this MT1 seed
        for i, (_, index) in enumerate(layouts):
            fix_goal(env, index)
            ref = rollout_reference_episode(model, env, targets[i])
            np.testing.assert_allclose(batch.actions[i], ref.actions[0], rtol=0, atol=1e-6)
            np.testing.assert_array_equal(batch.successes[i], ref.successes[0])
            np.testing.assert_allclose(batch.rewards[i], ref.rewards[0], rtol=1e-9)
        env.close()
    vec.close()
    assert batch.actions.shape == (2, EPISODE_LENGTH, 4) and np.abs(batch.actions).max() > 0.1
    assert model.training  # eval_mode restored the train flag


@pytest.mark.slow
def test_evaluate_policy_result_structure_and_determinism():
    model = tiny_dt(dtype=torch.float32).train()
    kwargs = dict(episodes=3, seed=1, target_returns={"reach": 800.0, "window-close": 1000.0}, progress=False)
    result = evaluate_policy(model, "reach,window-close", **kwargs)
    assert set(result) >= {"tasks", "mean", "episodes", "seed", "seconds", "env_steps_per_s"}
    assert list(result["tasks"]) == ["reach-v3", "window-close-v3"]
    for task, entry in result["tasks"].items():
        assert CONTRACT_TASK_KEYS <= set(entry)
        assert entry["episodes"] == 3 and len(entry["success_any_per_episode"]) == 3
        assert 0.0 <= entry["success_final"] <= 1.0 and 0.0 <= entry["success_any"] <= 1.0
        assert all(f <= a for a, f in zip(entry["success_any_per_episode"], entry["success_final_per_episode"]))
        # 200 steps of reward in [0, 10]: a 0-step or truncated episode could not reach this
        assert all(0.0 < r <= 10.0 * EPISODE_LENGTH for r in entry["return_per_episode"])
    assert result["tasks"]["reach-v3"]["target_return"] == 800.0
    assert result["mean"]["return_mean"] == pytest.approx(
        np.mean([e["return_mean"] for e in result["tasks"].values()]))
    assert result["episodes"] == 3 and result["seed"] == 1 and result["env_steps_per_s"] > 0
    json.dumps(result)  # eval.json material
    assert model.training

    # other chunking (2 envs), envs stepped in worker processes: same episodes
    again = evaluate_policy(model, "reach,window-close", num_envs=2, asynchronous=True, **kwargs)
    for task in result["tasks"]:
        np.testing.assert_allclose(again["tasks"][task]["return_per_episode"],
                                   result["tasks"][task]["return_per_episode"], rtol=1e-4)


# --- bad input ------------------------------------------------------------------------------------
def test_bad_input_errors():
    model = tiny_dt()
    with pytest.raises(ValueError, match="unknown Meta-World task 'hamer'.*hammer"):
        evaluate_policy(model, "hamer", episodes=1, target_returns=1.0, progress=False)
    with pytest.raises(ValueError, match="--target-return"):
        evaluate_policy(model, "hammer", episodes=1, progress=False)
    with pytest.raises(FileNotFoundError, match="--target-return"):
        evaluate_policy(model, "hammer", episodes=1, progress=False, dataset="/nonexistent/data")
    with pytest.raises(ValueError, match="episodes must be a positive integer"):
        evaluate_policy(model, "hammer", episodes=0, target_returns=1.0, progress=False)
    with pytest.raises(ValueError, match="num_envs"):
        evaluate_policy(model, "hammer", episodes=1, target_returns=1.0, num_envs=0, progress=False)
    with pytest.raises(ValueError, match="rtg_scale"):  # the model carries the scaling: checked when built
        tiny_dt(rtg_scale=0.0)
    wrong = DecisionTransformer(DTConfig.tiny(state_dim=17, hidden_size=32, n_head=2, n_layer=1))
    with pytest.raises(ValueError, match="state_dim=17.*Meta-World"):
        evaluate_policy(wrong, "hammer", episodes=1, target_returns=1.0, progress=False)


# --- video ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_video_is_written_or_warned_never_raised(tmp_path, monkeypatch):
    from dt_eva.evaluation.video import write_episode_gifs

    episode = {"task": "reach-v3", "layout": episode_layout(0, 0), "actions": np.zeros((6, 4), np.float32)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = write_episode_gifs(tmp_path / "ok", [episode])
    if written:  # rendering works here: a real multi-frame GIF
        import imageio.v2 as imageio

        frames = imageio.mimread(written["reach-v3"])
        assert len(frames) == 4 and frames[0].ndim == 3
    else:
        assert any("rendering failed" in str(w.message) for w in caught)

    monkeypatch.setenv("MUJOCO_GL", "no-such-backend")
    with pytest.warns(RuntimeWarning, match="MUJOCO_GL=no-such-backend"):
        assert write_episode_gifs(tmp_path / "bad", [episode]) == {}
    assert not list((tmp_path / "bad").glob("*.gif"))


# --- precision and pipelining ---------------------------------------------------------------------
@pytest.mark.slow
def test_pipelined_evaluation_is_identical_to_unpipelined():
    """Envs stepped in worker processes while the model computes the other half: same episodes,
    bit for bit, as everything in this process (fp32 model, 5 envs; 1, 2 and 3 worker processes)."""
    model = tiny_dt(dtype=torch.float32)
    kwargs = dict(episodes=3, seed=2, target_returns=900.0, num_envs=5, progress=False, autocast_dtype=None)
    plain = evaluate_policy(model, "reach,push", env_workers=0, **kwargs)
    assert plain["env_workers"] == 0 and plain["precision"] == "fp32"
    for workers in (1, 2, 3):
        piped = evaluate_policy(model, "reach,push", env_workers=workers, **kwargs)
        assert piped["env_workers"] == workers
        for task, entry in plain["tasks"].items():
            for key in ("return_per_episode", "success_any_per_episode", "success_final_per_episode"):
                assert piped["tasks"][task][key] == entry[key], (workers, task, key)
    returns = [r for e in plain["tasks"].values() for r in e["return_per_episode"]]
    assert len(set(returns)) == len(returns)  # the episodes differ: a real comparison


class RecordingGroup:
    """An in-process env group that also keeps every observation it hands to the rollout."""

    def __init__(self, vec_env):
        from dt_eva.evaluation.env_workers import VectorEnvGroup

        self.group = VectorEnvGroup(vec_env)
        self.num_envs = self.group.num_envs
        self.observations = []

    def reset(self):
        obs = self.group.reset()
        self.observations.append(obs.copy())
        return obs

    def step_async(self, actions):
        self.group.step_async(actions)

    def step_wait(self):
        obs, reward, success = self.group.step_wait()
        self.observations.append(obs.copy())
        return obs, reward, success

    def close(self):
        pass


def _recorded_rollout(model, task, layouts, targets, autocast_dtype):
    import gymnasium as gym

    from dt_eva.evaluation import LayoutEnv
    from dt_eva.evaluation.rollout import rollout_groups

    envs = [LayoutEnv(task) for _ in layouts]
    for env, layout in zip(envs, layouts):
        env.layout = layout
    group = RecordingGroup(gym.vector.SyncVectorEnv([lambda e=e: e for e in envs]))
    with eval_mode(model):
        batch = rollout_groups(model, [group], targets, autocast_dtype=autocast_dtype)
    for env in envs:
        env.close()
    return batch, np.stack(group.observations[:EPISODE_LENGTH], axis=1)  # [N, 200, 39]: obs seen at each step


def _replay_actions(model, observations, batch, targets, rtg_scale, reward_scale):
    """The fp32 model's action at every step of recorded episodes (teacher forcing on their histories)."""
    n, steps = batch.rewards.shape
    k = model.cfg.context_len
    rtg = np.zeros((n, steps))
    rtg[:, 0] = targets / rtg_scale
    for t in range(1, steps):
        rtg[:, t] = update_returns_to_go(rtg[:, t - 1], batch.rewards[:, t - 1], rtg_scale, targets / rtg_scale)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    out = np.zeros_like(batch.actions)
    with eval_mode(model):
        for t in range(steps):
            lo = max(0, t + 1 - k)
            actions = as_t(batch.actions[:, lo : t + 1]).clone()
            actions[:, -1] = 0.0
            rewards = as_t(batch.rewards[:, lo : t + 1] / reward_scale).clone()
            rewards[:, -1] = 0.0
            out[:, t] = model.predict_last_action(
                as_t(observations[:, lo : t + 1]), actions, as_t(rtg[:, lo : t + 1, None]),
                torch.arange(lo, t + 1).expand(n, -1), rewards[..., None],
            ).clamp(-1, 1).numpy()
    return out


@pytest.mark.slow
def test_fp32_rollout_equals_reference_and_bf16_rollout_stays_within_bf16_tolerance(monkeypatch):
    from dt_eva.utils import precision as precision_module

    scales = dict(rtg_scale=150.0, reward_scale=40.0)
    model = tiny_dt(dtype=torch.float32, **scales)
    layouts = [episode_layout(0, 0), episode_layout(0, 3)]
    targets = np.array([700.0, 1100.0])

    # fp32: the inference fast path plays the same episodes as the reference (full forward per step)
    fp32, fp32_obs = _recorded_rollout(model, "push", layouts, targets, None)
    env = make_env("push", layouts[0][0])
    with eval_mode(model):
        for i, (_, index) in enumerate(layouts):
            fix_goal(env, index)
            ref = rollout_reference_episode(model, env, targets[i])
            np.testing.assert_allclose(fp32.actions[i], ref.actions[0], rtol=0, atol=1e-5)
            # fp32 rounding of two different forwards (~1e-7 in the actions) moves MuJoCo's rewards slightly
            np.testing.assert_allclose(fp32.rewards[i], ref.rewards[0], rtol=1e-3, atol=1e-5)
            np.testing.assert_array_equal(fp32.successes[i], ref.successes[0])
    env.close()
    # the replay helper reproduces the fp32 rollout from its own histories
    np.testing.assert_allclose(_replay_actions(model, fp32_obs, fp32, targets, **scales), fp32.actions, atol=1e-5)

    # bf16 autocast: every action within bf16 tolerance of the fp32 model's on the same history
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    from dt_eva.utils.precision import resolve_precision

    bf16, bf16_obs = _recorded_rollout(model, "push", layouts, targets, resolve_precision("auto", "cpu"))
    replayed = _replay_actions(model, bf16_obs, bf16, targets, **scales)
    error = np.abs(bf16.actions - replayed)
    assert error.max() < 0.05 and error.mean() < 0.01, (error.max(), error.mean())
    assert error.max() > 0  # bf16 really ran
    assert np.abs(bf16.actions).max() > 0.1


def test_evaluate_policy_precision_argument(monkeypatch):
    from dt_eva.experiments.evaluate import eval_autocast_dtype
    from dt_eva.utils import precision as precision_module

    model = tiny_dt(dtype=torch.float32)
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    # the driver resolves the option once (evaluate_run); a forced slow bf16 or an unknown name fails there
    with pytest.raises(ValueError, match="no native bf16 matmuls"):
        eval_autocast_dtype("bf16", "fp32", "cpu")
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        eval_autocast_dtype("half", "fp32", "cpu")
    # evaluate_policy takes only the resolved dtype: an option would be a second place that resolves it
    for option in ("auto", "bf16", "fp32", "half"):
        with pytest.raises(TypeError, match="resolved autocast dtype"):
            evaluate_policy(model, "reach", episodes=1, target_returns=1.0, autocast_dtype=option, progress=False)
    with pytest.raises(ValueError, match="env_workers must be a non-negative integer"):
        evaluate_policy(model, "reach", episodes=1, target_returns=1.0, env_workers=-1, progress=False)


def test_default_env_workers_and_even_split():
    from dt_eva.evaluation.env_workers import default_env_workers, split_evenly

    assert [default_env_workers(c) for c in (1, 2, 3, 4, 16)] == [0, 2, 2, 3, 8]
    assert split_evenly(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert split_evenly(list(range(2)), 3) == [[0], [1]]
    assert split_evenly(list(range(3)), 0) == [[0, 1, 2]]


def test_low_precision_copy_casts_linear_weights_once_and_leaves_the_model_alone():
    from dt_eva.evaluation.rollout import low_precision_copy

    model = tiny_dt(dtype=torch.float32).eval()
    copy = low_precision_copy(model, torch.bfloat16)
    assert copy.blocks[0].attn.qkv.weight.dtype == copy.action_head.weight.dtype == torch.bfloat16
    assert copy.blocks[0].ln1.weight.dtype == copy.embed_timestep.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(3, 8, 39, generator=g), torch.rand(3, 8, 4, generator=g) * 2 - 1,
            torch.rand(3, 8, 1, generator=g) * 5, torch.arange(8).expand(3, 8), torch.rand(3, 8, 1, generator=g))
    with torch.inference_mode():
        reference = model.predict_last_action(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = copy.predict_last_action(*args)
            autocast_only = model.predict_last_action(*args)
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), autocast_only.float(), rtol=0, atol=1e-6)  # same bf16 math
    torch.testing.assert_close(fast.float(), reference, rtol=0, atol=0.05)


def test_auto_precision_evaluates_a_float64_model_in_float64_on_a_bf16_cpu(monkeypatch):
    # on a CPU with native bf16 "auto" means bf16 autocast, which only lowers fp32 ops: a float64 model
    # must run as it is (it used to fail with "double != BFloat16" there)
    from dt_eva.utils import precision as precision_module

    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    model = tiny_dt()
    kwargs = dict(episodes=1, seed=2, target_returns=900.0, num_envs=1, progress=False)
    from dt_eva.experiments.evaluate import eval_autocast_dtype

    auto_dtype = eval_autocast_dtype("auto", "fp32", "cpu", torch.float64)  # what evaluate_run resolves for it
    assert auto_dtype is None
    auto = evaluate_policy(model, ["reach"], autocast_dtype=auto_dtype, **kwargs)
    fp64 = evaluate_policy(model, ["reach"], autocast_dtype=eval_autocast_dtype("fp32", "fp32", "cpu"), **kwargs)
    assert auto["precision"] == "fp32"
    assert auto["tasks"] == fp64["tasks"]
    with pytest.raises(ValueError, match=r"precision=bf16 needs a model with fp32 weights.*are float64"):
        evaluate_policy(model, ["reach"], autocast_dtype=torch.bfloat16, **kwargs)
