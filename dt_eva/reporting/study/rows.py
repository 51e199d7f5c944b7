"""Read a sweep's `results.csv` (`dt_eva.runs.results`) into typed rows for the study report.

A row's configuration is its method, rank, rho and learning rate, plus the sweep's other grid keys
(e.g. `eva.adjust_alpha`) and the number of updates when it varies; seeds and tasks are what the
tables average over and pair on. Only rows with status `done` are used; the others are kept, with
their error, as excluded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dt_eva.methods.registry import METHODS, normalize_method_name
from dt_eva.reporting.common.tables import ConfigKey
from dt_eva.runs.episodes import EPISODES, load_episode_rows
from dt_eva.runs.records import full_task_name
from dt_eva.runs.results import FIELDS, read_csv, row_problem

METRIC_COLUMNS = ("success_any", "success_final", "heldout_loss", "final_loss")
CURVE_METRICS = ("success_any", "success_final", "heldout_loss", "grad_norm")  # the `<metric>@<step>` columns
REQUIRED = ("name", "status", *FIELDS["finetune"])
FIRST_SUCCESS = "first_success_step"  # a run's mean over its successful episodes, from episodes.csv.gz


@dataclass(frozen=True, order=True)
class StudyKey(ConfigKey):
    """A configuration: `ConfigKey` plus the sweep's other grid values, as sorted (key, value) pairs."""

    extra: tuple[tuple[str, str], ...] = ()

    def describe(self, with_lr: bool = False) -> str:
        base = super().describe(with_lr)
        parts = ([] if base == "-" else [base]) + [f"{k}={v}" for k, v in self.extra]
        return ", ".join(parts) or "-"


@dataclass
class StudyRow:
    """One finished run of the sweep."""

    name: str
    key: StudyKey
    task: str  # full name, e.g. hammer-v3
    seed: int
    values: dict[str, float]  # METRIC_COLUMNS that the row has
    curves: dict[str, dict[int, float]]  # CURVE_METRICS -> {step: value}
    episodes: int | None
    adapter_ranks: dict[str, int] | None
    eva_init_seconds: float | None
    seconds: float | None
    precision: str | None = None  # fp32 / bf16; None in tables written before the column existed
    eval_precision: str | None = None  # the final evaluation's precision; None before the column existed
    cpu: str | None = None  # the CPUs that ran it, " | "-separated when a resumed run crossed machines
    episode_records: bool = False  # the sweep's episodes.csv.gz holds its episodes


@dataclass
class StudyData:
    path: Path
    rows: list[StudyRow]
    excluded: list[tuple[str, str, str]]  # (name, status, error)
    warnings: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)  # every results.csv read (a study in phases has several)


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a sweep's folder or its results.csv "
                                "(written by `dt-eva sweep`)")
    header, records = read_csv(path)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        kind = " (this looks like a pre-training sweep)" if "task" not in header and "seed" in header else ""
        raise ValueError(f"{path}: columns {missing} are missing{kind}; the study report reads the results.csv "
                         "of a fine-tuning sweep")
    return header, records


def read_study(path: str | Path | list[Path]) -> StudyData:
    """The rows of a fine-tuning sweep's results.csv, or of several (a study run in phases, one sweep
    folder each: their rows are pooled); a clear error when one is missing, of another kind or when
    there is no finished run."""
    paths = [Path(p) for p in path] if isinstance(path, list) else [Path(path)]
    tables = [(p, *_read_table(p)) for p in paths]
    extras = list(dict.fromkeys(c for _, header, records in tables for c in _extra_columns(
        header, [r for _, _, rs in tables for r in rs])))
    data = StudyData(paths[0], [], [], paths=paths)
    seen: dict[tuple, str] = {}
    for p, _, records in tables:
        episodes = _episode_rows(p.parent / EPISODES, data.warnings)
        for i, record in enumerate(records, start=2):  # line 1 is the header
            if record["status"] != "done":
                data.excluded.append((record["name"], record["status"], record.get("error") or ""))
                continue
            where = f"{p}, line {i} ({record['name']})"
            problem = row_problem(record)  # e.g. a success of 7.5 or a seed of 1.5
            if problem:
                raise ValueError(f"{where}: {problem}; fix or delete that row")
            row = _parse_row(record, extras, where)
            slot = (row.key, row.task, row.seed)
            if slot in seen:
                data.warnings.append(f"runs {seen[slot]} and {row.name} have the same configuration, task and "
                                     f"seed; {row.name} is left out")
                continue
            seen[slot] = row.name
            if row.name in episodes:
                row.episode_records = True
                first = mean_first_success(episodes[row.name])
                if first is not None:
                    row.values[FIRST_SUCCESS] = first
            data.rows.append(row)
    if not data.rows:
        listing = "".join(f"\n  - {n}: {s} {e}".rstrip() for n, s, e in data.excluded)
        raise ValueError(f"{', '.join(map(str, paths))}: no finished run (status done) to report on{listing}")
    return data


def _episode_rows(path: Path, warnings: list[str]) -> dict[str, list[dict[str, str]]]:
    """The sweep's per-episode records by run name; {} when it kept none, and a warning when the file is
    damaged (the time to first success is then left out for its runs; nothing else needs it)."""
    try:
        return load_episode_rows(path)
    except FileNotFoundError:
        return {}
    except ValueError as e:
        warnings.append(f"{e}: the time to first success of its runs is left out")
        return {}


def mean_first_success(episodes: list[dict[str, str]]) -> float | None:
    """The mean first success step over the episodes that succeed (rows of episodes.csv.gz); None when none
    does. A value that is not a number is skipped (the file is a record, not an input the run depends on)."""
    steps = []
    for episode in episodes:
        try:
            step = float(episode.get("first_success_step") or "nan")
        except ValueError:
            continue
        if math.isfinite(step):
            steps.append(step)
    return sum(steps) / len(steps) if steps else None


def _extra_columns(header: list[str], records: list[dict[str, str]]) -> list[str]:
    """The grid keys outside FIELDS (between `status` and `task`) and `steps`, where finished runs differ in
    them (a constant column tells configurations nothing apart)."""
    columns = header[header.index("status") + 1:header.index("task")] + ["steps"]
    done = [r for r in records if r["status"] == "done"]  # records of every table read together
    return [c for c in columns if len({r[c] for r in done if c in r}) > 1]  # a table without the column: no vote


def _parse_row(record: dict[str, str], extras: list[str], where: str) -> StudyRow:
    method = normalize_method_name(record["method"])
    spec = METHODS.get(method)

    def number(column: str) -> float | None:
        return _number(record.get(column), column, where)

    rank, rho = number("rank"), number("rho")
    key = StudyKey(method,
                   None if spec is not None and not spec.uses_rank or rank is None else int(rank),
                   rho if spec is not None and spec.uses_rho else None,  # rho only shapes EVA's ranks
                   number("lr"),
                   tuple((k, record.get(k, "")) for k in extras))
    curves: dict[str, dict[int, float]] = {m: {} for m in CURVE_METRICS}
    for column, text in record.items():
        metric, _, step = (column or "").partition("@")
        if metric in curves and step.isdigit() and text not in ("", None):
            curves[metric][int(step)] = _number(text, column, where)  # type: ignore[assignment]
    values = {m: v for m in METRIC_COLUMNS if (v := number(m)) is not None}
    seed, episodes = number("seed"), number("episodes")
    if seed is None:
        raise ValueError(f"{where}: the seed is empty")
    return StudyRow(record["name"], key, full_task_name(record["task"]), int(seed), values, curves,
                    int(episodes) if episodes is not None else None, _ranks(record.get("adapter_ranks"), where),
                    number("eva_init_seconds"), number("seconds"), record.get("precision") or None,
                    record.get("eval_precision") or None, record.get("cpu") or None)


def _number(text: str | None, column: str, where: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: column {column} holds {text!r}, not a number") from None
    return value if math.isfinite(value) else None


def _ranks(text: str | None, where: str) -> dict[str, int] | None:
    if not text:
        return None
    try:
        ranks = json.loads(text)
        return {str(k): int(v) for k, v in ranks.items()}
    except (ValueError, AttributeError, TypeError, RecursionError):
        raise ValueError(f"{where}: adapter_ranks is not a JSON object of module -> rank: {text[:80]!r}") from None


def per_seed(rows: list[StudyRow], metric: str) -> dict[StudyKey, dict[str, dict[int, float]]]:
    """configuration -> task -> seed -> value of `metric` (rows without it are left out)."""
    out: dict[StudyKey, dict[str, dict[int, float]]] = {}
    for row in rows:
        if metric in row.values:
            out.setdefault(row.key, {}).setdefault(row.task, {})[row.seed] = row.values[metric]
    return out
