"""Per-task view of each paired comparison: both methods' means over the task's common seeds, their
difference with a bootstrap interval over those seeds, and how many seeds the first method wins, ties
and loses. Shows whether an average difference comes from every task or from one."""

from __future__ import annotations

import csv
import io

import numpy as np

from dt_eva.methods.registry import method_label
from dt_eva.reporting.common.tables import METRIC_LABELS, order_tasks, short_task_name
from dt_eva.reporting.study.paired import BOOTSTRAP_SEED, RESAMPLES, PairedDifference, bootstrap_interval
from dt_eva.reporting.study.rows import StudyKey, StudyRow, per_seed

PER_TASK_METRICS = ("success_any", "success_final")
TaskRow = tuple[str, int, float, float, float, tuple[float, float] | None, tuple[int, int, int]]


def per_task(d: PairedDifference, rows: list[StudyRow], chosen: dict[str, StudyKey]) -> list[TaskRow]:
    """(task, pairs, mean a, mean b, mean a - b, interval or None, (wins, ties, losses)) per task."""
    values = per_seed(rows, d.metric)
    out = []
    for task in order_tasks({t for t, _ in d.diffs}):
        seeds = sorted(s for t, s in d.diffs if t == task)
        diffs = np.array([d.diffs[(task, s)] for s in seeds])
        means = [float(np.mean([values[chosen[m]][task][s] for s in seeds])) for m in (d.a, d.b)]
        interval = bootstrap_interval(diffs, RESAMPLES, BOOTSTRAP_SEED) if len(seeds) >= 2 else None
        out.append((task, len(seeds), *means, float(diffs.mean()), interval,
                    (int(np.sum(diffs > 0)), int(np.sum(diffs == 0)), int(np.sum(diffs < 0)))))
    return out


def per_task_markdown(d: PairedDifference, table: list[TaskRow]) -> str:
    a, b = method_label(d.a), method_label(d.b)
    lines = [f"#### {a} − {b} per task: {METRIC_LABELS[d.metric]}", "",
             f"| Task | Pairs | {a} | {b} | Difference | 95 % interval over seeds | {a} wins / ties / losses |",
             "|---|:-:|:-:|:-:|:-:|:-:|:-:|"]
    for task, n, mean_a, mean_b, diff, interval, (w, t, l) in table:
        ci = "-" if interval is None else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"
        lines.append(f"| {short_task_name(task)} | {n} | {mean_a:.3f} | {mean_b:.3f} | {diff:+.3f} | {ci} | {w} / {t} / {l} |")
    return "\n".join(lines) + "\n"


def per_task_section(diffs: list[PairedDifference], rows: list[StudyRow],
                     chosen: dict[str, StudyKey]) -> tuple[str, str] | None:
    """The per-task tables (Markdown) and per_task.csv, for the success metrics' comparisons."""
    chosen_diffs = [d for d in diffs if d.metric in PER_TASK_METRICS and d.n]
    if not chosen_diffs:
        return None
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["a", "b", "metric", "task", "pairs", "mean_a", "mean_b", "difference", "ci_low", "ci_high",
                     "wins", "ties", "losses"])
    parts = ["### Paired comparisons per task", ""]
    for d in chosen_diffs:
        table = per_task(d, rows, chosen)
        parts.append(per_task_markdown(d, table))
        for task, n, mean_a, mean_b, diff, interval, wtl in table:
            ci = ("", "") if interval is None else tuple(f"{v:.6g}" for v in interval)
            writer.writerow([d.a, d.b, d.metric, task, n, f"{mean_a:.6g}", f"{mean_b:.6g}", f"{diff:.6g}", *ci, *wtl])
    parts.append(f"Interval: percentile bootstrap over the task's seeds ({RESAMPLES:,} resamples, numpy seed "
                 f"{BOOTSTRAP_SEED}); with a handful of seeds it is rough. Wins: seeds where the first method is "
                 "higher.\n")
    return "\n".join(parts), text.getvalue()
