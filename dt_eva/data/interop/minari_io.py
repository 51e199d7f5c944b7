"""Minari (Farama's offline-RL dataset standard) both ways.

- `export_minari(dataset, namespace)` writes one Minari dataset per task, `NAMESPACE/<task>-v0`, under
  Minari's root (`MINARI_DATASETS_PATH`, else `~/.minari/datasets`), from episode buffers with explicit
  spaces (Box(39) observations, Box(4) actions in [-1, 1]): `minari.DataCollector` needs jax, and
  Meta-World's registered env specs do not serialise (their entry point is a lambda), so the datasets
  carry no env spec and `recover_environment()` cannot rebuild the env; `metadata["dt_eva"]["env"]`
  says how to make it.
- `import_minari(ids, out)` reads local Minari datasets of Meta-World tasks into this package's format.

Per episode of 200 steps Minari holds 201 observations (the one after the last action too). dt-eva
datasets do not store that last observation, so the export repeats the 200th one there (the metadata
says so) and the import drops the 201st. Per-step success goes into `infos["success"]` (Minari's
infos hold the reset's entry first, so 201 values, the first False); the episode's action-noise std,
random prefix and returns-to-go into `infos["dt_eva_noise" | "dt_eva_random_prefix" |
"dt_eva_returns_to_go"]`, so the round trip returns the original arrays exactly.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from dt_eva.data.format import OPTIONAL_ARRAYS, load_dataset
from dt_eva.data.interop.writer import SourceError, TaskSource, write_dataset
from dt_eva.envs.registry import ACT_DIM, EPISODE_LENGTH, STATE_DIM, resolve_task, short_name

INSTALL_HINT = 'Minari is not installed: pip install "dt-eva[minari]"'
ROOT_VARIABLE = "MINARI_DATASETS_PATH"
#: infos keys the export adds next to Meta-World's own "success"
INFO_KEYS = {"noise": "dt_eva_noise", "random_prefix": "dt_eva_random_prefix", "returns_to_go": "dt_eva_returns_to_go"}
BATCH_EPISODES = 256
FINAL_OBSERVATION_NOTE = ("dt-eva stores no observation after the last action: the 201st observation of each "
                          "episode repeats the 200th")


class MinariMissing(ValueError):
    """The optional `minari` dependency is not installed (the message says what to install)."""


def _minari() -> Any:
    try:
        import minari  # optional extra (dt-eva[minari])
    except ImportError:
        raise MinariMissing(INSTALL_HINT) from None
    return minari


def minari_root() -> Path:
    """Where Minari keeps local datasets: `MINARI_DATASETS_PATH`, else `~/.minari/datasets`."""
    return Path(os.environ.get(ROOT_VARIABLE) or Path.home() / ".minari" / "datasets")


def minari_id(namespace: str, task: str) -> str:
    """`mine`, `hammer-v3` -> `mine/hammer-v0`."""
    return f"{namespace.strip('/')}/{short_name(task)}-v0"


@contextlib.contextmanager
def _root(path: Path) -> Iterator[None]:
    """Minari reads its root from the environment at every call: point it at `path` for a while."""
    before = os.environ.get(ROOT_VARIABLE)
    os.environ[ROOT_VARIABLE] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ROOT_VARIABLE, None)
        else:
            os.environ[ROOT_VARIABLE] = before


# --- export -------------------------------------------------------------------------------------

def export_minari(dataset: str | Path, namespace: str, tasks: str | Iterable[str] | None = None) -> dict[str, Path]:
    """Write each task of the dt-eva `dataset` as the Minari dataset `NAMESPACE/<task>-v0`; returns id -> path.

    Existing Minari datasets of the same ids are an error (nothing is written then). Each dataset is
    built in a temporary root next to the real one and renamed into place, so a failure leaves none
    half-written."""
    minari = _minari()
    if not namespace or namespace.strip("/") != namespace or " " in namespace:
        raise ValueError(f"--id {namespace!r}: a Minari namespace is a name like 'mine' or 'mine/metaworld'")
    ds = load_dataset(dataset, tasks=tasks)
    root = minari_root()
    ids = {task: minari_id(namespace, task) for task in ds.tasks}
    taken = [i for i in ids.values() if (root / i).exists()]
    if taken:
        raise ValueError(f"Minari dataset(s) {', '.join(taken)} already exist under {root}: delete them "
                         f"(`minari delete {taken[0]}`) or choose another --id")
    root.mkdir(parents=True, exist_ok=True)
    from minari.namespace import create_namespace, list_local_namespaces

    with _root(root):
        if namespace not in list_local_namespaces():
            create_namespace(namespace, description=f"Meta-World datasets exported by dt-eva from {ds.path}")
    written = {}
    for task, dataset_id in ids.items():
        with tempfile.TemporaryDirectory(prefix=".dt-eva-export.", dir=root) as tmp:
            with _root(Path(tmp)), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Minari's nags about author / permalink / env spec
                _create(minari, ds, task, dataset_id)
            os.replace(Path(tmp) / dataset_id, root / dataset_id)
        written[dataset_id] = root / dataset_id
    return written


def _create(minari: Any, ds: Any, task: str, dataset_id: str) -> None:
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    arrays = ds.task_arrays(task)
    unknown = ds.unknown_arrays(task)
    buffers = [EpisodeBuffer(id=e, **_episode(arrays, e)) for e in range(ds.num_episodes(task))]
    created = minari.create_dataset_from_buffers(
        dataset_id, buffers,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32),
        algorithm_name=str(ds.metadata.get("policy") or ds.metadata.get("source", {}).get("description", "unknown")),
        author="dt-eva", description=f"Meta-World {task}, {ds.num_episodes(task)} episodes of {EPISODE_LENGTH} "
                                     f"steps, exported by dt-eva from {ds.path}", data_format="hdf5",
    )
    created.storage.update_metadata({"dt_eva": {
        "task": task,
        "source_dataset": str(Path(ds.path).resolve()),
        "source_name": ds.metadata.get("name"),
        "source_created": ds.metadata.get("created"),
        "source": ds.metadata.get("source", {"kind": "dt-eva collect", "policy": ds.metadata.get("policy")}),
        "unknown": unknown,
        "final_observation": FINAL_OBSERVATION_NOTE,
        "env": {"recover_environment": "not available: Meta-World's env specs do not serialise",
                "make": f"dt_eva.envs.make_env({task!r}, seed) or gymnasium.make('Meta-World/MT1', "
                        f"env_name={task!r}, seed=seed, max_episode_steps={EPISODE_LENGTH})"},
        "versions": ds.metadata.get("versions"),
    }})


def _episode(arrays: dict[str, np.ndarray], e: int) -> dict[str, Any]:
    obs = np.asarray(arrays["observations"][e])
    infos: dict[str, np.ndarray] = {}
    if "successes" in arrays:
        infos["success"] = np.concatenate([[False], arrays["successes"][e]])
    rtg = np.asarray(arrays["returns_to_go"][e])
    infos[INFO_KEYS["returns_to_go"]] = np.concatenate([rtg, np.zeros(1, rtg.dtype)])  # 0 left after the last step
    for name in ("noise", "random_prefix"):
        if name in arrays:
            infos[INFO_KEYS[name]] = np.full(EPISODE_LENGTH + 1, arrays[name][e], dtype=arrays[name].dtype)
    truncations = np.zeros(EPISODE_LENGTH, dtype=bool)
    truncations[-1] = True
    return {"observations": np.concatenate([obs, obs[-1:]]), "actions": np.asarray(arrays["actions"][e]),
            "rewards": np.asarray(arrays["rewards"][e]), "terminations": np.zeros(EPISODE_LENGTH, dtype=bool),
            "truncations": truncations, "infos": infos}


# --- import -------------------------------------------------------------------------------------

def resolve_ids(spec: str | Iterable[str]) -> list[str]:
    """`a/hammer-v0,a/push-v0` (or a list); `NAMESPACE/` means every local dataset in that namespace."""
    minari = _minari()
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    ids: list[str] = []
    for item in items:
        if item.endswith("/"):
            found = sorted(i for i in minari.list_local_datasets() if i.startswith(item))
            if not found:
                raise FileNotFoundError(f"no local Minari datasets in namespace {item!r} under {minari_root()}")
            ids.extend(i for i in found if i not in ids)
        elif item not in ids:
            ids.append(item)
    if not ids:
        raise ValueError(f"no Minari dataset ids in {spec!r}: give ID[,ID...], e.g. mine/hammer-v0")
    return ids


def _task_of(dataset: Any, dataset_id: str) -> str:
    """The Meta-World task of a Minari dataset: recorded by the export, else its name (`hammer`, `hammer-v2`)."""
    recorded = dataset.storage.metadata.get("dt_eva", {}).get("task")
    name = recorded or dataset_id.rsplit("/", 1)[-1].rsplit("-v", 1)[0]
    try:
        return resolve_task(name[: -len("-v2")] if name.endswith("-v2") else name)
    except ValueError:
        raise SourceError(f"Minari dataset {dataset_id}: cannot tell its Meta-World task from the name {name!r}; "
                          "name it <task>-v0 (e.g. mine/hammer-v0)") from None


def _check_spaces(dataset: Any, dataset_id: str) -> None:
    for what, space, dim in (("observation", dataset.observation_space, STATE_DIM),
                             ("action", dataset.action_space, ACT_DIM)):
        if getattr(space, "shape", None) != (dim,):
            raise SourceError(f"Minari dataset {dataset_id}: {what} space {space} is not a Box of shape ({dim},): "
                              "not a Meta-World dataset")


def _task_source(minari: Any, dataset_id: str, drop_short: bool) -> TaskSource:
    try:
        dataset = minari.load_dataset(dataset_id)
    except FileNotFoundError:
        local = ", ".join(minari.list_local_datasets()) or "none"
        raise FileNotFoundError(f"Minari dataset {dataset_id} is not under {minari_root()} (local datasets: {local}); "
                                f"download it with `minari download {dataset_id}`") from None
    _check_spaces(dataset, dataset_id)
    task = _task_of(dataset, dataset_id)
    indices = [int(i) for i in dataset.episode_indices]
    scan = list(dataset.storage.apply(lambda ep: (len(ep["rewards"]), sorted(ep.get("infos") or {})), indices))
    kept = [i for i, (length, _) in zip(indices, scan) if length == EPISODE_LENGTH]
    short = len(indices) - len(kept)
    if short and not drop_short:
        lengths = sorted({length for length, _ in scan if length != EPISODE_LENGTH})
        raise SourceError(f"Minari dataset {dataset_id}: {short} of {len(indices)} episodes are not {EPISODE_LENGTH} "
                          f"steps long (lengths {lengths[0]}..{lengths[-1]}); the dt-eva format holds "
                          f"{EPISODE_LENGTH}-step episodes only: re-run with --drop-short to leave them out")
    if not kept:
        raise SourceError(f"Minari dataset {dataset_id}: no {EPISODE_LENGTH}-step episode to import")
    info_keys = set.intersection(*(set(keys) for (length, keys) in scan if length == EPISODE_LENGTH))
    has = {"successes": "success" in info_keys,
           **{n: INFO_KEYS[n] in info_keys for n in ("noise", "random_prefix", "returns_to_go")}}
    info = {"kind": "minari", "origin": dataset_id, "path": str(dataset.storage.data_path),
            "total_steps": int(dataset.total_steps), "episodes": len(kept), "short_episodes_dropped": short,
            "drop_short": bool(drop_short), "minari_version": dataset.storage.metadata.get("minari_version")}
    return TaskSource(task=task, episodes=len(kept), batches=lambda: _batches(dataset, kept, has),
                      origin=f"Minari dataset {dataset_id}", unknown=[n for n in OPTIONAL_ARRAYS if not has[n]],
                      info=info, locate=lambda e: f"episode id {kept[e]}")


def _batches(dataset: Any, kept: list[int], has: dict[str, bool]) -> Iterator[dict[str, np.ndarray]]:
    for i in range(0, len(kept), BATCH_EPISODES):
        episodes = list(dataset.storage.get_episodes(kept[i : i + BATCH_EPISODES]))
        batch = {
            "observations": np.stack([np.asarray(ep["observations"])[:EPISODE_LENGTH] for ep in episodes]),
            "actions": np.stack([np.asarray(ep["actions"]) for ep in episodes]),
            "rewards": np.stack([np.asarray(ep["rewards"]) for ep in episodes]),
        }
        if has["successes"]:  # infos start with the reset's entry when they hold 201
            batch["successes"] = np.stack([np.asarray(ep["infos"]["success"])[-EPISODE_LENGTH:] > 0 for ep in episodes])
        for name in ("noise", "random_prefix"):
            if has[name]:
                batch[name] = np.array([np.asarray(ep["infos"][INFO_KEYS[name]])[0] for ep in episodes])
        if has["returns_to_go"]:
            batch["returns_to_go"] = np.stack([np.asarray(ep["infos"][INFO_KEYS["returns_to_go"]])[:EPISODE_LENGTH]
                                               for ep in episodes])
        yield batch


def import_minari(spec: str | Iterable[str], out: str | Path, drop_short: bool = False,
                  on_task: Callable[[TaskSource], None] | None = None) -> dict:
    """Convert the local Minari datasets `spec` (ids, see `resolve_ids`) into a dt-eva dataset at `out`;
    `on_task` is called after each task (progress)."""
    minari = _minari()
    ids = resolve_ids(spec)
    source_meta = {"kind": "minari", "path": ",".join(ids), "root": str(minari_root().resolve()), "ids": ids,
                   "short_episodes": "dropped" if drop_short else "refused",
                   "final_observation": "the 201st observation of each Minari episode is not kept"}
    return write_dataset(out, (_task_source(minari, i, drop_short) for i in ids), source_meta, on_task)
