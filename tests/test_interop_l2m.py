"""`dt-eva import --from l2m`: files in exactly the L2M layouts, built from a dataset collected here
(real Meta-World episodes), convert back to the same episodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dt_eva.cli import main
from dt_eva.data import WindowSampler, collect_dataset, dataset_summary, load_dataset
from dt_eva.data.format import ARRAY_SPECS, OPTIONAL_ARRAYS
from dt_eva.data.interop.l2m import episode_starts, import_l2m
from dt_eva.runs.policy import collect_hint, target_returns

TASKS = ["reach-v3", "window-close-v3"]
EPISODES = 3


@pytest.fixture
def collected(collected_reach_window) -> Path:
    return collected_reach_window  # TASKS x EPISODES, see conftest.py


def _flat(collected: Path, task: str) -> dict[str, np.ndarray]:
    """The task's episodes as one L2M replay buffer: flat [N, ...] arrays, done at each episode's last step."""
    a = {k: np.load(collected / task / f"{k}.npy") for k in ("observations", "actions", "rewards")}
    n = a["rewards"].size
    obs = a["observations"].reshape(n, 39)
    dones = np.zeros(n, dtype=np.float32)
    dones[199::200] = 1.0
    return {"observations": obs, "next_observations": np.concatenate([obs[1:], obs[-1:]]),
            "actions": a["actions"].reshape(n, 4), "rewards": a["rewards"].reshape(n), "dones": dones}


def _write_buffers(collected: Path, folder: Path, compressed: bool = False, **override) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        arrays = {**_flat(collected, task), **override}
        (np.savez_compressed if compressed else np.savez)(folder / f"{task[:-3]}-v2.npz", **arrays)
    return folder


def _assert_same_episodes(imported: Path, collected: Path, tasks=TASKS) -> None:
    ds, ref = load_dataset(imported), load_dataset(collected)
    assert ds.tasks == list(tasks)
    for task in tasks:
        got, want = ds.task_arrays(task), ref.task_arrays(task)
        for key in ("observations", "actions", "rewards"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{task} {key}")
        # collect sums the simulator's float64 rewards, the import the stored float32 ones
        np.testing.assert_allclose(got["returns_to_go"], want["returns_to_go"], rtol=1e-6, atol=1e-4)
        assert ds.unknown_arrays(task) == list(OPTIONAL_ARRAYS) and "successes" not in got
        assert ds.max_return(task) == pytest.approx(ref.max_return(task), rel=1e-6)


def test_episode_split_at_dones_every_200_steps_and_the_end():
    dones = np.zeros(1000, dtype=bool)
    dones[[199, 299, 699]] = True
    starts, short = episode_starts(dones)
    assert starts.tolist() == [0, 300, 500, 700] and short == [(200, 100), (900, 100)]


@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez_compressed"])
def test_replay_buffers_import_to_the_collected_episodes(collected, tmp_path, compressed):
    src = _write_buffers(collected, tmp_path / "l2m", compressed=compressed)
    meta = import_l2m(src, tmp_path / "imported")
    _assert_same_episodes(tmp_path / "imported", collected)
    assert meta["source"]["kind"] == "l2m" and meta["source"]["path"] == str(src.resolve())
    assert meta["source"]["task_names"] == {"reach-v3": "reach-v2", "window-close-v3": "window-close-v2"}
    info = json.loads((tmp_path / "imported" / "reach-v3" / "task.json").read_text())
    assert info["source"]["transitions"] == EPISODES * 200 and info["unknown"] == list(OPTIONAL_ARRAYS)
    assert not any((tmp_path / "imported" / "reach-v3" / f"{n}.npy").exists() for n in OPTIONAL_ARRAYS)


def test_buffers_without_dones_split_every_200_steps(collected, tmp_path):
    n = EPISODES * 200
    src = _write_buffers(collected, tmp_path / "l2m", dones=np.zeros(n, dtype=bool))
    import_l2m(src, tmp_path / "imported", tasks="window-close")
    _assert_same_episodes(tmp_path / "imported", collected, tasks=["window-close-v3"])


def test_trajectory_files_import_to_the_collected_episodes(collected, tmp_path):
    for task in TASKS:
        folder = tmp_path / "l2m" / f"{task[:-3]}-v2"
        folder.mkdir(parents=True)
        flat = _flat(collected, task)
        for e in range(EPISODES):  # traj_0, traj_5, traj_10: natural order, not traj_10 before traj_5
            rows = slice(e * 200, (e + 1) * 200)
            rewards = flat["rewards"][rows]
            np.savez(folder / f"traj_{e * 5}.npz", states=flat["observations"][rows], actions=flat["actions"][rows],
                     rewards=rewards, dones=flat["dones"][rows], returns_to_go=np.cumsum(rewards[::-1])[::-1] / 200)
    import_l2m(tmp_path / "l2m", tmp_path / "imported")
    _assert_same_episodes(tmp_path / "imported", collected)


def test_short_episodes_are_refused_with_the_count_or_dropped(collected, tmp_path):
    n = EPISODES * 200
    flat = _flat(collected, "reach-v3")
    extra = {k: np.concatenate([v, v[:50]]) for k, v in flat.items()}  # a trailing 50-step partial episode
    extra["dones"][n + 49] = 0
    src = tmp_path / "l2m"
    src.mkdir()
    np.savez(src / "reach-v2.npz", **extra)
    with pytest.raises(ValueError) as e:
        import_l2m(src, tmp_path / "refused")
    msg = str(e.value)
    assert str(src / "reach-v2.npz") in msg and "1 episode(s)" in msg and "50..50 steps" in msg and "--drop-short" in msg
    assert not (tmp_path / "refused" / "metadata.json").exists() and not (tmp_path / "refused" / "reach-v3").exists()
    meta = import_l2m(src, tmp_path / "dropped", drop_short=True)
    assert meta["short_episodes_dropped"] == {"reach-v3": 1}
    _assert_same_episodes(tmp_path / "dropped", collected, tasks=["reach-v3"])


def _bad(**change):
    def make(flat):
        return {**flat, **{k: f(flat) for k, f in change.items()}}
    return make


def _nan_at(key, row):
    def f(flat):
        a = flat[key].copy()
        a[row] = np.nan
        return a
    return f


BAD_FILES = {
    "missing key": (lambda flat: {k: v for k, v in flat.items() if k != "rewards"}, "missing rewards"),
    "wrong shape": (_bad(actions=lambda f: f["actions"][:, :3]), "'actions': shape [600, 3], expected [600, 4]"),
    "length": (_bad(dones=lambda f: f["dones"][:-1]), "'dones': shape [599], expected [600]"),
    "nan": (_bad(observations=_nan_at("observations", 450)), "observations holds NaN or inf (window-close-v2.npz, transitions 400..599)"),
    "inf reward": (_bad(rewards=lambda f: np.where(np.arange(600) == 3, np.inf, f["rewards"])), "rewards holds NaN or inf"),
    "actions": (_bad(actions=lambda f: f["actions"] * 3), "actions outside [-1, 1]"),
    "pickle": (_bad(dones=lambda f: f["dones"].astype(object)), "Python objects"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_are_refused_naming_the_file_and_leave_nothing(collected, tmp_path, kind):
    make, expected = BAD_FILES[kind]
    src = tmp_path / "l2m"
    src.mkdir()
    np.savez(src / "reach-v2.npz", **_flat(collected, "reach-v3"))  # fine, and converted first
    bad = src / "window-close-v2.npz"
    arrays = make(_flat(collected, "window-close-v3"))
    np.savez(bad, allow_pickle=True, **arrays) if kind == "pickle" else np.savez(bad, **arrays)
    with pytest.raises(ValueError) as e:
        import_l2m(src, tmp_path / "out")
    assert str(bad) in str(e.value) and expected in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_name_that_maps_to_no_task_and_a_missing_task_are_refused(collected, tmp_path):
    src = _write_buffers(collected, tmp_path / "l2m")
    with pytest.raises(ValueError, match="has no L2M file for hammer-v3"):
        import_l2m(src, tmp_path / "out", tasks="reach,hammer")
    np.savez(src / "reach-upside-down-v2.npz", rewards=np.zeros(3))
    with pytest.raises(ValueError) as e:
        import_l2m(src, tmp_path / "out")
    assert str(src / "reach-upside-down-v2.npz") in str(e.value) and "names no Meta-World task" in str(e.value)


def test_every_consumer_handles_unknown_successes(collected, tmp_path, capsys):
    src = _write_buffers(collected, tmp_path / "l2m")
    assert main(["import", "--from", "l2m", str(src), "--out", str(tmp_path / "imp"), "--tasks", "reach,window-close"]) == 0
    out = capsys.readouterr().out
    assert "n/a" in out and "2 tasks imported from l2m" in out
    ds = load_dataset(tmp_path / "imp")
    assert dataset_summary(ds.metadata).count("n/a") == 2 * 3  # two tasks and the mean, any / final
    assert ds.metadata["mean"]["success_any"] is None and ds.metadata["unknown"] == sorted(OPTIONAL_ARRAYS)
    batch = WindowSampler(ds, context_len=5, batch_size=4).sample()  # the sampler needs no success flags
    assert batch["states"].shape == (4, 5, 39)
    assert target_returns(ds, ds.tasks) == {t: ds.max_return(t) for t in ds.tasks}
    assert collect_hint(tmp_path / "imp", "hammer-v3").startswith(f"dt-eva import --from l2m {src.resolve()}")
    with pytest.raises(ValueError, match="imported from l2m .*cannot add to it"):
        collect_dataset(tmp_path / "imp", "hammer", episodes=1, noise_levels=[0.0], workers=1, progress=False)
    assert main(["import", "--from", "l2m", str(src), "--out", str(tmp_path / "imp")]) == 1
    assert "already holds a dataset" in capsys.readouterr().err


def test_an_interrupted_import_resumes_keeping_finished_tasks(collected, tmp_path):
    src = _write_buffers(collected, tmp_path / "l2m")
    import_l2m(src, tmp_path / "imp", tasks="reach")
    (tmp_path / "imp" / "metadata.json").unlink()  # as if killed before the second task
    before = (tmp_path / "imp" / "reach-v3" / "observations.npy").stat().st_ino
    import_l2m(src, tmp_path / "imp")
    assert (tmp_path / "imp" / "reach-v3" / "observations.npy").stat().st_ino == before
    _assert_same_episodes(tmp_path / "imp", collected)
    assert set(ARRAY_SPECS) - set(OPTIONAL_ARRAYS) <= {p.stem for p in (tmp_path / "imp" / "window-close-v3").iterdir()}


def test_unknown_arrays_are_validated_and_collect_output_is_not_imported_into(collected, tmp_path):
    src = _write_buffers(collected, tmp_path / "l2m")
    import_l2m(src, tmp_path / "imp", tasks="reach")
    info_path = tmp_path / "imp" / "reach-v3" / "task.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "unknown": ["observations"]}))
    with pytest.raises(ValueError, match="reach-v3/task.json: 'unknown' must list some of successes, noise, random_prefix"):
        load_dataset(tmp_path / "imp")
    info_path.write_text(json.dumps({**info, "unknown": ["noise", "random_prefix"]}))  # successes.npy is absent
    with pytest.raises(ValueError, match="reach-v3/successes.npy is missing"):
        load_dataset(tmp_path / "imp")
    unfinished = tmp_path / "unfinished"  # a collect that did not finish: task dirs, no metadata.json
    (unfinished / "reach-v3").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds reach-v3, which no import wrote"):
        import_l2m(src, unfinished)
