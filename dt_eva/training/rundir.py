"""Creating, guarding and describing run directories (shared by pre-training and fine-tuning)."""

from __future__ import annotations

import datetime
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from dt_eva.utils.io import atomic_write_json
from dt_eva.utils.versions import library_versions

# Files that mark a directory as a dt-eva run; only such directories are ever deleted by --force.
RUN_MARKERS = ("config.yaml", "meta.json", "checkpoints", "metrics.jsonl", "summary.json", "model.pt")


def default_run_dir(name: str, run_dir: str = "") -> Path:
    """`run_dir` when given, else `runs/<name>`."""
    return Path(run_dir) if run_dir else Path("runs") / name


def is_run_dir(path: Path) -> bool:
    return any((path / marker).exists() for marker in RUN_MARKERS)


def describe_run_dir(path: Path) -> str:
    if (path / "summary.json").is_file():
        return "a finished run"
    if (path / "checkpoints" / "last.pt").is_file():
        return "an unfinished run with a checkpoint"
    return "a run that stopped before its first checkpoint"


def prepare_run_dir(path: str | Path, resume: bool = False, force: bool = False) -> bool:
    """Make `path` ready for a run; returns True when a checkpoint is there to resume from.

    - new or empty directory: created, False;
    - existing run + `resume`: kept as is, True if `checkpoints/last.pt` exists (a run that died
      before its first checkpoint is cleared and starts over: False);
    - existing run + `force`: deleted and recreated, False;
    - existing run, neither flag: `ValueError` saying what is there and which flag to pass;
    - a non-empty directory that is not a run: `ValueError` (never deleted).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"run directory {path} exists and is a file; choose another name= or run_dir=")
    if not path.exists() or not any(path.iterdir()):
        path.mkdir(parents=True, exist_ok=True)
        return False
    if not is_run_dir(path):
        raise ValueError(
            f"{path} exists, is not empty and is not a dt-eva run directory; refusing to use or delete it. "
            "Choose another name= or run_dir="
        )
    has_checkpoint = (path / "checkpoints" / "last.pt").is_file()
    if force:
        shutil.rmtree(path)
        path.mkdir(parents=True)
        return False
    if resume:
        if not has_checkpoint:
            shutil.rmtree(path)
            path.mkdir(parents=True)
        return has_checkpoint
    raise ValueError(
        f"run directory {path} already holds {describe_run_dir(path)}; pass --resume to continue it, "
        "--force to delete it and start over, or choose another name="
    )


def write_meta(run_dir: str | Path, kind: str, extra: dict[str, Any] | None = None) -> None:
    """`meta.json`: kind, library versions, command line, creation time; resumes are appended."""
    path = Path(run_dir) / "meta.json"
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta: dict[str, Any]
    if path.is_file():
        meta = json.loads(path.read_text(encoding="utf-8"))
        meta.setdefault("resumed", []).append({"at": now, "command": list(sys.argv), "versions": library_versions()})
    else:
        meta = {"kind": kind, "versions": library_versions(), "command": list(sys.argv), "created": now}
    meta.update(extra or {})
    atomic_write_json(path, meta)
