"""Dataset collection: Meta-World's scripted expert policies plus action noise, one task per worker.

Everything is a function of the arguments and `seed`: a task's episodes are rolled out in one
process, in order, from seeded envs and a per-episode noise generator, so re-running a collection
gives bit-identical arrays whatever the number of workers.
"""

from __future__ import annotations

import concurrent.futures as futures
import datetime as _dt
import multiprocessing as mp
import queue as _queue
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dt_eva.data.format import (
    ARRAY_SPECS,
    FORMAT_VERSION,
    METADATA_FILE,
    TASK_FILE,
    DatasetError,
    read_task_dir,
)
from dt_eva.envs.registry import EPISODE_LENGTH, MT50, resolve_tasks
from dt_eva.utils.io import atomic_dir, atomic_write_json, load_json_object
from dt_eva.utils.versions import library_versions

#: Collection envs use MT1 seeds ENV_SEED_BASE + 1000 * seed + block, so their goal layouts never
#: coincide with those of evaluation envs, which use seeds below ENV_SEED_BASE.
ENV_SEED_BASE = 1_000_000
#: A fresh env (and so 50 fresh goal layouts) every this many episodes of a task.
EPISODES_PER_ENV_SEED = 100
_MAX_BLOCKS = 1000

POLICY_DESCRIPTION = (
    "metaworld.policies.ENV_POLICY_MAP[task] (scripted expert); per episode a Gaussian action noise "
    "std and a number of leading uniform-random steps; actions clipped to [-1, 1]"
)


def collection_env_seed(seed: int, block: int) -> int:
    """MT1 seed of the env that collects episodes `block * EPISODES_PER_ENV_SEED ...` of a task."""
    if not 0 <= block < _MAX_BLOCKS:
        raise ValueError(f"at most {_MAX_BLOCKS * EPISODES_PER_ENV_SEED} episodes per task are supported")
    return ENV_SEED_BASE + 1000 * int(seed) + int(block)


def episode_modes(episodes: int, noise_levels: Sequence[float], random_prefixes: Sequence[int]) -> list[tuple[float, int]]:
    """(noise std, random-prefix steps) of every episode: episodes split as evenly as possible
    over all (noise, prefix) combinations, in blocks, earlier combinations taking the remainder."""
    modes = [(float(n), int(k)) for n in noise_levels for k in random_prefixes]
    base, extra = divmod(episodes, len(modes))
    out: list[tuple[float, int]] = []
    for j, mode in enumerate(modes):
        out.extend([mode] * (base + (1 if j < extra else 0)))
    return out


def task_params(task: str, episodes: int, noise_levels: Sequence[float], random_prefixes: Sequence[int], seed: int) -> dict:
    """The parameters that define a task directory's content (compared when resuming)."""
    return {
        "format_version": FORMAT_VERSION,
        "task": task,
        "episodes": int(episodes),
        "noise_levels": [float(x) for x in noise_levels],
        "random_prefixes": [int(k) for k in random_prefixes],
        "seed": int(seed),
        "episodes_per_env_seed": EPISODES_PER_ENV_SEED,
    }


def rollout_task(
    task: str,
    episodes: int,
    noise_levels: Sequence[float],
    random_prefixes: Sequence[int] = (0,),
    seed: int = 0,
    on_episode: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Roll out `episodes` episodes of the scripted policy on `task`; returns (arrays, task info).

    `on_episode(env_steps)` is called after every episode (progress reporting).
    """
    from metaworld.policies import ENV_POLICY_MAP

    from dt_eva.envs.factory import filter_third_party_warnings, make_env

    filter_third_party_warnings()
    params = task_params(task, episodes, noise_levels, random_prefixes, seed)
    modes = episode_modes(episodes, noise_levels, random_prefixes)
    task_index = MT50.index(task)
    policy = ENV_POLICY_MAP[task]()
    T = EPISODE_LENGTH
    arrays = {name: np.zeros((episodes, *shape), dtype=dtype) for name, (dtype, shape) in ARRAY_SPECS.items()}
    rewards64 = np.zeros((episodes, T), dtype=np.float64)
    env, env_seeds = None, []
    start = time.perf_counter()
    try:
        for ep, (noise_std, prefix) in enumerate(modes):
            if ep % EPISODES_PER_ENV_SEED == 0:
                if env is not None:
                    env.close()
                env_seeds.append(collection_env_seed(seed, ep // EPISODES_PER_ENV_SEED))
                env = make_env(task, env_seeds[-1], max_episode_steps=T)
            rng = np.random.default_rng([int(seed), task_index, ep])
            _play_episode(env, policy, rng, noise_std, prefix, arrays, rewards64, ep, task)
            arrays["noise"][ep] = noise_std
            arrays["random_prefix"][ep] = prefix
            if on_episode is not None:
                on_episode(T)
    finally:
        if env is not None:
            env.close()
    seconds = time.perf_counter() - start
    arrays["rewards"][:] = rewards64
    arrays["returns_to_go"][:] = returns_to_go(rewards64)  # float64 sums, stored as float32
    info = {
        **params,
        "env_seeds": env_seeds,
        "policy": f"{type(policy).__module__}.{type(policy).__qualname__}",
        "stats": task_stats(rewards64.sum(axis=1), arrays["successes"], arrays["noise"], arrays["random_prefix"]),
        "seconds": round(seconds, 3),
        "env_steps_per_s": round(episodes * T / max(seconds, 1e-9), 1),
    }
    return arrays, info


def _play_episode(env: Any, policy: Any, rng: np.random.Generator, noise_std: float, prefix: int,
                  arrays: dict[str, np.ndarray], rewards64: np.ndarray, ep: int, task: str) -> None:
    """One 200-step episode into row `ep` of `arrays` (rewards in float64 into `rewards64`): `prefix`
    uniform-random steps, then the expert's action plus N(0, noise_std) noise, clipped to [-1, 1]."""
    T = EPISODE_LENGTH
    obs, _ = env.reset()
    for t in range(T):
        arrays["observations"][ep, t] = obs
        if t < prefix:
            action = rng.uniform(-1.0, 1.0, size=4)
        else:
            action = np.asarray(policy.get_action(obs), dtype=np.float64)
            if noise_std > 0:
                action = action + rng.normal(0.0, noise_std, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        arrays["actions"][ep, t] = action
        rewards64[ep, t] = float(reward)
        arrays["successes"][ep, t] = bool(info["success"] >= 1.0)
        last = t == T - 1
        if terminated or truncated != last:
            raise RuntimeError(
                f"{task}: episode {ep} ended unexpectedly at step {t + 1} "
                f"(terminated={terminated}, truncated={truncated}); expected {T} steps"
            )


def task_stats(returns: np.ndarray, successes: np.ndarray | None, noise: np.ndarray | None = None,
               prefix: np.ndarray | None = None) -> dict:
    """Return and success statistics, over all episodes and per (noise, random-prefix) mode.

    `successes=None` (a source without per-step success flags) gives `success_any` / `success_final`
    None; without `noise` and `prefix` there are no modes (`by_mode` is empty)."""

    def summary(mask: np.ndarray) -> dict:
        r = returns[mask]
        s = None if successes is None else successes[mask]
        return {
            "episodes": int(mask.sum()),
            "return_mean": float(r.mean()),
            "return_std": float(r.std()),
            "return_min": float(r.min()),
            "return_max": float(r.max()),
            "success_any": None if s is None else float(s.any(axis=1).mean()),
            "success_final": None if s is None else float(s[:, -1].mean()),
        }

    by_mode = []
    seen: list[tuple[float, int]] = []
    if noise is not None and prefix is not None:
        for n, k in zip(noise.tolist(), prefix.tolist()):
            if (n, k) not in seen:
                seen.append((n, k))
    for n, k in seen:
        mask = (noise == np.float32(n)) & (prefix == k)
        by_mode.append({"noise": round(float(n), 6), "random_prefix": int(k), **summary(mask)})
    return {"all": summary(np.ones(len(returns), dtype=bool)), "by_mode": by_mode}


def mean_over_tasks(stats: dict[str, dict]) -> dict:
    """metadata.json's "mean": each statistic averaged over tasks; a success rate is None when any
    task's source recorded no success flags."""
    out = {}
    for key in ("return_mean", "success_any", "success_final"):
        values = [s["all"][key] for s in stats.values()]
        out[key] = None if any(v is None for v in values) else float(np.mean(values))
    return out


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted returns-to-go `[E, 200]` of rewards `[E, 200]`: reverse cumulative sum in float64."""
    r = np.asarray(rewards, dtype=np.float64)
    return np.flip(np.cumsum(np.flip(r, axis=1), axis=1), axis=1)


def _save_array(path: Path, array: np.ndarray) -> None:
    np.save(path, array, allow_pickle=False)


def write_task_dir(task_dir: Path, arrays: dict[str, np.ndarray], info: dict) -> None:
    """Write one task directory atomically: all of it appears at once, or none of it."""
    with atomic_dir(task_dir) as tmp:
        for name in ARRAY_SPECS:
            _save_array(tmp / f"{name}.npy", arrays[name])
        atomic_write_json(tmp / TASK_FILE, info)


# --- worker processes -------------------------------------------------------------------------

_progress_queue: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _collect_one(task: str, out: str, episodes: int, noise_levels: list[float], random_prefixes: list[int],
                 seed: int, on_episode: Callable[[int], None] | None = None) -> dict:
    if on_episode is None and _progress_queue is not None:
        on_episode = _progress_queue.put
    arrays, info = rollout_task(task, episodes, noise_levels, random_prefixes, seed, on_episode)
    write_task_dir(Path(out) / task, arrays, info)
    return info


# --- the dataset ------------------------------------------------------------------------------

def collect_dataset(
    out: str | Path,
    tasks: str | Iterable[str],
    episodes: int,
    noise_levels: Sequence[float],
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    random_prefixes: Sequence[int] = (0,),
) -> dict:
    """Collect (or resume, or extend) a dataset at `out`; returns the metadata written to metadata.json.

    `episodes` per task are split evenly over the `noise_levels` (Gaussian action-noise stds)
    times `random_prefixes` (uniform-random actions for the first k steps, then the expert).
    Task directories already complete with the same parameters are verified and skipped; a
    dataset at `out` made with other parameters is an error. Tasks run in `workers` processes.
    The returned dict has an extra key "run" (collected / skipped tasks, speed of this call).
    """
    out = Path(out)
    task_list = resolve_tasks(tasks)
    noise_levels, random_prefixes = _check_args(episodes, noise_levels, random_prefixes, seed, workers)
    shared = {k: v for k, v in task_params("", episodes, noise_levels, random_prefixes, seed).items() if k != "task"}
    recorded = _recorded_tasks(out, shared)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out, sorted(set(task_list) | set(recorded)))

    infos: dict[str, dict] = {}
    for task in task_list:
        info = _existing_task(out / task, {**shared, "task": task})
        if info is not None:
            infos[task] = info
    todo, skipped = [t for t in task_list if t not in infos], [t for t in task_list if t in infos]
    start = time.perf_counter()
    if todo:
        infos.update(_run_tasks(out, todo, episodes, noise_levels, random_prefixes, seed, workers, progress))
    seconds = time.perf_counter() - start

    all_tasks = recorded + [t for t in task_list if t not in recorded]
    for task in all_tasks:
        if task not in infos:  # recorded by an earlier call, not requested now: re-verify
            info = _existing_task(out / task, {**shared, "task": task})
            if info is None:
                raise DatasetError(f"{out / task} is listed in {out / METADATA_FILE} but missing or damaged; "
                                   f"re-run with --tasks {task}")
            infos[task] = info
    env_steps = len(todo) * episodes * EPISODE_LENGTH
    run = {
        "collected": todo,
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "env_steps": env_steps,
        "env_steps_per_s": round(env_steps / seconds, 1) if todo and seconds > 0 else None,
        "workers": min(workers, max(1, len(todo))),
    }
    metadata = _metadata(out, shared, {t: infos[t] for t in all_tasks}, episodes, run)
    atomic_write_json(out / METADATA_FILE, metadata)
    return {**metadata, "run": run}


def _recorded_tasks(out: Path, shared: dict) -> list[str]:
    """The tasks `out/metadata.json` lists ([] when there is none); a dataset made with other
    parameters, or imported, is an error."""
    meta_path = out / METADATA_FILE
    if not meta_path.exists():
        return []
    old = load_json_object(meta_path, required=True, error=DatasetError)
    if "source" in old:
        raise ValueError(
            f"{out} holds a dataset imported from {old['source'].get('kind', 'elsewhere')} "
            f"({old['source'].get('path')}); `dt-eva collect` cannot add to it: choose another --out"
        )
    old_params = {k: old.get(k) for k in shared}
    if old_params != shared:
        raise ValueError(
            f"{out} already holds a dataset collected with {old_params}, not {shared}: "
            "choose another --out, or delete it"
        )
    return list(old.get("tasks", []))


def _metadata(out: Path, shared: dict, infos: dict[str, dict], episodes: int, run: dict) -> dict:
    """metadata.json of the dataset at `out` whose tasks (in order) have the task.json `infos`."""
    stats = {t: info["stats"] for t, info in infos.items()}
    return {
        **shared,
        "name": out.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tasks": list(infos),
        "episodes_per_task": episodes,
        "episode_length": EPISODE_LENGTH,
        "policy": POLICY_DESCRIPTION,
        "env_seeds": {
            "rule": "MT1 seed = base + 1000 * seed + episode // episodes_per_env_seed",
            "base": ENV_SEED_BASE,
            "per_task": {t: info["env_seeds"] for t, info in infos.items()},
        },
        "noise_seeds": "numpy.random.default_rng([seed, MT50 index of the task, episode])",
        "versions": library_versions(),
        "stats": stats,
        "mean": mean_over_tasks(stats),
        "last_run": run,
    }


def _check_args(episodes: int, noise_levels: Sequence[float], random_prefixes: Sequence[int], seed: int,
                workers: int) -> tuple[list[float], list[int]]:
    noise = [float(x) for x in noise_levels]
    prefixes = [int(k) for k in random_prefixes]
    if not noise or any(not np.isfinite(x) or x < 0 for x in noise):
        raise ValueError(f"noise levels must be finite stds >= 0, got {noise_levels!r}")
    if len(set(noise)) != len(noise) or len(set(prefixes)) != len(prefixes):
        raise ValueError("noise levels and random prefixes must not repeat")
    if not prefixes or any(k < 0 or k > EPISODE_LENGTH for k in prefixes):
        raise ValueError(f"random prefixes must be step counts in 0..{EPISODE_LENGTH}, got {random_prefixes!r}")
    modes = len(noise) * len(prefixes)
    if not isinstance(episodes, int) or episodes < modes:
        raise ValueError(
            f"episodes per task ({episodes}) must be an int >= the number of noise levels x random "
            f"prefixes ({modes}) so every level gets an episode"
        )
    if episodes > _MAX_BLOCKS * EPISODES_PER_ENV_SEED:
        raise ValueError(f"at most {_MAX_BLOCKS * EPISODES_PER_ENV_SEED} episodes per task are supported")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return noise, prefixes


def _existing_task(task_dir: Path, params: dict) -> dict | None:
    """task.json of a complete, valid task directory made with `params`; None if it must be (re)collected."""
    if not task_dir.exists():
        return None
    try:
        info, _ = read_task_dir(task_dir, mmap=True)
    except DatasetError as e:
        print(f"dt-eva collect: re-collecting {task_dir.name}: {e}")
        return None
    found = {k: info.get(k) for k in params}
    if found != params:
        raise ValueError(
            f"{task_dir} was collected with {found}, not {params}: choose another --out, or delete it"
        )
    return info


def _remove_stale_temporaries(out: Path, tasks: list[str]) -> None:
    """Remove what a SIGKILLed collection of these tasks left (one collect per directory at a time): only
    the exact names its atomic writers make, `.<task>.<token>.tmpdir`, `.<task>.old` and
    `.metadata.json.<token>.tmp`; a user's `.bashrc.old` or `.cache.tmpdir` is not one of them."""
    names = "|".join(re.escape(t) for t in tasks)
    ours = re.compile(rf"\.(?:(?:{names})\.[A-Za-z0-9_]+\.tmpdir|(?:{names})\.old|"
                      rf"{re.escape(METADATA_FILE)}\.[A-Za-z0-9_]+\.tmp)")
    for p in out.iterdir():
        if not ours.fullmatch(p.name) or p.is_symlink():
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _run_tasks(out: Path, tasks: list[str], episodes: int, noise_levels: list[float], random_prefixes: list[int],
               seed: int, workers: int, progress: bool) -> dict[str, dict]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks) * episodes, unit="ep", desc="collect", disable=not progress, dynamic_ncols=True)
    infos: dict[str, dict] = {}
    steps = 0
    t0 = time.perf_counter()

    def advance(env_steps: int) -> None:
        nonlocal steps
        steps += env_steps
        bar.update(1)
        bar.set_postfix(steps_per_s=f"{steps / max(time.perf_counter() - t0, 1e-9):.0f}", refresh=False)

    try:
        workers = min(workers, len(tasks))
        if workers == 1:
            for task in tasks:
                infos[task] = _collect_one(task, str(out), episodes, noise_levels, random_prefixes, seed, advance)
            return infos
        ctx = mp.get_context("spawn")  # safe whatever threads the caller (torch) has started
        progress_queue = ctx.Queue()
        with futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(progress_queue,)) as pool:
            pending = {
                pool.submit(_collect_one, task, str(out), episodes, noise_levels, random_prefixes, seed): task
                for task in tasks
            }
            try:
                while pending:
                    done, _ = futures.wait(pending, timeout=0.2, return_when=futures.FIRST_COMPLETED)
                    _drain(progress_queue, advance)
                    for fut in done:
                        task = pending.pop(fut)
                        try:
                            infos[task] = fut.result()
                        except Exception as e:
                            if hasattr(e, "add_note"):
                                e.add_note(f"(while collecting {task})")
                            raise
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
        _drain(progress_queue, advance)
        return infos
    finally:
        bar.close()


def _drain(q: Any, advance: Callable[[int], None]) -> None:
    while True:
        try:
            advance(q.get_nowait())
        except _queue.Empty:
            return
