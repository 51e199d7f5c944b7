"""`episodes.csv.gz` of a sweep: every episode of every run's final evaluation, one row each (torch-free).

Beside `results.csv`, for the statistics that need episodes rather than per-run means (and so that a
study's committed record keeps them when its run directories are gone). Columns: name (the run),
task, episode (index j: it played goal layout `episode_layout(seed, j)`), success_any, success_final,
return, first_success_step (the 1-based env step of the first success; empty when it never succeeded).

Rows of runs that finished in an earlier session (whose directories are gone) are kept as they were
read; the file is gzip with a zero timestamp, so the same rows give the same bytes.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from pathlib import Path
from typing import Any

from dt_eva.runs.layout import RunPaths
from dt_eva.utils.io import atomic_write_bytes, load_json_object

EPISODES = "episodes.csv.gz"  # in the sweep's folder
COLUMNS = ("name", "task", "episode", "success_any", "success_final", "return", "first_success_step")


def read_episode_rows(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """The rows of an existing `episodes.csv.gz` by run name (empty when there is none or it is unreadable)."""
    try:
        return load_episode_rows(path)
    except (FileNotFoundError, ValueError):
        return {}


def load_episode_rows(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """The rows of `episodes.csv.gz` by run name; `FileNotFoundError` when there is none, and
    `ValueError("<path> is damaged (...)")` when it is not gzip, not UTF-8 or not CSV."""
    try:
        text = gzip.decompress(Path(path).read_bytes()).decode("utf-8")
        out: dict[str, list[dict[str, str]]] = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("name"):
                out.setdefault(row["name"], []).append(row)
        return out
    except FileNotFoundError:
        raise
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, csv.Error) as e:
        raise ValueError(f"{path} is damaged ({type(e).__name__}: {e})") from None


def run_episode_rows(name: str, run_dir: str | Path) -> list[dict[str, Any]]:
    """The episodes of the run's final evaluation (`eval.json`); empty when it has none."""
    try:
        evaluation = load_json_object(RunPaths(run_dir).eval) or {}
    except ValueError:
        return []
    rows = []
    for task, stats in sorted((evaluation.get("tasks") or {}).items()):
        if not isinstance(stats, dict):
            continue
        any_ = stats.get("success_any_per_episode") or []
        final = stats.get("success_final_per_episode") or []
        returns = stats.get("return_per_episode") or []
        first = stats.get("first_success_step_per_episode") or [None] * len(any_)
        for j, values in enumerate(zip(any_, final, returns, first)):
            rows.append(dict(zip(COLUMNS, (name, task, j, *values))))
    return rows


def write_episode_rows(path: str | Path, rows_by_run: dict[str, list[dict[str, Any]]], order: list[str]) -> None:
    """Write the rows of the runs in `order` (runs without rows are left out) atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for name in order:
        writer.writerows([{k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS}
                          for row in rows_by_run.get(name, [])])
    atomic_write_bytes(path, gzip.compress(text.getvalue().encode("utf-8"), mtime=0))
