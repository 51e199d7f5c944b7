"""Minari both ways, with the real `minari` package: export -> Minari's own loader -> import gives the
original arrays exactly; a dataset made directly with Minari's API imports. Minari's root is a tmp dir."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from dt_eva.cli import main
from dt_eva.data import load_dataset
from dt_eva.data.format import ARRAY_SPECS

minari = pytest.importorskip("minari")
from minari.data_collector import EpisodeBuffer  # noqa: E402

from dt_eva.data.interop.minari_io import export_minari, import_minari  # noqa: E402

# Minari nags (author, permalink, env spec) on every dataset the tests make with its API directly
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:minari.*")

TASKS = ["reach-v3", "window-close-v3"]
EPISODES = 3


@pytest.fixture
def collected(collected_reach_window) -> Path:
    return collected_reach_window  # TASKS x EPISODES, see conftest.py


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def _spaces():
    import gymnasium as gym

    return {"observation_space": gym.spaces.Box(-np.inf, np.inf, (39,), np.float32),
            "action_space": gym.spaces.Box(-1.0, 1.0, (4,), np.float32)}


def test_export_is_read_by_minari_and_imports_back_exactly(collected, tmp_path, minari_root, capsys):
    assert main(["export", "--to", "minari", str(collected), "--id", "mine"]) == 0
    assert "mine/reach-v0" in capsys.readouterr().out
    assert sorted(minari.list_local_datasets()) == ["mine/reach-v0", "mine/window-close-v0"]
    ref = load_dataset(collected)
    for task in TASKS:
        md = minari.load_dataset(f"mine/{task[:-3]}-v0")
        a = ref.task_arrays(task)
        assert md.total_episodes == EPISODES and md.total_steps == EPISODES * 200
        for e, ep in enumerate(md.iterate_episodes()):
            assert ep.observations.shape == (201, 39) and ep.actions.shape == (200, 4)
            np.testing.assert_array_equal(ep.observations[:200], a["observations"][e])
            np.testing.assert_array_equal(ep.actions, a["actions"][e])
            np.testing.assert_array_equal(ep.rewards, a["rewards"][e])
            np.testing.assert_array_equal(ep.infos["success"][1:], a["successes"][e])
            assert ep.truncations[-1] and not ep.terminations.any()
        meta = md.storage.metadata["dt_eva"]
        assert meta["task"] == task and meta["source_dataset"] == str(collected.resolve())
        with pytest.raises(ValueError, match="env_spec is None"):  # documented: Meta-World specs do not serialise
            md.recover_environment()
    assert main(["import", "--from", "minari", "mine/", "--out", str(tmp_path / "back")]) == 0
    back = load_dataset(tmp_path / "back")
    assert back.tasks == TASKS and back.metadata["source"]["ids"] == ["mine/reach-v0", "mine/window-close-v0"]
    for task in TASKS:
        assert back.unknown_arrays(task) == []
        for name in ARRAY_SPECS:
            got, want = back.task_arrays(task)[name], ref.task_arrays(task)[name]
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want, err_msg=f"{task} {name}")


def test_export_refuses_existing_ids_and_writes_nothing(collected, minari_root):
    export_minari(collected, "mine", tasks="reach")
    before = sorted(p.relative_to(minari_root) for p in minari_root.rglob("*"))
    with pytest.raises(ValueError, match="mine/reach-v0 already exist.*minari delete"):
        export_minari(collected, "mine")
    assert sorted(p.relative_to(minari_root) for p in minari_root.rglob("*")) == before


def _episode_buffer(a: dict, e: int, steps: int = 200, infos: bool = True) -> EpisodeBuffer:
    obs = np.concatenate([a["observations"][e][:steps], a["observations"][e][steps - 1 : steps]])
    truncations = np.zeros(steps, dtype=bool)
    truncations[-1] = True
    return EpisodeBuffer(
        observations=obs, actions=a["actions"][e][:steps], rewards=a["rewards"][e][:steps].astype(np.float64),
        terminations=np.zeros(steps, dtype=bool), truncations=truncations,
        infos={"success": np.concatenate([[0.0], a["successes"][e][:steps].astype(np.float64)])} if infos else None)


def test_a_dataset_made_with_minaris_api_imports(collected, tmp_path):
    ref = load_dataset(collected)
    a = ref.task_arrays("reach-v3")
    minari.create_dataset_from_buffers("other/reach-v0", [_episode_buffer(a, e) for e in range(EPISODES)],
                                       algorithm_name="scripted", **_spaces())
    b = ref.task_arrays("window-close-v3")
    minari.create_dataset_from_buffers("other/window-close-v2-v0", [_episode_buffer(b, e, infos=False) for e in range(2)],
                                       **_spaces())
    import_minari("other/reach-v0,other/window-close-v2-v0", tmp_path / "imp")
    ds = load_dataset(tmp_path / "imp")
    assert ds.tasks == TASKS
    got = ds.task_arrays("reach-v3")
    for name in ("observations", "actions", "rewards", "successes"):
        np.testing.assert_array_equal(got[name], a[name], err_msg=name)
    np.testing.assert_allclose(got["returns_to_go"], a["returns_to_go"], rtol=1e-6, atol=1e-4)
    assert ds.unknown_arrays("reach-v3") == ["noise", "random_prefix"]
    assert ds.unknown_arrays("window-close-v3") == ["successes", "noise", "random_prefix"]
    assert ds.num_episodes("window-close-v3") == 2 and ds.metadata["mean"]["success_any"] is None


def test_short_episodes_are_refused_with_the_count_or_dropped(collected, tmp_path):
    a = load_dataset(collected).task_arrays("reach-v3")
    buffers = [_episode_buffer(a, 0), _episode_buffer(a, 1, steps=150), _episode_buffer(a, 2)]
    minari.create_dataset_from_buffers("other/reach-v0", buffers, **_spaces())
    with pytest.raises(ValueError, match=r"other/reach-v0: 1 of 3 episodes are not 200 steps long \(lengths 150..150\).*--drop-short"):
        import_minari("other/reach-v0", tmp_path / "refused")
    assert not (tmp_path / "refused" / "metadata.json").exists()
    meta = import_minari("other/reach-v0", tmp_path / "dropped", drop_short=True)
    assert meta["short_episodes_dropped"] == {"reach-v3": 1}
    np.testing.assert_array_equal(load_dataset(tmp_path / "dropped").task_arrays("reach")["actions"], a["actions"][[0, 2]])


def test_import_errors_name_the_dataset(collected, tmp_path):
    import gymnasium as gym

    with pytest.raises(FileNotFoundError, match="Minari dataset mine/hammer-v0 is not under .*minari download"):
        import_minari("mine/hammer-v0", tmp_path / "x")
    a = load_dataset(collected).task_arrays("reach-v3")
    minari.create_dataset_from_buffers("other/pendulum-v0", [_episode_buffer(a, 0)], **_spaces())
    with pytest.raises(ValueError, match="other/pendulum-v0: cannot tell its Meta-World task"):
        import_minari("other/pendulum-v0", tmp_path / "x")
    ep = _episode_buffer(a, 0)
    ep = dataclasses.replace(ep, observations=ep.observations[:, :3])
    minari.create_dataset_from_buffers("other/reach-v0", [ep], action_space=_spaces()["action_space"],
                                       observation_space=gym.spaces.Box(-1, 1, (3,), np.float32))
    with pytest.raises(ValueError, match="other/reach-v0: observation space .* not a Box of shape \\(39,\\)"):
        import_minari("other/reach-v0", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_without_minari_the_commands_say_what_to_install(collected, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "minari", None)  # as if not installed: `import minari` raises ImportError
    assert main(["export", "--to", "minari", str(collected), "--id", "mine"]) == 1
    assert 'pip install "dt-eva[minari]"' in capsys.readouterr().err
    assert main(["import", "--from", "minari", "mine/reach-v0", "--out", str(tmp_path / "x")]) == 1
    assert 'pip install "dt-eva[minari]"' in capsys.readouterr().err


def test_an_imported_dataset_without_success_flags_round_trips(collected, tmp_path):
    from dt_eva.data.interop.l2m import import_l2m

    a = load_dataset(collected).task_arrays("reach-v3")
    (tmp_path / "l2m").mkdir()
    dones = np.zeros(EPISODES * 200, dtype=bool)
    np.savez(tmp_path / "l2m" / "reach-v2.npz", observations=a["observations"].reshape(-1, 39),
             actions=a["actions"].reshape(-1, 4), rewards=a["rewards"].reshape(-1), dones=dones)
    import_l2m(tmp_path / "l2m", tmp_path / "imp")
    export_minari(tmp_path / "imp", "l2m")
    md = minari.load_dataset("l2m/reach-v0")
    assert "success" not in md[0].infos and md.storage.metadata["dt_eva"]["source"]["kind"] == "l2m"
    import_minari("l2m/reach-v0", tmp_path / "back")
    imp, back = load_dataset(tmp_path / "imp"), load_dataset(tmp_path / "back")
    assert back.unknown_arrays("reach") == imp.unknown_arrays("reach") == ["successes", "noise", "random_prefix"]
    for name, arr in imp.task_arrays("reach").items():
        np.testing.assert_array_equal(back.task_arrays("reach")[name], arr, err_msg=name)
