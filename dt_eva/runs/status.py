"""The one run-status planner: what a driver, the demo or a sweep will do with a run folder, decided
from the folder and the requested config before anything is written.

A driver plans from the user's flags (`--resume`, `--force`). A caller that runs the same experiments
again (the demo, a sweep) plans with a `Rerun` policy: it resumes an unfinished run, keeps a finished
one whose saved config still matches, and refuses one made with other settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dt_eva.config import config_diff, load_config
from dt_eva.runs.guard import RESUME_MUTABLE_KEYS, check_resume_compatible, plan_run_dir
from dt_eva.runs.layout import RunPaths


@dataclass(frozen=True)
class Rerun:
    """How a caller that runs the same experiments again treats the runs it made before.

    `finished`: the status a kept finished run gets ("reuse", "done").
    `conflict`: the error for a saved config that does not match; format fields `root`, `kind`, `changes`.
    `needs_model`: a run counts as finished only with `model.pt` beside its `summary.json`.
    `every_key`: a finished run must match on every key, cadences and evaluation settings included
      (what it measured); a finished run without `config.yaml` then does not match. Otherwise only the
      keys a resume may not change count.
    `any_saved`: every saved config must match, a run that will restart included, and the `conflict`
      error covers unfinished runs too; otherwise a resumed run gets the resume check's error.
    """

    finished: str
    conflict: str
    needs_model: bool = False
    every_key: bool = False
    any_saved: bool = False


def plan_run(run_dir: str | Path, kind: str, cfg: Any, *, resume: bool = False, force: bool = False,
             rerun: Rerun | None = None) -> str:
    """What will happen to the run in `run_dir`, without touching the disk: "new", "resume" or
    "restart" (what `open_run_dir` will do), or `rerun.finished` for a finished run a `rerun` keeps.

    Without `rerun`, `resume` / `force` are the user's flags, and a resumed run's saved config is
    checked against `cfg`. A folder that is not a dt-eva run of `kind`, or a run made with other
    settings, is a `ValueError` that says what to do.
    """
    paths = RunPaths(run_dir)
    if rerun is None:
        decision = plan_run_dir(paths.root, kind, resume=resume, force=force)
        if decision == "resume" and paths.config.is_file():
            check_resume_compatible(load_config(type(cfg), paths.config), cfg, paths.root)
        return decision
    if not paths.meta.is_file():
        return plan_run_dir(paths.root, kind)  # "new"; refuses a folder that is not a dt-eva run
    decision = plan_run_dir(paths.root, kind, resume=True)  # refuses a run of the other kind
    saved = load_config(type(cfg), paths.config) if paths.config.is_file() else None
    finished = paths.summary.is_file() and (paths.model.is_file() or not rerun.needs_model)
    if finished or rerun.any_saved:
        changes = _changes(saved, cfg, every_key=finished and rerun.every_key)
        if changes:
            raise ValueError(rerun.conflict.format(root=paths.root, kind=kind, changes=changes))
        return rerun.finished if finished else decision
    if decision == "resume" and saved is not None:
        check_resume_compatible(saved, cfg, paths.root)
    return decision


def _changes(saved: Any | None, cfg: Any, every_key: bool) -> str:
    """The differing keys as `key: old -> new`, ", "-joined; "" when the configs match."""
    if saved is None:
        diff = {"config.yaml": ("missing", "")} if every_key else {}
    else:
        diff = {k: v for k, v in config_diff(saved, cfg).items() if every_key or k not in RESUME_MUTABLE_KEYS}
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
