"""Find run directories and read their records (summary, config, the largest evaluation) for reports.

Only files are read here, never models: a report over hundreds of runs stays fast and works without
torch installed. A damaged file never aborts the reading: it is named in `RunRecord.problems`, and
one that is present but unreadable is also listed in `RunRecord.corrupt` (so that "corrupt" is never
reported as "missing").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dt_eva.methods.registry import METHODS, normalize_method_name
from dt_eva.runs.evals import largest_eval, read_eval_records
from dt_eva.runs.layout import CHECKPOINTS, EVA, TENSORBOARD, VIDEOS, RunPaths
from dt_eva.runs.marker import is_run_dir
from dt_eva.runs.summary import RunSummary, read_summary
from dt_eva.utils.io import load_json_object, read_yaml

_NOT_RUN_CHILDREN = {TENSORBOARD, CHECKPOINTS, EVA, VIDEOS, "__pycache__"}


@dataclass
class RunRecord:
    """What a report needs from one run directory.

    `eval`: the result of the run's largest evaluation (for a fine-tuning run: the largest one that
    includes its task); `eval_key` / `eval_created`: which record that is and when it was made.
    """

    path: Path
    name: str
    kind: str  # "pretrain" | "finetune" | "unknown"
    summary: RunSummary | None
    config: dict[str, Any]
    eval: dict[str, Any] | None
    metrics_path: Path | None
    eva_result_path: Path | None
    problems: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # file names present but unreadable
    eval_key: str | None = None
    eval_created: str | None = None
    evaluations: int = 0  # how many evaluations the run holds

    @property
    def eval_episodes(self) -> int | None:
        return int(self.eval["episodes"]) if self.eval is not None else None

    # fine-tuning identity (None for pre-training runs)
    @property
    def task(self) -> str | None:
        return _first(self.summary, self.config, key="task")

    @property
    def method(self) -> str | None:
        m = _first(self.summary, self.config, key="method")
        return normalize_method_name(m) if m is not None else None

    @property
    def rank(self) -> int | None:
        spec = METHODS.get(self.method or "")
        if spec is not None and not spec.uses_rank:
            return None
        r = _first(self.summary, self.config, key="rank")
        return int(r) if r is not None else None

    @property
    def rho(self) -> float | None:
        spec = METHODS.get(self.method or "")
        if spec is None or not spec.uses_rho:  # rho only shapes EVA's rank redistribution
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


def _first(*sources: RunSummary | dict[str, Any] | None, key: str) -> Any:
    """The first source's value of `key` that is not None (a summary's field, a dict's entry)."""
    for source in sources:
        if isinstance(source, RunSummary):
            value = getattr(source, key)
        else:
            value = source.get(key) if isinstance(source, dict) else None
        if value is not None:
            return value
    return None


def full_task_name(task: str) -> str:
    """`hammer` -> `hammer-v3`; names that already carry a version are kept."""
    head, _, tail = task.rpartition("-v")
    return task if head and tail.isdigit() else f"{task}-v3"


def find_run_dirs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories (marked by dt-eva, `dt_eva.runs.marker`) given directly or found below the given
    roots (sorted, no duplicates).

    A root is searched recursively; the search does not descend into a run directory nor into
    hidden directories (atomic-write temporaries start with a dot). Symbolic links below a root are
    followed (reports only read what they find), each real folder once, so a link cycle ends; a run
    reached by two paths is found once, at its real path. A missing path is an error.
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
        seen: set[str] = set()
        for root, dirs, _files in os.walk(p, followlinks=True):
            root_path = Path(root)
            if os.path.realpath(root) in seen:  # reached again through a link: a cycle, or a second path
                dirs[:] = []
                continue
            seen.add(os.path.realpath(root))
            if is_run_dir(root_path):
                found[root_path.resolve()] = None
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _NOT_RUN_CHILDREN)
    return sorted(found)


def _read_config(path: Path, problems: list[str], corrupt: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = read_yaml(path)
    except OSError as e:
        problems.append(f"{path} is corrupt ({e})")
        corrupt.append(path.name)
        return {}
    except ValueError as e:  # names the file
        problems.append(str(e))
        corrupt.append(path.name)
        return {}
    return loaded if isinstance(loaded, dict) else {}


def load_run(path: str | os.PathLike) -> RunRecord:
    """Read summary.json, meta.json, config.yaml and the largest evaluation of one run directory."""
    paths = RunPaths(path)
    problems: list[str] = []
    corrupt: list[str] = []
    summary = read_summary(paths.root, problems)
    if problems:  # the first file read: a problem now is the summary's
        corrupt.append(paths.summary.name)
    try:
        meta = load_json_object(paths.meta) or {}
    except ValueError as e:  # names the file
        problems.append(str(e))
        corrupt.append(paths.meta.name)
        meta = {}
    config = _read_config(paths.config, problems, corrupt)
    kind = str(_first(summary, meta, key="kind") or "unknown")
    task = _first(summary, config, key="task")
    records = read_eval_records(paths.root, problems)
    record = largest_eval(records, full_task_name(str(task)) if kind == "finetune" and task else None)
    return RunRecord(
        path=paths.root,
        name=str(_first(summary, key="name") or paths.root.name),
        kind=kind,
        summary=summary,
        config=config,
        eval=record["result"] if record else None,
        metrics_path=paths.metrics if paths.metrics.is_file() else None,
        eva_result_path=(paths.eva / "result.json") if (paths.eva / "result.json").is_file() else None,
        problems=problems,
        corrupt=corrupt,
        eval_key=record["key"] if record else None,
        eval_created=record["created"] if record else None,
        evaluations=len(records),
    )
