"""The dry run's cost estimate (from finished runs' measured seconds per update) and time limits as text."""

from __future__ import annotations

import math
import re

from dt_eva.experiments.sweep.expand import SweepRun
from dt_eva.runs.layout import RunPaths
from dt_eva.runs.results import config_value
from dt_eva.runs.summary import RunSummary, read_summary
from dt_eva.utils.io import read_metrics


def step_seconds(runs: list[SweepRun], committed: dict[str, dict] | None = None) -> tuple[float | None, int]:
    """Seconds per step measured on the finished runs (summary.json `seconds / steps`, pooled; evaluations
    included), and how many runs it comes from; (None, 0) when no run has finished. A finished run whose
    folder is gone (a fresh clone) counts through its row in `committed` (`committed_results`)."""
    seconds = steps = count = 0
    for run in runs:
        done = run.status == "done"
        summary = (read_summary(run.run_dir, problems=[]) if done else None) or RunSummary()  # damaged: unmeasured
        row = (committed or {}).get(run.name, {}) if done else {}
        measured = [(summary.seconds, summary.steps), (row.get("seconds"), row.get("steps"))]
        for run_seconds, run_steps in measured:
            try:
                run_seconds, run_steps = float(run_seconds), int(run_steps)
            except (TypeError, ValueError):
                continue
            if run_seconds > 0 and run_steps > 0:
                seconds, steps, count = seconds + run_seconds, steps + run_steps, count + 1
                break
    return (seconds / steps if steps else None), count


def steps_left(run: SweepRun) -> int:
    """Updates still to train: all of them, none (done), or after the last logged step (resume; an
    estimate: training restarts from the last checkpoint, at or before it)."""
    total = int(config_value(run.config, "train.steps"))
    if run.status == "done":
        return 0
    if run.status == "resume":
        logged = [int(r["step"]) for r in read_metrics(RunPaths(run.run_dir).metrics)]
        return max(total - max(logged, default=0), 0)
    return total


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def parse_minutes(text: str | int | None) -> int | None:
    """A Slurm time limit in minutes: `90` (minutes), `90:30` (minutes:seconds), `1:30:00`, `2-12`
    (days-hours), `2-12:30`, `2-12:30:00`; seconds round up."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", str(text).strip())
    parts = [int(p) for p in match.group(2).split(":")] if match else []
    if not match:
        raise ValueError(f"--time {text!r}: use minutes (90), H:MM:SS (1:30:00) or D-HH[:MM[:SS]] (2-00:00:00)")
    if match.group(1) is not None:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return int(match.group(1)) * 1440 + hours * 60 + minutes + (seconds > 0)
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + (parts[2] > 0)
    return parts[0] + (len(parts) == 2 and parts[1] > 0)
