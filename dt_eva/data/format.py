"""The on-disk dataset format (see `data/README.md`) and its validating, memory-mapped loader.

    <dataset>/metadata.json          how the dataset was made; written last, so its presence
                                     means the collection finished
    <dataset>/<task-v3>/*.npy        dense per-task arrays, one directory per task
    <dataset>/<task-v3>/task.json    per-task parameters and statistics
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dt_eva.envs.registry import ACT_DIM, EPISODE_LENGTH, STATE_DIM, resolve_task, resolve_tasks
from dt_eva.utils.io import load_json_object

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
TASK_FILE = "task.json"

# name -> (dtype, shape after the episode axis)
ARRAY_SPECS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "observations": (np.dtype(np.float32), (EPISODE_LENGTH, STATE_DIM)),
    "actions": (np.dtype(np.float32), (EPISODE_LENGTH, ACT_DIM)),
    "rewards": (np.dtype(np.float32), (EPISODE_LENGTH,)),
    "successes": (np.dtype(np.bool_), (EPISODE_LENGTH,)),
    "returns_to_go": (np.dtype(np.float32), (EPISODE_LENGTH,)),
    "noise": (np.dtype(np.float32), ()),
    "random_prefix": (np.dtype(np.int32), ()),
}

#: Arrays an imported source may lack (L2M's replay buffers record no per-step success and no
#: collection noise): `task.json` lists them under "unknown" and their files are absent.
OPTIONAL_ARRAYS = ("successes", "noise", "random_prefix")
UNKNOWN_KEY = "unknown"

_FINITE_CHECK_EPISODES = 256  # chunk size of the finiteness scan (bounded memory on big datasets)
_RTG_TOLERANCE = 1e-4  # relative, per step
_NPY_MAGIC = b"\x93NUMPY"


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


class OfflineDataset:
    """A loaded, validated dataset: per-task arrays (memory-mapped by default) plus metadata."""

    def __init__(self, path: Path, metadata: dict, arrays: dict[str, dict[str, np.ndarray]],
                 task_info: dict[str, dict]):
        self.path = Path(path)
        self.metadata = metadata
        self.tasks: list[str] = list(arrays)
        self._arrays = arrays
        self._task_info = task_info

    @property
    def state_dim(self) -> int:
        return STATE_DIM

    @property
    def act_dim(self) -> int:
        return ACT_DIM

    @property
    def episode_length(self) -> int:
        return EPISODE_LENGTH

    def _key(self, task: str) -> str:
        name = resolve_task(task)
        if name not in self._arrays:
            raise ValueError(
                f"task {name} is not in dataset {self.path} (loaded tasks: {', '.join(self.tasks)})"
            )
        return name

    def task_arrays(self, task: str) -> dict[str, np.ndarray]:
        """Arrays of one task: observations, actions, rewards, successes, returns_to_go, noise,
        random_prefix (read-only memory maps unless loaded with `mmap=False`); an imported task
        lacks the ones in `unknown_arrays(task)`."""
        return dict(self._arrays[self._key(task)])

    def unknown_arrays(self, task: str) -> list[str]:
        """The optional arrays (`OPTIONAL_ARRAYS`) the source of `task` did not record, e.g. `successes`."""
        return list(self._task_info[self._key(task)].get(UNKNOWN_KEY, []))

    def task_info(self, task: str) -> dict:
        """The task's `task.json`: collection parameters and return / success statistics."""
        return self._task_info[self._key(task)]

    def num_episodes(self, task: str) -> int:
        return int(self._arrays[self._key(task)]["observations"].shape[0])

    def max_return(self, task: str) -> float:
        """Highest episode return of `task` in the data (the paper's evaluation target return)."""
        return float(np.max(self._arrays[self._key(task)]["returns_to_go"][:, 0]))

    def __repr__(self) -> str:
        eps = sum(self.num_episodes(t) for t in self.tasks)
        return f"OfflineDataset({str(self.path)!r}, tasks={len(self.tasks)}, episodes={eps})"


def load_dataset(path: str | Path, tasks: str | Iterable[str] | None = None, mmap: bool = True) -> OfflineDataset:
    """Load and validate a dataset written by `collect_dataset` / `dt-eva collect`.

    `tasks`: a subset (`"cw10"`, `"hammer,push"`, a list); default all recorded tasks. Every
    selected task's files are checked for presence, dtype, shape, finiteness and mutual
    consistency; a problem raises `ValueError` naming the file. `mmap=True` maps the arrays
    read-only instead of reading them into memory.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist: create it with `dt-eva collect --out {root}`")
    meta_path = root / METADATA_FILE
    on_disk = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not meta_path.is_file():
        if on_disk:
            raise DatasetError(
                f"{meta_path} is missing: the collection into {root} did not finish "
                f"(task directories present: {', '.join(on_disk)}). Re-run the same `dt-eva collect` "
                "command to resume it."
            )
        raise FileNotFoundError(f"{root} is not a dt-eva dataset: {meta_path} is missing")
    metadata = load_json_object(meta_path, required=True, error=DatasetError)
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{meta_path}: format_version {metadata.get('format_version')!r} is not supported "
            f"(this dt_eva reads version {FORMAT_VERSION}); re-collect the dataset"
        )
    recorded = metadata.get("tasks")
    if not isinstance(recorded, list) or not recorded:
        raise DatasetError(f"{meta_path}: 'tasks' must be a non-empty list of task names")
    unknown = [name for name in recorded if not _is_task_name(name)]
    if unknown:
        raise DatasetError(
            f"{meta_path}: 'tasks' lists {unknown}, which are not Meta-World task names (e.g. 'hammer-v3'); "
            "the file was edited or is not a dt-eva dataset: re-collect it with `dt-eva collect`"
        )
    unrecorded = [name for name in on_disk if name not in recorded]
    if unrecorded:
        raise DatasetError(
            f"{root} holds task directories not listed in {meta_path}: {', '.join(unrecorded)}. "
            "An extending `dt-eva collect` run did not finish: re-run it, or remove those directories."
        )
    selected = recorded if tasks is None else resolve_tasks(tasks)
    missing = [t for t in selected if t not in recorded]
    if missing:
        raise ValueError(
            f"dataset {root} has no data for {', '.join(missing)} (it holds: {', '.join(recorded)})"
        )
    arrays: dict[str, dict[str, np.ndarray]] = {}
    infos: dict[str, dict] = {}
    for task in selected:
        task_dir = root / task
        if not task_dir.is_dir():
            raise DatasetError(f"{task_dir} is missing although {meta_path} lists {task}; re-run `dt-eva collect`")
        infos[task], arrays[task] = read_task_dir(task_dir, mmap=mmap)
    return OfflineDataset(root, metadata, arrays, infos)


def _is_task_name(name: Any) -> bool:
    """A full Meta-World task name as `collect` records it (`hammer-v3`)."""
    try:
        return isinstance(name, str) and resolve_task(name) == name
    except ValueError:
        return False


def read_task_dir(task_dir: str | Path, mmap: bool = True, task: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate one task directory; returns (task.json content, arrays). `task`: the task it
    must hold (default: the directory's name; a writer checks its temporary directory)."""
    task_dir = Path(task_dir)
    task = task_dir.name if task is None else task
    info_path = task_dir / TASK_FILE
    if not info_path.is_file():
        raise DatasetError(f"{info_path} is missing (incomplete task directory); delete {task_dir} and re-run `dt-eva collect`")
    info = load_json_object(info_path, required=True, error=DatasetError)
    if info.get("task") != task:
        raise DatasetError(f"{info_path}: 'task' is {info.get('task')!r} but the directory is {task}")
    episodes = info.get("episodes")
    if not isinstance(episodes, int) or episodes < 1:
        raise DatasetError(f"{info_path}: 'episodes' must be a positive int, got {episodes!r}")
    unknown = info.get(UNKNOWN_KEY, [])
    if not isinstance(unknown, list) or any(name not in OPTIONAL_ARRAYS for name in unknown):
        raise DatasetError(f"{info_path}: {UNKNOWN_KEY!r} must list some of {', '.join(OPTIONAL_ARRAYS)}, got {unknown!r}")
    arrays = {name: _load_array(task_dir / f"{name}.npy", mmap, episodes) for name in ARRAY_SPECS if name not in unknown}
    _check_values(task_dir, arrays)
    return info, arrays


def _load_array(path: Path, mmap: bool, episodes: int) -> np.ndarray:
    dtype, tail = ARRAY_SPECS[path.stem]
    if not path.is_file():
        raise DatasetError(f"{path} is missing; delete {path.parent} and re-run `dt-eva collect`")
    _check_npy_header(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError / OSError / EOFError for damaged files
        raise DatasetError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e
    expected = (episodes, *tail)
    if arr.dtype != dtype:
        raise DatasetError(f"{path}: dtype {arr.dtype}, expected {dtype}")
    if arr.shape != expected:
        raise DatasetError(f"{path}: shape {arr.shape}, expected {expected} ([episodes={episodes}, ...] from task.json)")
    return arr


def _check_npy_header(path: Path) -> None:
    """Refuse a file that is not a `.npy` array before NumPy reads it: for any such file NumPy
    claims "pickled data" and suggests `allow_pickle`, which would be wrong advice for text."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({e.strerror or e})") from None
    if head != _NPY_MAGIC:
        what = "pickled Python data, which dt-eva never loads" if head[:1] == b"\x80" else \
            "no NumPy .npy header (text, an empty or a damaged file)"
        raise DatasetError(f"{path}: not a readable .npy array: it holds {what}; delete {path.parent} and re-run `dt-eva collect`")


def _check_values(task_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    for name, arr in arrays.items():
        if arr.dtype.kind != "f":
            continue
        for start in range(0, arr.shape[0], _FINITE_CHECK_EPISODES):
            chunk = np.asarray(arr[start : start + _FINITE_CHECK_EPISODES])
            if not np.isfinite(chunk).all():
                bad = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
                raise DatasetError(f"{task_dir / (name + '.npy')}: non-finite values (first in episode {bad})")
    actions = arrays["actions"]
    for start in range(0, actions.shape[0], _FINITE_CHECK_EPISODES):
        if np.abs(np.asarray(actions[start : start + _FINITE_CHECK_EPISODES])).max() > 1.0:
            raise DatasetError(f"{task_dir / 'actions.npy'}: actions outside [-1, 1]")
    _check_returns_to_go(task_dir, arrays["rewards"], arrays["returns_to_go"])
    if "noise" in arrays and (np.asarray(arrays["noise"]) < 0).any():
        raise DatasetError(f"{task_dir / 'noise.npy'}: negative noise std")
    prefix = np.asarray(arrays.get("random_prefix", np.zeros(0, np.int32)))
    if ((prefix < 0) | (prefix > EPISODE_LENGTH)).any():
        raise DatasetError(f"{task_dir / 'random_prefix.npy'}: values outside 0..{EPISODE_LENGTH}")


def _check_returns_to_go(task_dir: Path, rewards: np.ndarray, returns_to_go: np.ndarray) -> None:
    """Every step's return-to-go is the sum of the rewards from that step on (a value edited in the
    middle of an episode is caught, not only the first and last)."""
    for start in range(0, rewards.shape[0], _FINITE_CHECK_EPISODES):
        chunk = np.asarray(rewards[start : start + _FINITE_CHECK_EPISODES], dtype=np.float64)
        expected = np.flip(np.cumsum(np.flip(chunk, axis=1), axis=1), axis=1)
        rtg = np.asarray(returns_to_go[start : start + _FINITE_CHECK_EPISODES], dtype=np.float64)
        tol = _RTG_TOLERANCE * np.maximum(1.0, np.abs(expected))  # float32 storage rounds ~1e-7
        bad = np.argwhere(np.abs(rtg - expected) > tol)
        if len(bad):
            episode, step = int(bad[0][0]) + start, int(bad[0][1])
            raise DatasetError(
                f"{task_dir / 'returns_to_go.npy'}: does not match the reverse cumulative sum of rewards.npy "
                f"(first at episode {episode}, step {step}); re-collect the task"
            )


def dataset_summary(meta: dict[str, Any]) -> str:
    """A printable table of per-task return / success statistics from metadata.json."""
    lines = [
        f"{'task':<28} {'eps':>5} {'return mean':>11} {'min':>8} {'max':>8} {'succ any':>8} {'succ final':>10}"
    ]
    rows = meta.get("stats", {})
    for task in meta.get("tasks", []):
        s = rows.get(task, {}).get("all")
        if not s:
            continue
        lines.append(
            f"{task:<28} {s['episodes']:>5} {s['return_mean']:>11.1f} {s['return_min']:>8.1f} "
            f"{s['return_max']:>8.1f} {_rate(s['success_any'], 8)} {_rate(s['success_final'], 10)}"
        )
    mean = meta.get("mean")
    if mean:
        lines.append(
            f"{'mean':<28} {'':>5} {mean['return_mean']:>11.1f} {'':>8} {'':>8} "
            f"{_rate(mean['success_any'], 8)} {_rate(mean['success_final'], 10)}"
        )
    modes: dict[tuple[float, int], list[dict]] = {}
    for task in meta.get("tasks", []):
        for m in rows.get(task, {}).get("by_mode", []):
            modes.setdefault((m["noise"], m["random_prefix"]), []).append(m)
    if len(modes) > 1:
        lines.append("")
        lines.append(f"{'noise std':>9} {'rand steps':>10} {'tasks':>5} {'return mean':>11} {'succ any':>8} {'succ final':>10}")
        for (noise, prefix), ms in modes.items():
            lines.append(
                f"{noise:>9.2f} {prefix:>10d} {len(ms):>5} {np.mean([m['return_mean'] for m in ms]):>11.1f} "
                f"{np.mean([m['success_any'] for m in ms]):>8.2f} {np.mean([m['success_final'] for m in ms]):>10.2f}"
            )
    return "\n".join(lines)


def _rate(value: float | None, width: int) -> str:
    """A success rate for the summary table; `n/a` where the source recorded no success flags."""
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.2f}"
