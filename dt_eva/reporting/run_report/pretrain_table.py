"""Per-task success of evaluated pre-training runs (e.g. on MT40): tasks on rows, runs on columns."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

from dt_eva.reporting.common.tables import (
    episodes_footnote,
    markdown_table,
    markdown_text,
    order_tasks,
    short_task_name,
)
from dt_eva.runs.records import RunRecord


@dataclass
class PretrainTable:
    name: str
    title: str
    runs: list[RunRecord]
    tasks: list[str]
    footnotes: list[str] = field(default_factory=list)

    def value(self, run: RunRecord, task: str, metric: str) -> float | None:
        entry = run.eval["tasks"].get(task) if run.eval else None
        v = entry.get(metric) if entry else None
        return float(v) if v is not None else None

    def average(self, run: RunRecord, metric: str) -> float | None:
        vals = [v for t in self.tasks if (v := self.value(run, t, metric)) is not None]
        return math.fsum(vals) / len(vals) if vals else None

    def to_markdown(self) -> str:
        header = ["Task"] + [f"{markdown_text(r.name)} {m}" for r in self.runs for m in ("any", "final")]
        rows = [[short_task_name(t)] + [self._cell(r, t, m) for r in self.runs for m in ("success_any", "success_final")]
                for t in self.tasks + ["Avg."]]
        return markdown_table(self.title, header, rows, self.footnotes)

    def _cell(self, run: RunRecord, task: str, metric: str) -> str:
        v = self.average(run, metric) if task == "Avg." else self.value(run, task, metric)
        return "-" if v is None else f"{v:.2f}"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["run", "task", "success_any", "success_final", "return_mean", "episodes"])
        for r in self.runs:
            for t in self.tasks:
                entry = (r.eval or {})["tasks"].get(t)
                if entry is None:
                    continue
                writer.writerow([r.name, t, *(("" if entry.get(k) is None else f"{float(entry[k]):.6g}")
                                              for k in ("success_any", "success_final", "return_mean")),
                                 entry.get("episodes", "")])
        return out.getvalue()


def build_pretrain_table(runs: list[RunRecord]) -> PretrainTable | None:
    """The table over evaluated pre-training runs, or None when there are none."""
    runs = [r for r in runs if r.kind == "pretrain" and r.eval is not None]
    if not runs:
        return None
    tasks = order_tasks({t for r in runs for t in r.eval["tasks"]})  # type: ignore[index]
    notes = [
        "Success rate over the evaluation episodes of each run (any: success at any step; final: at the "
        "last step). Avg.: mean over the listed tasks the run was evaluated on.",
        episodes_footnote({str(r.path): int(r.eval_episodes or 0) for r in runs}),
    ]
    return PretrainTable("pretrain_success", "Pre-training runs: success per task", runs, tasks, notes)
