"""`results.csv` of a sweep: one row per run with its settings and what it measured (torch-free).

Written by `dt-eva sweep` (`ResultsTable`, from the run directories) and read by `dt-eva report`. The
columns: name, status (done | failed | pending), the grid keys that are not below, the settings of
`FIELDS[kind]`, then final_loss, heldout_loss, success_any, success_final, episodes (per task, of the
final evaluation), `success_any@<step>`, `success_final@<step>`, `heldout_loss@<step>` for every evaluated
(or probed) step and `grad_norm@<step>` for every logged step (the mean over the steps since the last log),
total_rank, adapter_ranks (JSON), eva_init_seconds, seconds (training, evaluations included; EVA init not),
eval_seconds (the evaluations' and probes' share of seconds), precision (the training precision: what
`train.precision` resolved to on the machine that ran it, fp32 or bf16), eval_precision (the final
evaluation's), cpu (the CPUs that trained it, `dt_eva.utils.precision.cpu_model`, " | "-separated when a
resumed run crossed machines), error, config_hash
(`dt_eva.runs.guard.config_hash` of the run's config), measured_with (JSON: the `MEASURE_KEYS` settings,
which the hash leaves out but which decide what the row measured), run_dir.

`results.csv` is what a study commits (its run directories are not): a run whose directory is gone but
whose row is `done` with the same `config_hash` and the same `measured_with` counts as finished
(`committed_results`), so a sweep continues in a fresh clone where it stopped. (Rows written before the
column existed are compared on their `episodes`.) Rows of runs the sweep file no longer has are kept.
A damaged table (a field too long for a CSV reader, no `name` column, a `done` row whose success is
outside [0, 1], whose seed is not an integer or whose measured values are not numbers) is a `ValueError`
that names the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from dt_eva.runs.episodes import EPISODES, read_episode_rows, run_episode_rows, write_episode_rows
from dt_eva.runs.guard import config_hash
from dt_eva.runs.layout import RunPaths
from dt_eva.runs.summary import RunSummary, read_summary
from dt_eva.utils.io import atomic_write_text, load_json_object, read_metrics, read_text

RESULTS = "results.csv"  # in the sweep's folder
# results.csv column -> config key, per kind (the settings a study compares)
FIELDS = {
    "finetune": {"task": "task", "method": "method", "rank": "rank", "rho": "rho", "seed": "seed",
                 "lr": "optim.lr", "steps": "train.steps"},
    "pretrain": {"seed": "seed", "lr": "optim.lr", "steps": "train.steps", "batch_size": "train.batch_size"},
}
MEASURED = ("final_loss", "heldout_loss", "success_any", "success_final", "episodes")
TAIL = ("total_rank", "adapter_ranks", "eva_init_seconds", "seconds", "eval_seconds", "precision",
        "eval_precision", "cpu", "error", "config_hash", "measured_with", "run_dir")
# Settings outside `config_hash` (a resumed run may change them) that decide what a row measured: its
# evaluations (episodes, tasks, steps), probes and logged steps. A row counts as done only for the same ones.
MEASURE_KEYS = ("train.eval_every", "train.eval_episodes", "train.eval_tasks", "train.probe_every", "train.log_every")
FIELD_LIMIT = 1 << 24  # characters in one CSV field (the csv module's default, 131,072, is too small for some)
# metrics.jsonl key -> results.csv column prefix: one `<prefix>@<step>` column per step that logged it
CURVES = (("eval/success_any", "success_any"), ("eval/success_final", "success_final"),
          ("heldout/loss", "heldout_loss"), ("grad_norm", "grad_norm"))


class SweepRunLike(Protocol):
    """What the table needs of a sweep's run (`dt_eva.experiments.sweep.SweepRun`)."""

    name: str
    status: str
    config: Any
    run_dir: Path


class ResultsTable:
    """`<out>/results.csv`: one row per run, rewritten atomically whenever a run ends. Rows of runs that
    ended are read from their directories once (torch-free: summary.json, eval.json, metrics.jsonl)."""

    def __init__(self, path: Path, kind: str, grid_keys: Iterable[str], runs: list[SweepRunLike]) -> None:
        self.path, self.kind, self.runs = Path(path), kind, runs
        self.grid_keys = [k for k in grid_keys if k not in FIELDS[kind].values()]
        self.committed = committed_results(self.path)
        names = {r.name for r in runs}
        # rows of runs this sweep file does not have (an earlier version of it): kept as they are, never dropped
        self.kept = [row for row in read_results(self.path) if row.get("name") not in names]
        self.episodes_path = self.path.parent / EPISODES
        self.episodes = read_episode_rows(self.episodes_path)
        self.rows = {r.name: self._row(r, "done" if r.status == "done" else "pending", None) for r in runs}

    def record(self, run: SweepRunLike, error: str | None) -> None:
        self.rows[run.name] = self._row(run, "failed" if error else "done", error)
        self.write()

    def failed(self) -> list[tuple[str, str]]:
        return [(name, row["error"]) for name, row in self.rows.items() if row["status"] == "failed"]

    def write(self) -> None:
        rows = [self.rows[r.name] for r in self.runs] + self.kept
        head = ["name", "status", *self.grid_keys]
        head += [k for row in self.kept for k in row if k not in head and "@" not in k and k not in FIELDS[self.kind]
                 and k not in MEASURED and k not in TAIL]  # grid keys only the kept rows have
        head = list(dict.fromkeys(head)) + [*FIELDS[self.kind], *MEASURED]
        curves = sorted({k for row in rows for k in row if _is_curve(k)}, key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=head + curves + list(TAIL), lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: _cell(row.get(k)) for k in writer.fieldnames} for row in rows])
        atomic_write_text(self.path, text.getvalue())
        if any(self.episodes.values()) or self.episodes_path.is_file():  # the kept rows' episodes are kept too
            write_episode_rows(self.episodes_path, self.episodes, [row["name"] for row in rows])

    def _row(self, run: SweepRunLike, status: str, error: str | None) -> dict[str, Any]:
        digest = config_hash(run.config)
        kept = self.committed.get(run.name)
        if status == "done" and not RunPaths(run.run_dir).summary.is_file() and kept and row_matches(kept, run.config):
            return {**kept, "run_dir": str(run.run_dir)}  # finished in an earlier session; only its row is left
        self.episodes.pop(run.name, None)
        row: dict[str, Any] = {"name": run.name, "status": status, "error": error, "run_dir": str(run.run_dir),
                               "config_hash": digest, "measured_with": measured_with(run.config)}
        row.update({k: config_value(run.config, k) for k in self.grid_keys})
        row.update({col: config_value(run.config, key) for col, key in FIELDS[self.kind].items()})
        if status == "done":
            row.update(read_run_results(run.run_dir))
            self.episodes[run.name] = run_episode_rows(run.name, run.run_dir)
        return row


def committed_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """The `done` rows of an existing results.csv by run name (empty when there is none). Their values
    stay strings; they are written back as they were read."""
    return {row["name"]: row for row in read_results(path) if row.get("status") == "done" and row.get("config_hash")}


def read_results(path: str | Path) -> list[dict[str, str]]:
    """Every row of an existing results.csv ([] when there is none), checked (`row_problem`); a damaged
    table is a `ValueError` naming the file and line."""
    path = Path(path)
    try:
        header, rows = read_csv(path)
    except FileNotFoundError:
        return []
    if rows and "name" not in header:
        raise ValueError(f"{path} has no `name` column, so it is not a results table of `dt-eva sweep`; move it away")
    for line, row in enumerate(rows, start=2):
        problem = row_problem(row)
        if problem:
            raise ValueError(f"{path}, line {line} ({row.get('name')}): {problem}; fix or delete that row")
    return rows


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a results table; a field longer than `FIELD_LIMIT`, a broken quote or text
    that is not UTF-8 is a `ValueError` naming the file (and line). A missing file is `FileNotFoundError`."""
    reader = csv.DictReader(io.StringIO(read_text(path, "results file"), newline=""))
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, FIELD_LIMIT))
    try:
        rows = list(reader)
    except csv.Error as e:
        raise ValueError(f"{path}, line {reader.line_num}: {e}; fix or delete that row") from None
    finally:
        csv.field_size_limit(limit)
    return list(reader.fieldnames or []), rows


def row_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with a `done` row of results.csv (None when nothing): a success outside [0, 1], a seed
    that is not an integer >= 0, a measured value that is not a number."""
    if row.get("status") != "done":
        return None
    for column, text in row.items():
        if column is None or text in ("", None):
            continue
        metric = column.partition("@")[0]
        if column == "seed" or metric in ("success_any", "success_final", "heldout_loss", "final_loss", "grad_norm",
                                          "seconds", "eval_seconds", "eva_init_seconds", "episodes", "total_rank"):
            try:
                value = float(text)
            except (TypeError, ValueError):
                return f"column {column} holds {str(text)[:40]!r}, not a number"
            if metric.startswith("success") and not 0 <= value <= 1:
                return f"column {column} is {value:g}, outside [0, 1]"
            if column in ("seed", "episodes", "total_rank") and not (value.is_integer() and value >= 0):
                return f"column {column} is {text!r}, not an integer >= 0"
    return None


def measured_with(cfg: Any) -> str:
    """The `measured_with` cell of a run: its `MEASURE_KEYS` settings as JSON."""
    return json.dumps({k: config_value(cfg, k) for k in MEASURE_KEYS}, sort_keys=True, separators=(",", ":"))


def measure_mismatch(row: dict[str, Any], cfg: Any) -> str | None:
    """How the settings a committed row was measured with differ from `cfg`'s (None when they do not).
    A row written before `measured_with` existed is compared on its episodes per task."""
    if row.get("measured_with"):
        try:
            saved = json.loads(row["measured_with"])
        except (ValueError, RecursionError):  # RecursionError: nested too deeply for Python's parser
            saved = None
        if not isinstance(saved, dict):
            return f"measured_with is not a JSON object: {row['measured_with'][:60]!r}"
        now = json.loads(measured_with(cfg))
        changed = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now if saved.get(k) != now[k]]
        return ", ".join(changed) or None
    episodes, wanted = row.get("episodes"), config_value(cfg, "train.eval_episodes")
    if episodes not in ("", None) and wanted and float(episodes) != float(wanted):
        return f"train.eval_episodes: {int(float(episodes))} -> {wanted}"
    return None


def row_matches(row: dict[str, Any], cfg: Any) -> bool:
    """A committed row is the result of `cfg`: the same config hash and measurement settings."""
    return row.get("config_hash") == config_hash(cfg) and measure_mismatch(row, cfg) is None


def read_run_results(run_dir: str | Path) -> dict[str, Any]:
    """The measured values of a finished run: final / held-out loss, success (final evaluation and per
    evaluated step), EVA ranks and init time, seconds. Missing files or keys give empty values."""
    paths = RunPaths(run_dir)
    summary = read_summary(paths.root, problems=[]) or RunSummary()  # missing or damaged: no values
    try:
        evaluation = load_json_object(paths.eval) or {}
    except ValueError:  # a damaged eval.json: no values
        evaluation = {}
    mean = evaluation.get("mean") or {}
    ranks = summary.adapter_ranks
    mean = mean if isinstance(mean, dict) else {}
    out = {"final_loss": _number(summary.final_loss), "seconds": _number(summary.seconds),
           "success_any": _number(mean.get("success_any"), 0, 1), "success_final": _number(mean.get("success_final"), 0, 1),
           "episodes": _count(evaluation.get("episodes")), "total_rank": _count(summary.total_rank),
           "eva_init_seconds": _number(summary.eva_init_seconds), "precision": summary.precision,
           "eval_precision": evaluation.get("precision"), "cpu": " | ".join(summary.machines or []) or None,
           "adapter_ranks": json.dumps(ranks, separators=(",", ":")) if isinstance(ranks, dict) and ranks else None}
    by_step: dict[int, dict[str, Any]] = {}
    for record in read_metrics(paths.metrics):  # a resumed run logs some steps twice: the later line wins
        by_step.setdefault(int(record["step"]), {}).update(record)
    eval_seconds = 0.0
    for step in sorted(by_step):
        for key, column in CURVES:
            value = _number(by_step[step].get(key))  # a damaged value ("abc", [1]) is left out, not copied
            if value is not None:
                out[f"{column}@{step}"] = value
                if column == "heldout_loss":
                    out["heldout_loss"] = value  # the last step that has it
        eval_seconds += sum(_number(by_step[step].get(k)) or 0.0 for k in ("eval/seconds", "probe/seconds"))
    out["eval_seconds"] = eval_seconds if eval_seconds > 0 else None
    return out


def _number(value: Any, low: float = -math.inf, high: float = math.inf) -> float | None:
    """A measured value as a float; None for anything else (text, lists, bools, NaN, out of range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and low <= value <= high else None


def _count(value: Any) -> int | None:
    number = _number(value, 0)
    return int(number) if number is not None and number.is_integer() else None


def _is_curve(column: str) -> bool:
    metric, _, step = column.partition("@")
    return bool(metric) and step.isdigit()


def config_value(cfg: Any, dotted: str) -> Any:
    """`config_value(cfg, "optim.lr")` -> `cfg.optim.lr`."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value
