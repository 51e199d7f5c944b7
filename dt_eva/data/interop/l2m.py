"""`dt-eva import --from l2m`: the Meta-World replay buffers of Schmied et al. 2023 (L2M), the data of
the EVA paper's decision-making experiments, converted into this package's format.

Two layouts, per task:
- one file `<task>-v2.npz` with flat arrays `observations [N, 39]`, `actions [N, 4]`, `rewards [N]`,
  `dones [N]` (and `next_observations [N, 39]`, checked for shape, not used): a SAC replay buffer;
- a folder `<task>-v2/` of per-trajectory `.npz` files with `states`, `actions`, `rewards`, `dones`
  (and `returns_to_go`, ignored: it is recomputed).
Episodes end at a `done`, after every 200 steps, and at the end of a file. An episode shorter than
200 steps is refused (the package's format has fixed 200-step episodes), or left out with
`drop_short=True`; either way the count is reported. v2 task names map to the v3 tasks of the same
name. The buffers record no per-step success, so `successes` (and the collection-only `noise`,
`random_prefix`) are `unknown` in the converted dataset.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from dt_eva.data.format import OPTIONAL_ARRAYS
from dt_eva.data.interop.npz import NpzError, NpzMember, npz_keys, open_npz
from dt_eva.data.interop.writer import SourceError, TaskSource, write_dataset
from dt_eva.envs.registry import ACT_DIM, EPISODE_LENGTH, STATE_DIM, resolve_task, resolve_tasks

#: our name -> the key in each layout
FLAT_KEYS = {"observations": "observations", "actions": "actions", "rewards": "rewards", "dones": "dones"}
TRAJECTORY_KEYS = {"observations": "states", "actions": "actions", "rewards": "rewards", "dones": "dones"}
_WIDTH = {"observations": STATE_DIM, "actions": ACT_DIM, "rewards": None, "dones": None}
#: episodes per batch written (bounds memory: 256 x 200 x 39 float32 = 8 MB of observations)
BATCH_EPISODES = 256

DESCRIPTION = ("Meta-World v2 SAC replay buffers of Schmied et al. 2023 (L2M), the data of the EVA paper's "
               "decision-making experiments")


def l2m_task_name(name: str, where: Path) -> str:
    """`hammer-v2` (a file or folder name) -> `hammer-v3`; anything else is an error naming `where`."""
    base = name[: -len(".npz")] if name.endswith(".npz") else name
    key = base.lower()
    for suffix in ("-v2", "-v3"):
        key = key[: -len(suffix)] if key.endswith(suffix) else key
    try:
        return resolve_task(key)
    except ValueError as e:
        raise SourceError(f"{where}: {base!r} names no Meta-World task ({e})") from None


def find_task_files(root: Path) -> dict[str, list[Path]]:
    """v3 task -> its L2M files in `root` (`<task>-v2.npz`, or the sorted `.npz` files of `<task>-v2/`)."""
    if not root.is_dir():
        raise FileNotFoundError(f"L2M data folder {root} does not exist")
    found: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".npz":
            files = [entry]
        elif entry.is_dir():
            files = sorted(entry.glob("*.npz"), key=_natural_key)
            if not files:
                continue
        else:
            continue
        task = l2m_task_name(entry.name, entry)
        if task in found:
            raise SourceError(f"{root}: two sources for {task} ({found[task][0]} and {entry}); keep one")
        found[task] = files
    if not found:
        raise SourceError(f"{root} holds no L2M files (<task>-v2.npz, or <task>-v2/ folders of trajectory .npz files)")
    return found


def _natural_key(path: Path) -> tuple:
    """`traj_2` before `traj_10`."""
    digits = "".join(c if c.isdigit() else " " for c in path.stem).split()
    return (path.stem.rstrip("0123456789"), [int(d) for d in digits], path.name)


@dataclass
class _FileEpisodes:
    path: Path
    keys: dict[str, str]
    starts: np.ndarray  # start transition of each kept (200-step) episode, ascending
    transitions: int
    short: list[tuple[int, int]]  # (start, length) of episodes shorter than 200 steps


def episode_starts(dones: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Split `N` transitions at dones, every 200 steps and at the end: (starts of the 200-step
    episodes, [(start, length)] of the shorter ones)."""
    n = len(dones)
    ends = np.concatenate([np.flatnonzero(dones) + 1, [n]])
    starts, short, begin = [], [], 0
    for end in ends.tolist():
        if end <= begin:
            continue
        full = (end - begin) // EPISODE_LENGTH
        starts.extend(range(begin, begin + full * EPISODE_LENGTH, EPISODE_LENGTH))
        rest = (end - begin) - full * EPISODE_LENGTH
        if rest:
            short.append((begin + full * EPISODE_LENGTH, rest))
        begin = end
    return np.asarray(starts, dtype=np.int64), short


def _scan(path: Path) -> _FileEpisodes:
    """Check one file's keys and shapes and find its episodes (reads only `dones`)."""
    with contextlib.closing(open_npz(path)) as archive:
        present = npz_keys(archive)
        keys = FLAT_KEYS if "observations" in present else TRAJECTORY_KEYS
        missing = [k for k in keys.values() if k not in present]
        if missing:
            raise SourceError(
                f"{path}: missing {', '.join(missing)} (has {', '.join(present) or 'no arrays'}); an L2M file holds "
                f"{', '.join(FLAT_KEYS.values())} (replay buffer) or {', '.join(TRAJECTORY_KEYS.values())} (trajectory)"
            )
        members = {ours: NpzMember(archive, path, theirs) for ours, theirs in keys.items()}
        if "next_observations" in present:
            members["next_observations"] = NpzMember(archive, path, "next_observations")
        n = members["rewards"].shape[0] if members["rewards"].shape else 0
        for ours, member in members.items():
            width = _WIDTH.get(ours, STATE_DIM)
            ok = member.shape in ((n,), (n, 1)) if width is None else member.shape == (n, width)
            if not ok:
                wanted = f"[{n}]" if width is None else f"[{n}, {width}]"
                raise SourceError(f"{member.where}: shape {list(member.shape)}, expected {wanted} "
                                  f"(N = {n} transitions, from rewards)")
            if member.dtype.kind not in "fiub":
                raise SourceError(f"{member.where}: dtype {member.dtype} is not numeric")
        dones = members["dones"].read(n).reshape(n) != 0
    starts, short = episode_starts(dones)
    return _FileEpisodes(path, keys, starts, n, short)


def _refuse_short(task: str, scans: list[_FileEpisodes], drop_short: bool) -> int:
    """The number of short episodes; an error (with counts and where) unless `drop_short`."""
    short = [(s.path, start, length) for s in scans for start, length in s.short]
    if short and not drop_short:
        kept = sum(len(s.starts) for s in scans)
        path, start, length = short[0]
        lengths = [length for _, _, length in short]
        raise SourceError(
            f"{path}: {len(short)} episode(s) of {task} are not {EPISODE_LENGTH} steps long "
            f"({kept} are; the short ones have {min(lengths)}..{max(lengths)} steps, the first at transitions "
            f"{start}..{start + length - 1}). The dataset format holds {EPISODE_LENGTH}-step episodes only and "
            "padding would invent data: re-run with --drop-short to leave them out"
        )
    return len(short)


def _batches(scans: list[_FileEpisodes]) -> Iterator[dict[str, np.ndarray]]:
    offsets = np.arange(EPISODE_LENGTH, dtype=np.int64)
    for scan in scans:
        if not len(scan.starts):
            continue
        with contextlib.closing(open_npz(scan.path)) as archive:
            members = {ours: NpzMember(archive, scan.path, theirs)
                       for ours, theirs in scan.keys.items() if ours != "dones"}
            for i in range(0, len(scan.starts), BATCH_EPISODES):
                starts = scan.starts[i : i + BATCH_EPISODES]
                lo, hi = int(starts[0]), int(starts[-1]) + EPISODE_LENGTH
                rows = (starts - lo)[:, None] + offsets  # [b, 200] into the span
                span = {ours: m.read_range(lo, hi) for ours, m in members.items()}
                yield {
                    "observations": span["observations"][rows].astype(np.float32),
                    "actions": span["actions"][rows].astype(np.float32),
                    "rewards": span["rewards"].reshape(-1)[rows].astype(np.float64),
                }


def _task_source(task: str, files: list[Path], drop_short: bool) -> TaskSource:
    scans = []
    for path in files:
        try:
            scans.append(_scan(path))
        except NpzError as e:
            raise SourceError(str(e)) from None
    dropped = _refuse_short(task, scans, drop_short)
    episodes = sum(len(s.starts) for s in scans)
    origin = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} trajectory files)"
    if not episodes:
        raise SourceError(f"{origin}: no {EPISODE_LENGTH}-step episode of {task} to import")
    where = [(s.path, int(start)) for s in scans for start in s.starts]

    def locate(e: int) -> str:
        path, start = where[e]
        return f"{path.name}, transitions {start}..{start + EPISODE_LENGTH - 1}"

    stat = [p.stat() for p in files]
    info = {
        "kind": "l2m", "origin": origin, "source_task": files[0].parent.name if len(files) > 1 else files[0].stem,
        "files": len(files), "bytes": sum(s.st_size for s in stat), "mtime_ns": max(s.st_mtime_ns for s in stat),
        "transitions": sum(s.transitions for s in scans), "episodes": episodes,
        "short_episodes_dropped": dropped, "drop_short": bool(drop_short),
    }
    return TaskSource(task=task, episodes=episodes, batches=lambda: _batches(scans), origin=origin,
                      unknown=list(OPTIONAL_ARRAYS), info=info, locate=locate)


def import_l2m(root: str | Path, out: str | Path, tasks: str | Iterable[str] | None = None,
               drop_short: bool = False, on_task: Callable[[TaskSource], None] | None = None) -> dict:
    """Convert the L2M files in `root` (all tasks found, or `tasks`: mt40, cw10, a list) into a dataset
    at `out`; returns its metadata. One task is read and written at a time, in batches; `on_task` is
    called after each (progress)."""
    root = Path(root)
    found = find_task_files(root)
    selected = list(found) if tasks is None else resolve_tasks(tasks)
    missing = [t for t in selected if t not in found]
    if missing:
        raise SourceError(f"{root} has no L2M file for {', '.join(missing)} (expected <task>-v2.npz; "
                          f"found: {', '.join(found)})")
    source_meta = {
        "kind": "l2m", "path": str(root.resolve()), "description": DESCRIPTION, "simulator": "Meta-World v2",
        "task_names": {t: found[t][0].stem if len(found[t]) == 1 else found[t][0].parent.name for t in selected},
        "episodes": f"split at dones, every {EPISODE_LENGTH} steps and at the end of a file",
        "short_episodes": "dropped" if drop_short else "refused",
        "returns_to_go": "recomputed from rewards (undiscounted, unscaled)",
        "unknown": "the buffers record no per-step success, action noise or random prefix",
    }
    sources = [_task_source(t, found[t], drop_short) for t in selected]  # keys, shapes, episodes: before any write
    return write_dataset(out, sources, source_meta, on_task)
