"""Find and read run directories (the layout of docs/architecture.md, "Run directories").

Only files are read here, never models: a report over hundreds of runs stays fast and works without
torch installed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

# Methods whose rank distribution depends on rho (EVA's redistribution); for the others rho is unused.
RHO_METHODS = frozenset({"eva", "eva_dora", "eva_whiten", "lora_redist"})
_RUN_MARKERS = ("meta.json", "summary.json")
_NOT_RUN_CHILDREN = {"tb", "checkpoints", "eva", "videos", "__pycache__"}


@dataclass
class RunRecord:
    """What a report needs from one run directory."""

    path: Path
    name: str
    kind: str  # "pretrain" | "finetune" | "unknown"
    summary: dict[str, Any] | None
    config: dict[str, Any]
    eval: dict[str, Any] | None
    metrics_path: Path | None
    eva_result_path: Path | None
    problems: list[str] = field(default_factory=list)

    # fine-tuning identity (None for pre-training runs)
    @property
    def task(self) -> str | None:
        return _first(self.summary, self.config, key="task")

    @property
    def method(self) -> str | None:
        m = _first(self.summary, self.config, key="method")
        return str(m).lower() if m is not None else None

    @property
    def rank(self) -> int | None:
        if self.method == "fft":
            return None
        r = _first(self.summary, self.config, key="rank")
        return int(r) if r is not None else None

    @property
    def rho(self) -> float | None:
        if self.method not in RHO_METHODS:
            return None
        r = _first(self.summary, self.config, key="rho")
        return float(r) if r is not None else None

    @property
    def seed(self) -> int:
        s = _first(self.summary, self.config, key="seed")
        return int(s) if s is not None else 0

    @property
    def lr(self) -> float | None:
        optim = self.config.get("optim") if isinstance(self.config, dict) else None
        lr = optim.get("lr") if isinstance(optim, dict) else None
        return float(lr) if lr is not None else None

    @property
    def checkpoint(self) -> str | None:
        c = self.config.get("checkpoint") if isinstance(self.config, dict) else None
        return str(c) if c else None


def _first(*dicts: dict[str, Any] | None, key: str) -> Any:
    for d in dicts:
        if isinstance(d, dict) and d.get(key) is not None:
            return d[key]
    return None


def is_run_dir(path: Path) -> bool:
    """A run directory holds `meta.json` or `summary.json` (written by every training run)."""
    return path.is_dir() and any((path / m).is_file() for m in _RUN_MARKERS)


def find_run_dirs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories given directly or found below the given roots (sorted, no duplicates).

    A root is searched recursively; the search does not descend into a run directory nor into
    hidden directories (atomic-write temporaries start with a dot). A missing path is an error.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist; pass run directories or a directory that holds them")
        if is_run_dir(p):
            found[p.resolve()] = None
            continue
        for root, dirs, _files in os.walk(p):
            root_path = Path(root)
            if is_run_dir(root_path):
                found[root_path.resolve()] = None
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _NOT_RUN_CHILDREN)
    return sorted(found)


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        problems.append(f"{path.name} is unreadable ({e})")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{path.name} does not hold a JSON object")
        return None
    return obj


def load_run(path: str | os.PathLike) -> RunRecord:
    """Read summary.json, meta.json, config.yaml and eval.json of one run directory."""
    path = Path(path)
    problems: list[str] = []
    summary = _read_json(path / "summary.json", problems)
    meta = _read_json(path / "meta.json", problems) or {}
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        try:
            loaded = yaml.safe_load((path / "config.yaml").read_text())
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, yaml.YAMLError) as e:
            problems.append(f"config.yaml is unreadable ({e})")
    eval_result = _read_json(path / "eval.json", problems)
    if eval_result is not None and not isinstance(eval_result.get("tasks"), dict):
        problems.append("eval.json has no 'tasks' entry")
        eval_result = None
    kind = str(_first(summary, meta, key="kind") or "unknown")
    name = str(_first(summary, key="name") or path.name)
    eva_result = path / "eva" / "result.json"
    metrics = path / "metrics.jsonl"
    return RunRecord(
        path=path,
        name=name,
        kind=kind,
        summary=summary,
        config=config,
        eval=eval_result,
        metrics_path=metrics if metrics.is_file() else None,
        eva_result_path=eva_result if eva_result.is_file() else None,
        problems=problems,
    )
