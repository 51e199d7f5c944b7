"""Expansion: the grid, less its exclusions, as runs with their names, folders and config overrides."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dt_eva.experiments.sweep.spec import RUNS, SweepSpec, matches
from dt_eva.runs.guard import check_run_name

# Each run costs a config load (~30 ms) before anything starts; a grid beyond this is most likely a mistake.
MAX_RUNS = 5_000
MAX_RUNS_VARIABLE = "DT_EVA_SWEEP_MAX_RUNS"


@dataclass
class SweepRun:
    """One run of a sweep: its name, grid values, config overrides and (once checked) config and status."""

    name: str
    values: dict[str, Any]
    overrides: list[str]
    run_dir: Path
    config: Any = None
    status: str = "new"  # new | restart (ours, never checkpointed: starts over) | resume | done

    @property
    def resume(self) -> bool:
        return self.status in ("resume", "restart")


def max_runs() -> int:
    """The most runs one sweep may expand to: `DT_EVA_SWEEP_MAX_RUNS`, default `MAX_RUNS`."""
    text = os.environ.get(MAX_RUNS_VARIABLE, "")
    try:
        return int(text) if text else MAX_RUNS
    except ValueError:
        raise ValueError(f"{MAX_RUNS_VARIABLE}={text!r} is not a whole number of runs") from None


def expand(spec: SweepSpec) -> list[SweepRun]:
    """Every combination of the grid, in grid order, with its overrides (no config loaded yet). A grid of
    more than `max_runs()` combinations is refused before any is expanded (each costs a config load)."""
    combinations = math.prod(len(v) for v in spec.grid.values())
    if combinations > max_runs():
        raise ValueError(f"{spec.path}: the grid has {combinations:,} combinations (before exclude:), more than the "
                         f"{max_runs():,} runs one sweep may have; split it into several sweep files, or raise the "
                         f"limit with the environment variable {MAX_RUNS_VARIABLE}=N")
    keys = list(spec.grid)
    labels = _labels(keys)
    runs, seen = [], {}
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        if any(matches(condition, values) for condition in spec.excludes):
            continue
        name = "+".join(f"{labels[k]}={_format(v)}" for k, v in values.items())
        check_run_name(name, key="run name")
        if name in seen:
            raise ValueError(f"{spec.path}: grid values {seen[name]} and {values} give the same run name {name!r}; "
                             "make the values differ in letters, digits or ._+=@-")
        seen[name] = values
        settings = {**spec.fixed, **values}
        for rule in spec.rules:
            if rule.matches(values):
                settings.update(rule.set)
        run_dir = spec.out / RUNS / name
        settings.update({"name": name, "run_dir": str(run_dir), "train.progress": False})
        runs.append(SweepRun(name, values, [f"{k}={json.dumps(v)}" for k, v in settings.items()], run_dir))
    if not runs:
        raise ValueError(f"{spec.path}: exclude: leaves out every combination of the grid; nothing to run")
    return runs


def _labels(keys: list[str]) -> dict[str, str]:
    """Grid key -> its label in run names: the last part of the dotted key, unless two keys share it."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(keys, leaves)}


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ".".join(_format(v) for v in value)
    return re.sub(r"[^A-Za-z0-9._+=@-]", "-", str(value))
