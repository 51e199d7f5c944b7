"""Writing a dataset from another source into this package's format (`data/README.md`), one task at a time.

A source adapter (L2M files, Minari datasets) describes each task as a `TaskSource`: how many
episodes, and an iterator over batches of whole 200-step episodes. The writer validates every batch
(finite values, actions in [-1, 1]; errors name the source file or dataset), recomputes the
returns-to-go, streams the arrays into the task's `.npy` files (so memory holds one batch, not one
task), writes `task.json`, and renames the task directory into place; `metadata.json` comes last.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from dt_eva.data.collect import mean_over_tasks, returns_to_go, task_stats
from dt_eva.data.format import (
    ARRAY_SPECS,
    FORMAT_VERSION,
    METADATA_FILE,
    OPTIONAL_ARRAYS,
    TASK_FILE,
    UNKNOWN_KEY,
    DatasetError,
    read_task_dir,
)
from dt_eva.envs.registry import EPISODE_LENGTH
from dt_eva.utils.io import atomic_dir, atomic_write_json, load_json_object
from dt_eva.utils.versions import library_versions

#: What a batch from a source holds: [b, 200, ...] arrays, plus any of OPTIONAL_ARRAYS the source has.
REQUIRED_BATCH_ARRAYS = ("observations", "actions", "rewards")


class SourceError(DatasetError):
    """A source file or dataset cannot be converted; the message names it and says what to do."""


@dataclass
class TaskSource:
    """One task of a source, ready to stream.

    `batches()` yields dicts of `[b, 200, ...]` arrays (`observations`, `actions`, `rewards` and
    those of `successes` / `noise` / `random_prefix` the source has; the rest are `unknown`; and
    optionally `returns_to_go`, else computed from the rewards).
    `origin` names the file or dataset in errors; `locate(e)` says where episode `e` came from.
    `info` goes into `task.json` under "source" (it must identify the input: a re-run with the
    same `info` skips the task).
    """

    task: str
    episodes: int
    batches: Callable[[], Iterator[dict[str, np.ndarray]]]
    origin: str
    unknown: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    locate: Callable[[int], str] = lambda e: f"episode {e}"


class _NpyStream:
    """A `.npy` file written in row chunks: the header (with the final shape) first, then the data."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape, self.rows = path, np.dtype(dtype), shape, 0
        self._f = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self._f, header)

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        self._f.write(chunk.tobytes())
        self.rows += chunk.shape[0]

    def close(self) -> None:
        self._f.close()

    def finish(self) -> None:
        self.close()
        if self.rows != self.shape[0]:  # a source adapter's episode count was wrong: a bug, not bad input
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows, announced {self.shape[0]}")


def write_task(task_dir: Path, source: TaskSource) -> dict:
    """Convert one task into `task_dir` (atomically); returns its task.json content."""
    names = [n for n in ARRAY_SPECS if n not in source.unknown]
    returns = np.zeros(source.episodes, dtype=np.float64)
    kept: dict[str, list[np.ndarray]] = {n: [] for n in OPTIONAL_ARRAYS if n not in source.unknown}
    start = 0
    with atomic_dir(task_dir) as tmp:
        streams = {n: _NpyStream(tmp / f"{n}.npy", ARRAY_SPECS[n][0], (source.episodes, *ARRAY_SPECS[n][1]))
                   for n in names}
        try:
            for batch in source.batches():
                _check_batch(batch, source, start)
                batch = {**batch, "returns_to_go": _returns_to_go(batch, source, start)}
                for name, stream in streams.items():
                    stream.write(batch[name])
                returns[start : start + len(batch["rewards"])] = batch["returns_to_go"][:, 0]
                for name in kept:  # small: [E, 200] bool at most, for the statistics
                    kept[name].append(np.asarray(batch[name], dtype=ARRAY_SPECS[name][0]))
                start += len(batch["rewards"])
            for stream in streams.values():
                stream.finish()
        finally:
            for stream in streams.values():
                stream.close()
        optional = {n: np.concatenate(kept[n]) if n in kept else None for n in OPTIONAL_ARRAYS}
        info = {
            "format_version": FORMAT_VERSION,
            "task": task_dir.name,
            "episodes": source.episodes,
            UNKNOWN_KEY: list(source.unknown),
            "source": source.info,
            "stats": task_stats(returns, optional["successes"], optional["noise"], optional["random_prefix"]),
        }
        atomic_write_json(tmp / TASK_FILE, info)
        read_task_dir(tmp, task=task_dir.name)  # the loader's own checks, before the directory is renamed into place
    return info


def _returns_to_go(batch: dict[str, np.ndarray], source: TaskSource, first: int) -> np.ndarray:
    """Recomputed from the rewards; a source's own (exported by dt-eva: exact float32) kept if it agrees."""
    computed = returns_to_go(batch["rewards"])
    given = batch.get("returns_to_go")
    if given is None:
        return computed
    wrong = ~np.isclose(given, computed, rtol=1e-4, atol=1e-3).all(axis=1)
    if wrong.any():
        raise SourceError(f"{source.origin}: its returns-to-go are not the reverse cumulative sum of its rewards "
                          f"({source.locate(first + int(np.argmax(wrong)))})")
    return np.asarray(given)


def _check_batch(batch: dict[str, np.ndarray], source: TaskSource, first: int) -> None:
    for name in (*REQUIRED_BATCH_ARRAYS, *(n for n in OPTIONAL_ARRAYS if n not in source.unknown)):
        arr = batch[name]
        if arr.shape[1:] != ARRAY_SPECS[name][1]:
            raise RuntimeError(f"{source.origin}: {name} batch has shape {arr.shape}")  # adapter bug
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = first + int(np.argwhere(~np.isfinite(arr))[0][0])
            raise SourceError(f"{source.origin}: {name} holds NaN or inf ({source.locate(bad)}); "
                               "the source is damaged: re-download or re-export it")
    over = np.abs(batch["actions"]).max(axis=(1, 2)) > 1.0
    if over.any():
        bad = first + int(np.argmax(over))
        raise SourceError(f"{source.origin}: actions outside [-1, 1] ({source.locate(bad)}); Meta-World "
                           "actions are in [-1, 1]: clip them in the source if that is what the agent executed")


def write_dataset(out: str | Path, sources: Iterable[TaskSource], source_meta: dict[str, Any],
                  on_task: Callable[[TaskSource], None] | None = None) -> dict:
    """Write every task of `sources` (consumed lazily: one task in memory at a time) into `out`, then
    `metadata.json` naming the source (`source_meta`, with at least "kind" and "path").

    A task directory an interrupted run already converted from the same input is kept. `on_task`
    is called after each task (progress)."""
    out = Path(out)
    _check_out(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        infos = _write_tasks(out, sources, on_task)
    except Exception:  # a refusal leaves nothing behind; Ctrl-C / a kill keep finished tasks for the re-run
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    stats = {t: info["stats"] for t, info in infos.items()}
    unknown = sorted({n for info in infos.values() for n in info[UNKNOWN_KEY]})
    metadata = {
        "format_version": FORMAT_VERSION,
        "name": out.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tasks": list(infos),
        "episodes_per_task": {t: info["episodes"] for t, info in infos.items()},
        "episode_length": EPISODE_LENGTH,
        "source": source_meta,
        "short_episodes_dropped": {t: int(i["source"].get("short_episodes_dropped", 0)) for t, i in infos.items()},
        UNKNOWN_KEY: unknown,
        "versions": library_versions(),
        "stats": stats,
        "mean": mean_over_tasks(stats),
    }
    atomic_write_json(out / METADATA_FILE, metadata)
    return metadata


def _write_tasks(out: Path, sources: Iterable[TaskSource],
                 on_task: Callable[[TaskSource], None] | None) -> dict[str, dict]:
    infos: dict[str, dict] = {}
    for source in sources:
        if source.task in infos:
            raise SourceError(f"{source.origin}: a second source for {source.task} (the first was "
                              f"{infos[source.task]['source'].get('origin')}); keep one per task")
        infos[source.task] = _existing(out / source.task, source) or write_task(out / source.task, source)
        if on_task is not None:
            on_task(source)
    strays = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in infos)
    if strays:
        raise SourceError(f"{out} holds directories this import did not write ({', '.join(strays)}): "
                          "import into a new --out, or delete them")
    return infos


def _check_out(out: Path) -> None:
    """`out` must be new, empty, or an import that did not finish (no metadata.json yet)."""
    if (out / METADATA_FILE).exists():
        raise SourceError(f"{out} already holds a dataset ({out / METADATA_FILE}): choose another --out, or delete it")
    if out.exists() and not out.is_dir():
        raise SourceError(f"--out {out} is a file, not a directory")
    for p in out.iterdir() if out.exists() else []:
        if p.name.startswith(".") and p.name.endswith((".tmpdir", ".old")):
            shutil.rmtree(p, ignore_errors=True)  # left by a killed import
        elif p.is_dir() and "source" not in _json_or_empty(p / TASK_FILE):
            raise SourceError(f"--out {out} holds {p.name}, which no import wrote (an unfinished `dt-eva collect`?): "
                              "choose another --out, or delete it")


def _json_or_empty(path: Path) -> dict:
    try:
        return load_json_object(path, required=True, error=DatasetError)
    except DatasetError:  # missing or damaged
        return {}


def _existing(task_dir: Path, source: TaskSource) -> dict | None:
    """task.json of a task directory an interrupted run already converted from the same input."""
    if not (task_dir / TASK_FILE).is_file():
        return None
    try:
        if load_json_object(task_dir / TASK_FILE, required=True, error=DatasetError).get("source") != source.info:
            return None
        return read_task_dir(task_dir)[0]
    except DatasetError:
        return None
