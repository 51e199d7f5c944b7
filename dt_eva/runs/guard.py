"""Creating, guarding and resuming run directories: the rules that keep a user's folders safe.

- A run name is one path component of safe characters; `run_dir` is an explicit path.
- Only a directory that dt-eva marked as its run (`meta.json`, see `marker.py`) is ever resumed,
  replaced or cleared; anything else is an error that names the folder.
- `--force` deletes only what dt-eva writes in a run (`layout.PACKAGE_ENTRIES`), nothing else.
- The caller validates everything else (configs, datasets, bases) *before* `open_run_dir`, which is
  the first step that touches the disk; the run is locked from then until it ends.
- A resumed run must keep its config (`check_resume_compatible`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dt_eva.runs.layout import PACKAGE_ENTRIES, RunPaths
from dt_eva.runs.lock import RunLock
from dt_eva.runs.marker import is_marked, read_meta, write_meta
from dt_eva.utils.safefs import refuse_link

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}$")

# Config keys a resumed run may change: cadence of logs, checkpoints and evaluation, the device, the
# precision, the progress bar and the merged export. Anything else would make it a different experiment.
RESUME_MUTABLE_KEYS = (
    "train.log_every", "train.ckpt_every", "train.eval_every", "train.probe_every", "train.eval_tasks",
    "train.eval_episodes",
    "train.device", "train.precision", "train.progress", "export_merged",
)


def check_run_name(name: str, key: str = "name") -> str:
    """A run name must be one path component: letters, digits and `._+=@-`, not starting with a dot."""
    if not _SAFE_NAME.match(str(name)):
        raise ValueError(
            f"{key}={name!r} is not a valid run name: use one folder name made of letters, digits and ._+=@- "
            "(no '/', no leading '.', at most 200 characters); to put a run somewhere else, pass run_dir=<path>"
        )
    return str(name)


def describe_run(paths: RunPaths) -> str:
    if paths.summary.is_file():
        return "a finished run"
    if paths.last_checkpoint.is_file():
        return "an unfinished run with a checkpoint"
    return "a run that stopped before its first checkpoint"


def plan_run_dir(path: str | Path, kind: str, resume: bool = False, force: bool = False) -> str:
    """What `open_run_dir` will do, decided without touching the disk; errors say why not.

    Returns "new" (nothing there yet), "resume" (a checkpoint to continue from), or "restart"
    (an existing run of ours to clear: `force`, or `resume` of a run that never checkpointed).
    """
    if resume and force:
        raise ValueError("--resume and --force contradict each other: pass one of them")
    paths = RunPaths(path)
    root = paths.root
    if root.exists() and not root.is_dir():
        raise ValueError(f"run directory {root} exists and is a file; choose another name= or run_dir=")
    if not root.exists() or not any(p.name != paths.lock.name for p in root.iterdir()):
        if resume:
            raise ValueError(
                f"nothing to resume: {root} holds no run. Check the name= / run_dir= (or --checkpoint), or drop "
                "--resume to start a new run there"
            )
        return "new"
    meta = read_meta(root)
    if not is_marked(meta):
        raise ValueError(
            f"{root} exists, is not empty and is not a dt-eva run (it has no meta.json written by dt-eva); "
            "refusing to use or delete it. Choose another name= or run_dir="
        )
    if meta["kind"] != kind:  # type: ignore[index]
        raise ValueError(
            f"{root} holds a {meta['kind']} run, not a {kind} run; choose another name= or run_dir="  # type: ignore[index]
        )
    if force:
        return "restart"
    refuse_package_links(paths)
    if resume:
        return "resume" if paths.last_checkpoint.is_file() else "restart"
    raise ValueError(
        f"run directory {root} already holds {describe_run(paths)}; pass --resume to continue it, --force to "
        "delete it and start over, or choose another name="
    )


@dataclass
class OpenRun:
    """A run directory claimed for one run: locked until `close()` (or the end of a `with` block)."""

    paths: RunPaths
    plan: str
    lock: RunLock | None

    @property
    def resume(self) -> bool:
        return self.plan == "resume"

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> "OpenRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run_dir(path: str | Path, kind: str, resume: bool = False, force: bool = False,
                 meta: dict[str, Any] | None = None, lock: bool = True) -> OpenRun:
    """Create or claim the run directory: lock it, re-check it under the lock, clear what dt-eva wrote
    there when restarting, and write the marker. Call it after every other validation."""
    plan_run_dir(path, kind, resume, force)  # fail before creating anything
    paths = RunPaths(path)
    paths.root.mkdir(parents=True, exist_ok=True)
    run_lock = RunLock(paths.root).acquire() if lock else None
    try:
        plan = plan_run_dir(path, kind, resume, force)  # again: another process may have been faster
        if plan == "restart":
            clear_run_dir(paths)
        refuse_package_links(paths)
        write_meta(paths.root, kind, meta)
    except BaseException:
        if run_lock is not None:
            run_lock.release()
        raise
    return OpenRun(paths, plan, run_lock)


def clear_run_dir(paths: RunPaths) -> None:
    """Delete what dt-eva writes in a run directory (and only that); foreign files stay."""
    for name in PACKAGE_ENTRIES:
        target = paths / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def refuse_package_links(paths: RunPaths) -> None:
    """The run writes its own entries (metrics.jsonl, evals/, checkpoints/, ...) in place: a symbolic link
    among them (dangling or not) would send those writes outside the run, so it is refused, naming it."""
    for name in PACKAGE_ENTRIES:
        refuse_link(paths / name, f"run's {name}")


def check_resume_compatible(saved: Any, cfg: Any, run_dir: str | Path) -> None:
    """A resumed run keeps its config: only `RESUME_MUTABLE_KEYS` may differ from the saved one."""
    from dt_eva.config import config_diff  # lazy: keeps the guard importable without omegaconf loaded

    changed = {k: v for k, v in config_diff(saved, cfg).items() if k not in RESUME_MUTABLE_KEYS}
    if changed:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(
            f"cannot resume {run_dir}: the config differs from its saved config.yaml in {lines}. Resume with the "
            "same settings, or start a new run (another name=, or --force)"
        )


def stable_hash(data: Any) -> str:
    """SHA-256 (16 hex digits) of JSON-able data, independent of key order."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_hash(cfg: Any) -> str:
    """Hash of a run config without `dt_eva.runs.guard.RESUME_MUTABLE_KEYS` (log / checkpoint cadence,
    device, progress bar...), which do not change what the run computes."""
    from dt_eva.config import config_to_dict  # lazy: keeps the guard importable without omegaconf loaded

    data = config_to_dict(cfg)
    for dotted in RESUME_MUTABLE_KEYS:
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return stable_hash(data)
