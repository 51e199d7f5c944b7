"""Meta-World registry and env factory (real Meta-World, a few short episodes)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dt_eva.envs import (
    ACT_DIM,
    CW10,
    EPISODE_LENGTH,
    MT40,
    MT50,
    STATE_DIM,
    filter_third_party_warnings,
    fix_goal,
    make_env,
    make_vector_env,
    resolve_task,
    resolve_tasks,
    short_name,
)


def test_splits_sizes_order_and_partition():
    assert len(MT50) == len(set(MT50)) == 50
    assert len(MT40) == 40 and len(CW10) == 10
    assert set(MT40) | set(CW10) == set(MT50) and not set(MT40) & set(CW10)
    assert [short_name(t) for t in CW10] == [
        "hammer", "push-wall", "faucet-close", "push-back", "stick-pull",
        "handle-press-side", "push", "shelf-place", "window-close", "peg-unplug-side",
    ]  # fmt: skip


def test_mt50_is_metaworlds_task_list():
    import metaworld.env_dict

    assert list(MT50) == list(metaworld.env_dict.ALL_V3_ENVIRONMENTS)


def test_resolve_task_accepts_short_and_full_names():
    assert resolve_task("hammer") == resolve_task("hammer-v3") == resolve_task(" Hammer ") == "hammer-v3"
    assert resolve_task("peg-unplug-side") == "peg-unplug-side-v3"


@pytest.mark.parametrize("bad", ["hamer", "hammer-v2", "mt40-v3", ""])
def test_unknown_task_lists_valid_names(bad):
    with pytest.raises(ValueError) as e:
        resolve_task(bad)
    msg = str(e.value)
    assert repr(bad) in msg and "window-close" in msg and "assembly" in msg
    if bad.endswith("-v2"):
        assert "v3" in msg


def test_resolve_tasks_sets_and_lists():
    assert resolve_tasks("mt40") == list(MT40)
    assert resolve_tasks("CW10") == list(CW10)
    assert resolve_tasks("mt50") == list(MT50)
    assert resolve_tasks("push,hammer-v3, push") == ["push-v3", "hammer-v3"]
    assert resolve_tasks(["reach", "cw10"]) == ["reach-v3", *CW10]
    with pytest.raises(ValueError, match="no tasks"):
        resolve_tasks(" , ")
    with pytest.raises(ValueError, match="bogus"):
        resolve_tasks("cw10,bogus")


def _goal(obs: np.ndarray) -> tuple:
    return tuple(np.round(obs[36:39], 6))


def test_env_runs_200_step_episodes_and_resamples_goals():
    env = make_env("reach", seed=0)
    try:
        goals = set()
        for episode in range(3):
            obs, _ = env.reset()
            assert obs.shape == (STATE_DIM,)
            goals.add(_goal(obs))
            for t in range(EPISODE_LENGTH):
                obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
                assert not terminated
                assert truncated == (t == EPISODE_LENGTH - 1)
                assert 0.0 <= reward <= 10.0 and "success" in info
        assert env.action_space.shape == (ACT_DIM,)
        assert len(goals) >= 2, "goals must be re-sampled at every reset"
        fix_goal(env, 7)
        pinned = {_goal(env.reset()[0]) for _ in range(3)}
        assert len(pinned) == 1
        fix_goal(env, 8)
        assert _goal(env.reset()[0]) not in pinned
        with pytest.raises(ValueError, match="goal_index"):
            fix_goal(env, 50)
    finally:
        env.close()


def test_make_env_argument_errors():
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_env("reach", seed=0, max_episode_steps=501)
    with pytest.raises(ValueError, match="seed"):
        make_env("reach", seed=-1)
    with pytest.raises(ValueError, match="unknown"):
        make_env("nope", seed=0)


def test_vector_env_gives_each_env_its_own_seed():
    venv = make_vector_env(["reach", "reach"], num_envs=3, seed=5)
    try:
        obs, _ = venv.reset()
        assert obs.shape == (3, STATE_DIM)
        assert len({_goal(o) for o in obs}) == 3, "identical seeds would give identical goal layouts"
        obs, rew, term, trunc, _ = venv.step(np.zeros((3, ACT_DIM), dtype=np.float32))
        assert rew.shape == (3,) and not term.any() and not trunc.any()
    finally:
        venv.close()


def test_async_vector_env_mixed_tasks():
    venv = make_vector_env(["reach", "push"], num_envs=2, seed=0, asynchronous=True)
    try:
        obs, _ = venv.reset()
        assert obs.shape == (2, STATE_DIM)
        for _ in range(3):
            obs, *_ = venv.step(np.zeros((2, ACT_DIM), dtype=np.float32))
        assert np.isfinite(obs).all()
    finally:
        venv.close()


def test_policy_warnings_are_filtered():
    from metaworld.policies.policy import move

    def warns() -> bool:
        move(np.zeros(3), np.ones(3), p=100.0)  # a response > 1: the policies' per-step warning
        return any("Constant(s) may be too high" in str(w.message) for w in caught)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warns(), "the check below would be vacuous"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_third_party_warnings()
        assert not warns()
