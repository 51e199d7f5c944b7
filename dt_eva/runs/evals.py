"""Evaluation records of a run (placeholder until the records module lands): `eval.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dt_eva.runs.layout import RunPaths
from dt_eva.utils.io import atomic_write_json


def write_eval_record(run_dir: str | Path, result: dict[str, Any]) -> Path:
    path = RunPaths(run_dir).eval
    atomic_write_json(path, result)
    return path
