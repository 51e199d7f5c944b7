"""The sweep's folder (`out:`): only a folder dt-eva marked as a sweep of this sweep file is written into.

`<out>/.dt-eva-sweep.json` marks it (`{"package": "dt-eva", "kind": "sweep", "sweep": <the sweep file,
relative to the folder, so that a clone elsewhere still matches>, "created"}`), as `meta.json` marks a run. Before anything in it is replaced:
- a new or empty folder is ours;
- a marked folder is ours for the sweep file it records, and for any file whose settings equal those of
  its `sweep.yaml` (a copy, or the file moved); another sweep file is refused, naming both;
- an unmarked folder (a sweep of dt-eva before the marker, e.g. a study's committed `results.csv` in a
  fresh clone) is ours when its `sweep.yaml` holds the same settings as the sweep file (comments aside),
  or, without a `sweep.yaml`, when it holds only what a sweep makes (`runs/` of dt-eva run folders, a
  results table with dt-eva's columns, `logs/`); anything else (a user's `results.csv` or `sweep.yaml`,
  another sweep's folder) is refused, naming it.
`<out>/.dt-eva.lock` (fcntl, as a run's) is held for the life of a sweep: a second sweep on the same folder
is refused, naming the process that holds it.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import yaml

from dt_eva.experiments.sweep.spec import LOGS, RESULTS, RUNS, SweepSpec
from dt_eva.runs.episodes import EPISODES
from dt_eva.runs.layout import LOCK, PACKAGE
from dt_eva.runs.lock import RunLock
from dt_eva.runs.marker import is_run_dir
from dt_eva.runs.results import read_csv
from dt_eva.utils.io import atomic_write_json, atomic_write_text, load_json_object
from dt_eva.utils.safefs import naming_disk_errors

MARKER = ".dt-eva-sweep.json"
SWEEP_COPY = "sweep.yaml"  # the sweep file that made the table, beside it
_SWEEP_ENTRIES = {RESULTS, EPISODES, RUNS, LOGS, "submitit", MARKER, SWEEP_COPY}  # what a sweep makes in out:


def check_sweep_folder(spec: SweepSpec) -> str:
    """Side-effect free: "new" (nothing of a sweep there yet) or "ours"; a `ValueError` naming the folder
    and what to do when it belongs to someone else or to another sweep file."""
    out = spec.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"{spec.path}: the sweep's folder {out} exists and is not a folder; give another out:")
    entries = [p.name for p in out.iterdir() if p.name != LOCK] if out.is_dir() else []
    if not entries:
        return "new"
    marker, copy = _read_marker(out), _settings(out / SWEEP_COPY)
    if marker is not None:
        recorded = Path(os.path.normpath(out / str(marker.get("sweep", ""))))  # relative to out: a clone still matches
        if _same_file(recorded, spec.path) or (copy is not None and copy == _settings(spec.path)):
            return "ours"
        raise ValueError(f"{out} is the folder of another sweep ({recorded}, its settings in {out / SWEEP_COPY}), "
                         f"not of {spec.path}; give {spec.path} another out: (or --out) so that neither table "
                         "loses rows")
    if copy is not None:
        if copy == _settings(spec.path):
            return "ours"  # a sweep of dt-eva before the marker (a study's committed folder)
        raise ValueError(f"{out} is not marked as a dt-eva sweep folder and its {SWEEP_COPY} holds other settings "
                         f"than {spec.path}; give the sweep another out: (or --out), or, if {spec.path} is an edited "
                         f"version of that sweep, copy it over {out / SWEEP_COPY} to adopt the folder")
    if (out / SWEEP_COPY).exists() or not _only_sweep_entries(out, entries):
        shown = ", ".join(sorted(entries)[:3]) + (" ..." if len(entries) > 3 else "")
        raise ValueError(f"{out} is not empty and is not a dt-eva sweep folder of {spec.path} (it holds {shown}); "
                         "refusing to write into it. Give the sweep another out: (or --out)")
    return "ours"  # only what a sweep makes: run folders of dt-eva (started by hand, say) and its table


def _only_sweep_entries(out: Path, entries: list[str]) -> bool:
    """Every entry is one a sweep makes: `runs/` of dt-eva run folders only, `logs/`, `submitit/`, and a
    results table of dt-eva (its `config_hash` column); nothing a user could own."""
    if any(name not in _SWEEP_ENTRIES or (out / name).is_symlink() for name in entries):
        return False
    runs = out / RUNS
    if runs.exists() and not (runs.is_dir() and all(is_run_dir(p) and not p.is_symlink() for p in runs.iterdir())):
        return False
    try:
        header = read_csv(out / RESULTS)[0] if (out / RESULTS).exists() else ["name", "status", "config_hash"]
    except (OSError, ValueError):
        return False
    return {"name", "status", "config_hash"} <= set(header)


def open_sweep_folder(spec: SweepSpec) -> RunLock:
    """Create, lock and mark the sweep's folder (after every check), and copy the sweep file beside the table.
    The caller releases the returned lock when the sweep ends."""
    with naming_disk_errors(spec.out):
        spec.out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(spec.out, what="sweep folder", hint=f"give {spec.path} another out: (or --out)").acquire()
    try:
        check_sweep_folder(spec)  # again, under the lock: another sweep may have been faster
        if _read_marker(spec.out) is None:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            _write(spec.out / MARKER, lambda p: atomic_write_json(p, {"package": PACKAGE, "kind": "sweep",
                                                                      "sweep": os.path.relpath(spec.path.resolve(), spec.out.resolve()),
                                                                      "created": now}))
        text = spec.path.read_text(encoding="utf-8")
        _write(spec.out / SWEEP_COPY, lambda p: atomic_write_text(p, text))  # what made the table
    except BaseException:
        lock.release()
        raise
    return lock


def _write(path: Path, write: Any) -> None:
    with naming_disk_errors(path):
        write(path)


def _read_marker(out: Path) -> dict[str, Any] | None:
    try:
        marker = load_json_object(out / MARKER)  # a damaged or deeply nested one is a ValueError
    except (OSError, ValueError):
        return None
    ok = isinstance(marker, dict) and marker.get("package") == PACKAGE and marker.get("kind") == "sweep"
    return marker if ok else None


def _settings(path: Path) -> Any:
    """A sweep file's settings as data (comments and layout aside; `out` too: `--out` may move a sweep);
    None when it is missing or unreadable."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        return None
    if isinstance(data, dict):
        data.pop("out", None)
    return data


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
