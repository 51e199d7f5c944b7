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
(`dt_eva.runs.guard.config_hash` of the run's config), run_dir.

`results.csv` is what a study commits (its run directories are not): a run whose directory is gone but
whose row is `done` with the same `config_hash` counts as finished (`committed_results`), so a sweep
continues in a fresh clone where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from dt_eva.runs.episodes import EPISODES, read_episode_rows, run_episode_rows, write_episode_rows
from dt_eva.runs.guard import config_hash
from dt_eva.runs.layout import RunPaths
from dt_eva.utils.io import atomic_write_text, load_json_object, read_metrics

RESULTS = "results.csv"  # in the sweep's folder
# results.csv column -> config key, per kind (the settings a study compares)
FIELDS = {
    "finetune": {"task": "task", "method": "method", "rank": "rank", "rho": "rho", "seed": "seed",
                 "lr": "optim.lr", "steps": "train.steps"},
    "pretrain": {"seed": "seed", "lr": "optim.lr", "steps": "train.steps", "batch_size": "train.batch_size"},
}
MEASURED = ("final_loss", "heldout_loss", "success_any", "success_final", "episodes")
TAIL = ("total_rank", "adapter_ranks", "eva_init_seconds", "seconds", "eval_seconds", "precision",
        "eval_precision", "cpu", "error", "config_hash", "run_dir")
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
        self.episodes_path = self.path.parent / EPISODES
        self.episodes = read_episode_rows(self.episodes_path)
        self.rows = {r.name: self._row(r, "done" if r.status == "done" else "pending", None) for r in runs}

    def record(self, run: SweepRunLike, error: str | None) -> None:
        self.rows[run.name] = self._row(run, "failed" if error else "done", error)
        self.write()

    def failed(self) -> list[tuple[str, str]]:
        return [(name, row["error"]) for name, row in self.rows.items() if row["status"] == "failed"]

    def write(self) -> None:
        rows = [self.rows[r.name] for r in self.runs]
        head = ["name", "status", *self.grid_keys, *FIELDS[self.kind], *MEASURED]
        curves = sorted({k for row in rows for k in row if "@" in k}, key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=head + curves + list(TAIL), lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: _cell(row.get(k)) for k in writer.fieldnames} for row in rows])
        atomic_write_text(self.path, text.getvalue())
        if any(self.episodes.values()) or self.episodes_path.is_file():
            write_episode_rows(self.episodes_path, self.episodes, [r.name for r in self.runs])

    def _row(self, run: SweepRunLike, status: str, error: str | None) -> dict[str, Any]:
        digest = config_hash(run.config)
        kept = self.committed.get(run.name)
        if status == "done" and not RunPaths(run.run_dir).summary.is_file() and kept and kept["config_hash"] == digest:
            return {**kept, "run_dir": str(run.run_dir)}  # finished in an earlier session; only its row is left
        self.episodes.pop(run.name, None)
        row: dict[str, Any] = {"name": run.name, "status": status, "error": error, "run_dir": str(run.run_dir),
                               "config_hash": digest}
        row.update({k: config_value(run.config, k) for k in self.grid_keys})
        row.update({col: config_value(run.config, key) for col, key in FIELDS[self.kind].items()})
        if status == "done":
            row.update(read_run_results(run.run_dir))
            self.episodes[run.name] = run_episode_rows(run.name, run.run_dir)
        return row


def committed_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """The `done` rows of an existing results.csv by run name (empty when there is none). Their values
    stay strings; they are written back as they were read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return {}
    rows = csv.DictReader(io.StringIO(text))
    return {row["name"]: row for row in rows if row.get("status") == "done" and row.get("config_hash")}


def read_run_results(run_dir: str | Path) -> dict[str, Any]:
    """The measured values of a finished run: final / held-out loss, success (final evaluation and per
    evaluated step), EVA ranks and init time, seconds. Missing files or keys give empty values."""
    paths = RunPaths(run_dir)
    summary, evaluation = read_json_object(paths.summary), read_json_object(paths.eval)
    mean = evaluation.get("mean") or {}
    ranks = summary.get("adapter_ranks")
    out = {"final_loss": summary.get("final_loss"), "seconds": summary.get("seconds"),
           "success_any": mean.get("success_any"), "success_final": mean.get("success_final"),
           "episodes": evaluation.get("episodes"), "total_rank": summary.get("total_rank"),
           "eva_init_seconds": summary.get("eva_init_seconds"), "precision": summary.get("precision"),
           "eval_precision": evaluation.get("precision"), "cpu": " | ".join(summary.get("machines") or []) or None,
           "adapter_ranks": json.dumps(ranks, separators=(",", ":")) if ranks else None}
    by_step: dict[int, dict[str, Any]] = {}
    for record in read_metrics(paths.metrics):  # a resumed run logs some steps twice: the later line wins
        by_step.setdefault(int(record["step"]), {}).update(record)
    eval_seconds = 0.0
    for step in sorted(by_step):
        for key, column in CURVES:
            if key in by_step[step]:
                out[f"{column}@{step}"] = by_step[step][key]
                if column == "heldout_loss":
                    out["heldout_loss"] = by_step[step][key]  # the last step that has it
        eval_seconds += sum(float(by_step[step].get(k, 0.0)) for k in ("eval/seconds", "probe/seconds"))
    out["eval_seconds"] = eval_seconds if eval_seconds > 0 else None
    return out


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} when it is missing, unreadable or not an object."""
    try:
        return load_json_object(path) or {}
    except ValueError:
        return {}


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
