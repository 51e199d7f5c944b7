"""Dataset collection, the validating loader and the window sampler (real Meta-World, tiny sizes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dt_eva.data import (
    ENV_SEED_BASE,
    DatasetError,
    WindowSampler,
    collect_dataset,
    load_dataset,
)
from dt_eva.data import collect as collect_mod
from dt_eva.data.collect import episode_modes, write_task_dir
from dt_eva.data.format import ARRAY_SPECS

TASKS = ["reach-v3", "window-close-v3"]
EPISODES = 4
NOISE = [0.0, 0.5]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny"
    collect_dataset(out, "reach,window-close", episodes=EPISODES, noise_levels=NOISE, seed=0, workers=1,
                    progress=False)
    return out


@pytest.fixture
def dataset_copy(dataset_dir, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(dataset_dir, dst)
    return dst


def _arrays(path: Path, task: str) -> dict[str, np.ndarray]:
    return {name: np.load(path / task / f"{name}.npy") for name in ARRAY_SPECS}


# --- collection -------------------------------------------------------------------------------

def test_episode_modes_split_evenly():
    modes = episode_modes(7, [0.0, 0.1, 0.3], [0])
    assert [m[0] for m in modes] == [0.0, 0.0, 0.0, 0.1, 0.1, 0.3, 0.3]
    assert episode_modes(4, [0.2], [0, 50]) == [(0.2, 0), (0.2, 0), (0.2, 50), (0.2, 50)]


def test_random_prefix_episodes_start_with_uniform_actions():
    from dt_eva.data.collect import rollout_task

    arrays, info = rollout_task("reach-v3", episodes=2, noise_levels=[0.0], random_prefixes=[0, 30], seed=0)
    assert arrays["random_prefix"].tolist() == [0, 30]
    expert, mixed = arrays["actions"][0], arrays["actions"][1]
    # the expert's reach actions are smooth; uniform random ones jump around
    assert np.abs(np.diff(mixed[:30], axis=0)).mean() > 5 * np.abs(np.diff(expert[:30], axis=0)).mean()
    assert [m["random_prefix"] for m in info["stats"]["by_mode"]] == [0, 30]
    assert info["stats"]["by_mode"][0]["success_any"] == 1.0


def test_collect_writes_valid_documented_files(dataset_dir):
    ds = load_dataset(dataset_dir)
    assert ds.tasks == TASKS and ds.state_dim == 39 and ds.act_dim == 4
    meta = json.loads((dataset_dir / "metadata.json").read_text())
    for lib in ("metaworld", "mujoco", "gymnasium", "numpy"):
        assert lib in meta["versions"]
    assert meta["noise_levels"] == NOISE and meta["seed"] == 0 and meta["episodes_per_task"] == EPISODES
    assert meta["env_seeds"]["per_task"]["reach-v3"] == [ENV_SEED_BASE]
    for task in TASKS:
        a = ds.task_arrays(task)
        assert a["observations"].shape == (EPISODES, 200, 39) and a["observations"].dtype == np.float32
        assert a["actions"].shape == (EPISODES, 200, 4) and np.abs(a["actions"]).max() <= 1.0
        assert a["successes"].dtype == np.bool_
        assert isinstance(a["observations"], np.memmap)
        np.testing.assert_array_equal(a["noise"], np.array([0.0, 0.0, 0.5, 0.5], np.float32))
        rewards = np.asarray(a["rewards"], np.float64)
        ref_rtg = np.array([[rewards[e, t:].sum() for t in range(200)] for e in range(EPISODES)])
        np.testing.assert_allclose(a["returns_to_go"], ref_rtg, rtol=1e-5)
        assert ds.max_return(task) == pytest.approx(rewards.sum(axis=1).max(), rel=1e-5)
        stats = meta["stats"][task]
        assert stats["all"]["episodes"] == EPISODES
        assert stats["all"]["success_any"] == pytest.approx(np.asarray(a["successes"]).any(axis=1).mean())
        assert stats["all"]["success_final"] == pytest.approx(np.asarray(a["successes"])[:, -1].mean())
        assert [m["noise"] for m in stats["by_mode"]] == NOISE
        assert stats["by_mode"][1]["return_max"] == pytest.approx(rewards[2:].sum(axis=1).max(), rel=1e-6)
        # the observation at t+1 continues from t: hand position moves, goal stays fixed in an episode
        assert np.all(a["observations"][0, :, 36:39] == a["observations"][0, :1, 36:39])
    # the scripted expert solves reach without noise
    assert meta["stats"]["reach-v3"]["by_mode"][0]["success_any"] == 1.0


def test_collect_is_deterministic_and_cli_runs_workers(dataset_dir, tmp_path, capsys):
    from dt_eva.cli import main

    out = tmp_path / "again"
    rc = main(["collect", "--tasks", "window-close,reach", "--episodes", str(EPISODES), "--noise", "0,0.5",
               "--out", str(out), "--workers", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "reach-v3" in printed and "succ any" in printed and "collected 2" in printed
    for task in TASKS:
        a, b = _arrays(dataset_dir, task), _arrays(out, task)
        for name in ARRAY_SPECS:
            assert np.array_equal(a[name], b[name]), f"{task}/{name} differs between runs"


def test_collect_resumes_and_skips_finished_tasks(dataset_copy):
    before = {p: p.stat().st_mtime_ns for p in (dataset_copy / "reach-v3").iterdir()}
    original = _arrays(dataset_copy, "window-close-v3")
    # an interrupted run: one task finished, the other never written, no metadata yet
    shutil.rmtree(dataset_copy / "window-close-v3")
    (dataset_copy / "metadata.json").unlink()
    with pytest.raises(DatasetError, match="did not finish"):
        load_dataset(dataset_copy)
    (dataset_copy / ".window-close-v3.x1y2.tmpdir").mkdir()  # left by a SIGKILLed writer
    result = collect_dataset(dataset_copy, TASKS, EPISODES, NOISE, seed=0, workers=1, progress=False)
    assert result["run"]["skipped"] == ["reach-v3"] and result["run"]["collected"] == ["window-close-v3"]
    assert {p: p.stat().st_mtime_ns for p in (dataset_copy / "reach-v3").iterdir()} == before
    resumed = _arrays(dataset_copy, "window-close-v3")
    assert all(np.array_equal(original[k], resumed[k]) for k in ARRAY_SPECS)
    assert load_dataset(dataset_copy).tasks == TASKS
    assert sorted(p.name for p in dataset_copy.iterdir()) == ["metadata.json", *TASKS]
    # nothing left to do
    again = collect_dataset(dataset_copy, TASKS, EPISODES, NOISE, seed=0, workers=1, progress=False)
    assert again["run"]["collected"] == [] and again["run"]["skipped"] == TASKS


def test_collect_refuses_other_parameters(dataset_copy):
    with pytest.raises(ValueError, match="collected with"):
        collect_dataset(dataset_copy, TASKS, EPISODES + 2, NOISE, seed=0, workers=1, progress=False)
    with pytest.raises(ValueError, match="collected with"):
        collect_dataset(dataset_copy, TASKS, EPISODES, NOISE, seed=1, workers=1, progress=False)


def test_collect_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="noise levels x random"):
        collect_dataset(tmp_path / "x", "reach", episodes=2, noise_levels=[0, 0.1, 0.3], progress=False)
    with pytest.raises(ValueError, match="noise"):
        collect_dataset(tmp_path / "x", "reach", episodes=4, noise_levels=[-0.1], progress=False)
    with pytest.raises(ValueError, match="unknown"):
        collect_dataset(tmp_path / "x", "reach,nope", episodes=4, noise_levels=[0], progress=False)


def test_interrupted_task_write_leaves_nothing_behind(dataset_dir, tmp_path, monkeypatch):
    arrays = _arrays(dataset_dir, "reach-v3")
    info = json.loads((dataset_dir / "reach-v3" / "task.json").read_text())
    calls = []

    def failing_save(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated Ctrl-C in the middle of a task directory")
        np.save(path, array)

    monkeypatch.setattr(collect_mod, "_save_array", failing_save)
    with pytest.raises(KeyboardInterrupt):
        write_task_dir(tmp_path / "reach-v3", arrays, info)
    assert list(tmp_path.iterdir()) == []  # no task dir, no temporary dir
    # replacing an existing complete directory: the old one survives a failed rewrite intact
    shutil.copytree(dataset_dir / "reach-v3", tmp_path / "reach-v3")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        write_task_dir(tmp_path / "reach-v3", arrays, info)
    assert [p.name for p in tmp_path.iterdir()] == ["reach-v3"]
    assert np.array_equal(np.load(tmp_path / "reach-v3" / "observations.npy"), arrays["observations"])


# --- loading ----------------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _set(name: str, fn):
    def corrupt(task_dir: Path) -> None:
        arr = np.load(task_dir / f"{name}.npy")
        np.save(task_dir / f"{name}.npy", fn(arr))
    return corrupt


def _with(value):
    def put(arr):
        arr = arr.copy()
        arr[1, 7] = value
        return arr
    return put


CORRUPTIONS = {
    "truncated": ("observations.npy", "not a readable", lambda d: _truncate(d / "observations.npy")),
    "garbage": ("rewards.npy", "not a readable", lambda d: (d / "rewards.npy").write_bytes(b"not numpy")),
    "missing": ("noise.npy", "missing", lambda d: (d / "noise.npy").unlink()),
    "shape": ("actions.npy", "shape", _set("actions", lambda a: a[..., :3])),
    "episodes": ("noise.npy", "shape", _set("noise", lambda a: a[:-1])),
    "dtype": ("successes.npy", "dtype", _set("successes", lambda a: a.astype(np.float32))),
    "nan": ("rewards.npy", "non-finite", _set("rewards", _with(np.nan))),
    "inf": ("observations.npy", "non-finite", _set("observations", _with(np.inf))),
    "rtg": ("returns_to_go.npy", "cumulative sum", _set("returns_to_go", lambda a: a + 1)),
    "actions": ("actions.npy", "outside", _set("actions", lambda a: a * 3)),
    "task.json": ("task.json", "JSON", lambda d: (d / "task.json").write_text("{broken")),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_load_errors_name_the_file_and_problem(dataset_copy, kind):
    filename, problem, corrupt = CORRUPTIONS[kind]
    corrupt(dataset_copy / "window-close-v3")
    with pytest.raises(ValueError) as e:
        load_dataset(dataset_copy)
    assert f"window-close-v3/{filename}" in str(e.value) and problem in str(e.value)
    # the other task still loads on its own: the error is specific to the damaged one
    assert load_dataset(dataset_copy, tasks="reach").tasks == ["reach-v3"]


def test_load_dataset_level_errors(dataset_copy, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="no data for hammer-v3"):
        load_dataset(dataset_copy, tasks="hammer")
    (dataset_copy / "push-v3").mkdir()
    with pytest.raises(ValueError, match="push-v3"):
        load_dataset(dataset_copy)
    (dataset_copy / "push-v3").rmdir()
    (dataset_copy / "metadata.json").write_text("[]")
    with pytest.raises(ValueError, match="metadata.json"):
        load_dataset(dataset_copy)


def test_load_without_mmap_reads_into_memory(dataset_dir):
    ds = load_dataset(dataset_dir, mmap=False)
    a = ds.task_arrays("reach")
    assert not isinstance(a["observations"], np.memmap) and ds.num_episodes("reach") == EPISODES


# --- sampler ----------------------------------------------------------------------------------

def _reference_batch(ds, tasks, idx, K, rtg_scale, reward_scale):
    """The same windows by a plain per-sample loop, RTG from a plain reverse sum of rewards."""
    task_ids, episodes, starts = idx
    out = {k: [] for k in ("states", "actions", "rewards", "returns_to_go", "timesteps")}
    for task_id, ep, s in zip(task_ids.tolist(), episodes.tolist(), starts.tolist()):
        a = ds.task_arrays(tasks[task_id])
        out["states"].append(np.asarray(a["observations"][ep, s : s + K]))
        out["actions"].append(np.asarray(a["actions"][ep, s : s + K]))
        out["rewards"].append(np.asarray(a["rewards"][ep, s : s + K]) / np.float32(reward_scale))
        rewards = np.asarray(a["rewards"][ep], np.float64)
        out["returns_to_go"].append(np.array([rewards[t:].sum() for t in range(s, s + K)]) / rtg_scale)
        out["timesteps"].append(np.arange(s, s + K))
    return {k: np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("K", [1, 20, 200])
def test_sampler_windows_equal_reference_loop(dataset_dir, K):
    ds = load_dataset(dataset_dir)
    sampler = WindowSampler(ds, context_len=K, batch_size=48, rtg_scale=100.0, reward_scale=10.0, seed=1)
    state = sampler.state_dict()
    idx = sampler.sample_indices()
    sampler.load_state_dict(state)
    batch = sampler.sample()
    ref = _reference_batch(ds, sampler.tasks, idx, K, 100.0, 10.0)
    B = 48
    assert batch["states"].shape == (B, K, 39) and batch["states"].dtype == torch.float32
    assert batch["actions"].shape == (B, K, 4) and batch["rewards"].shape == (B, K, 1)
    assert batch["returns_to_go"].shape == (B, K, 1) and batch["returns_to_go"].dtype == torch.float32
    assert batch["timesteps"].dtype == torch.int64 and batch["task_ids"].dtype == torch.int64
    assert torch.equal(batch["task_ids"], torch.from_numpy(idx[0]))
    for key in ("states", "actions", "timesteps"):
        assert np.array_equal(batch[key].numpy(), ref[key]), key
    assert np.array_equal(batch["rewards"].numpy()[..., 0], ref["rewards"])
    np.testing.assert_allclose(batch["returns_to_go"].numpy()[..., 0], ref["returns_to_go"], rtol=1e-5, atol=1e-6)
    assert batch["timesteps"].min() >= 0 and batch["timesteps"].max() <= 199


def test_sampler_is_uniform_over_tasks_then_episodes(dataset_dir, tmp_path):
    # give window-close only 2 of its 4 episodes: tasks must still be drawn equally often
    dst = tmp_path / "uneven"
    shutil.copytree(dataset_dir, dst)
    task_dir = dst / "window-close-v3"
    for name in ARRAY_SPECS:
        np.save(task_dir / f"{name}.npy", np.load(task_dir / f"{name}.npy")[:2])
    info = json.loads((task_dir / "task.json").read_text())
    (task_dir / "task.json").write_text(json.dumps({**info, "episodes": 2}))
    ds = load_dataset(dst)
    sampler = WindowSampler(ds, context_len=10, batch_size=500, seed=0)
    draws = [sampler.sample_indices() for _ in range(20)]
    tasks = np.concatenate([d[0] for d in draws])
    episodes = np.concatenate([d[1] for d in draws])
    starts = np.concatenate([d[2] for d in draws])
    assert abs((tasks == 1).mean() - 0.5) < 0.02
    assert episodes[tasks == 1].max() == 1 and set(episodes[tasks == 0].tolist()) == {0, 1, 2, 3}
    assert starts.min() == 0 and starts.max() == 190
    only = WindowSampler(ds, context_len=10, batch_size=64, tasks="window-close").sample()
    assert only["task_ids"].eq(0).all() and only["states"].shape == (64, 10, 39)


def test_sampler_resume_reproduces_batches(dataset_dir):
    ds = load_dataset(dataset_dir)
    uninterrupted = WindowSampler(ds, context_len=8, batch_size=16, seed=3)
    expected = [uninterrupted.sample() for _ in range(6)]
    first = WindowSampler(ds, context_len=8, batch_size=16, seed=3)
    for _ in range(3):
        first.sample()
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON / checkpoint round trip
    resumed = WindowSampler(ds, context_len=8, batch_size=16, seed=999)
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 3
    for want in expected[3:]:
        got = resumed.sample()
        assert all(torch.equal(got[k], want[k]) for k in want)
    other = WindowSampler(ds, context_len=9, batch_size=16, seed=3)
    with pytest.raises(ValueError, match="context_len"):
        other.load_state_dict(state)


def test_sampler_argument_errors(dataset_dir):
    ds = load_dataset(dataset_dir)
    with pytest.raises(ValueError, match="context_len"):
        WindowSampler(ds, context_len=201, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        WindowSampler(ds, context_len=4, batch_size=0)
    with pytest.raises(ValueError, match="no data for hammer-v3"):
        WindowSampler(ds, context_len=4, batch_size=4, tasks="hammer")
    with pytest.raises(ValueError, match="rtg_scale"):
        WindowSampler(ds, context_len=4, batch_size=4, rtg_scale=0.0)
