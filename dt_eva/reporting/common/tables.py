"""What both reports' tables share: the metric labels, task names and order, Markdown text and tables,
and `Table`, a table in the layout of the paper's Table 6 (best config per method) and Table 19 (per rank).

Cells are mean ± standard error over seeds of one metric; the "Avg." column is the mean of the per-task
means, with a standard error over the per-seed task averages.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from dt_eva.reporting.common.stats import MeanSE, mean_se

METRICS: dict[str, str] = {"success_any": "success at any step", "success_final": "success at the final step"}
# every metric a table can hold (a sweep's results.csv also has the held-out action MSE)
METRIC_LABELS: dict[str, str] = {**METRICS, "heldout_loss": "held-out action MSE",
                                  "grad_norm": "gradient norm (before clipping)",
                                  "first_success_step": "time to first success (env steps)"}


def markdown_text(text: object) -> str:
    """Text from run folders (method names, paths, errors) as Markdown that shows it as written: HTML is
    escaped (a report must not carry markup from a crafted run) and `|` cannot split a table cell."""
    return html.escape(str(text), quote=False).replace("|", "\\|")


def markdown_table(title: str, header: Sequence[str], rows: Iterable[Sequence[str]], footnotes: Sequence[str] = (),
                   left: int = 1) -> str:
    """A `### title` and a Markdown table: the first `left` columns left-aligned, the others centred;
    `header` and `rows` are cells already in Markdown; each footnote is escaped and ends a line."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * left + [":-:"] * (len(header) - left)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    if footnotes:
        lines.append("")
        lines.extend(f"{markdown_text(note)}  " for note in footnotes)
    return "\n".join(lines).rstrip() + "\n"


def short_task_name(task: str) -> str:
    head, _, tail = task.rpartition("-v")
    return head if head and tail.isdigit() else task


def order_tasks(tasks: Iterable[str]) -> list[str]:
    """CW10 tasks in Continual World order, then any others in Meta-World (MT50) order, then by name."""
    from dt_eva.envs import CW10, MT50

    reference = list(CW10) + [t for t in MT50 if t not in CW10]
    tasks = set(tasks)
    known = [t for t in reference if t in tasks]
    return known + sorted(tasks - set(known))


@dataclass(frozen=True, order=True)
class ConfigKey:
    """The hyper-parameters a sweep varies: one row candidate per key (seeds are averaged)."""

    method: str
    rank: int | None
    rho: float | None
    lr: float | None

    def describe(self, with_lr: bool = False) -> str:
        parts = []
        if self.rank is not None:
            parts.append(f"r={self.rank}")
        if self.rho is not None:
            parts.append(f"rho={self.rho:g}")
        if with_lr and self.lr is not None:
            parts.append(f"lr={self.lr:g}")
        return ", ".join(parts) or "-"


@dataclass
class ConfigResult:
    """Per-task statistics of one configuration over its seeds."""

    key: ConfigKey
    per_seed: dict[str, dict[int, float]]  # task -> seed -> value
    runs: list[str] = field(default_factory=list)  # run directories
    episodes: dict[str, int] = field(default_factory=dict)  # run directory -> episodes per task of its evaluation

    @property
    def tasks(self) -> list[str]:
        return list(self.per_seed)

    def cell(self, task: str) -> MeanSE | None:
        values = self.per_seed.get(task)
        return mean_se(values.values()) if values else None

    def average(self) -> MeanSE:
        """Mean of the per-task means; SE over per-seed averages of seeds that ran every task."""
        means = [self.cell(t).mean for t in self.per_seed]  # type: ignore[union-attr]
        avg = math.fsum(means) / len(means)
        full_seeds = set.intersection(*(set(v) for v in self.per_seed.values()))
        if len(full_seeds) < 2:
            return MeanSE(avg, None, len(full_seeds))
        seed_avgs = [math.fsum(v[s] for v in self.per_seed.values()) / len(self.per_seed) for s in full_seeds]
        se = mean_se(seed_avgs).se
        return MeanSE(avg, se, len(full_seeds))

    def selection_key(self) -> tuple:
        """Higher is better: cover more tasks, then a higher average; ties go to the smaller config."""
        k = self.key
        return (len(self.per_seed), round(self.average().mean, 12),
                -(k.rank or 0), -(k.rho or 0.0), -(k.lr or 0.0))


@dataclass
class Row:
    label: str
    method: str
    config: str
    result: ConfigResult

    def seeds(self) -> str:
        counts = sorted({len(v) for v in self.result.per_seed.values()})
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"

    def episodes(self) -> str:
        """Episodes per task of the row's evaluations: `20`, or `1-20` when they differ."""
        sizes = sorted(set(self.result.episodes.values()))
        if not sizes:
            return "?"
        return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"


@dataclass
class Table:
    """One rendered table: a title, task columns, rows and footnotes."""

    name: str
    title: str
    metric: str
    tasks: list[str]
    rows: list[Row]
    footnotes: list[str] = field(default_factory=list)
    digits: int = 2  # decimals of the cells
    reference: dict[str, float] | None = None  # method -> a published average, shown beside ours
    reference_label: str = "Paper avg."

    def to_markdown(self) -> str:
        header = ["Method", "Config", "Seeds", "Episodes"] + [short_task_name(t) for t in self.tasks] + ["Avg."]
        header += [self.reference_label] if self.reference is not None else []
        return markdown_table(self.title, header, [self._markdown_cells(row) for row in self.rows], self.footnotes,
                              left=4)

    def _markdown_cells(self, row: Row) -> list[str]:
        cells = [markdown_text(row.label), markdown_text(row.config), row.seeds(), row.episodes()]
        for t in self.tasks:
            c = row.result.cell(t)
            cells.append(c.format(self.digits) if c else "-")
        partial = len(row.result.per_seed) < len(self.tasks)
        cells.append(row.result.average().format(self.digits) + ("*" if partial else ""))
        if self.reference is not None:
            cells.append(f"{self.reference[row.method]:.2f}" if row.method in self.reference else "-")
        return cells

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        head = ["method", "label", "config", "rank", "rho", "lr", "seeds", "episodes"]
        for t in self.tasks:
            head += [f"{t}_mean", f"{t}_se", f"{t}_n"]
        head += ["avg_mean", "avg_se", "avg_n_seeds", "avg_n_tasks"]
        head += ["reference_avg"] if self.reference is not None else []
        writer.writerow(head)
        for row in self.rows:
            k = row.result.key
            line = [row.method, row.label, row.config, _blank(k.rank), _blank(k.rho), _blank(k.lr), row.seeds(),
                    row.episodes()]
            for t in self.tasks:
                c = row.result.cell(t)
                line += [_num(c.mean), _num(c.se), c.n] if c else ["", "", 0]
            avg = row.result.average()
            line += [_num(avg.mean), _num(avg.se), avg.n, len(row.result.per_seed)]
            line += [_blank((self.reference or {}).get(row.method))] if self.reference is not None else []
            writer.writerow(line)
        return out.getvalue()


def _blank(v: object) -> object:
    return "" if v is None else v


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def common_footnotes(rows: list[Row], tasks: list[str], metric: str) -> list[str]:
    """The footnotes every Table 6 / 19 layout carries: what a cell is, single seeds, partial rows, and the
    evaluation sizes (the last note)."""
    notes = [
        f"Cells: mean {METRIC_LABELS.get(metric, metric)} over seeds ± standard error, std(ddof=1)/sqrt(n). "
        "Avg.: mean of the per-task means; its ± is the standard error over seeds of the per-seed "
        "average over the row's tasks (seeds that ran every task)."
    ]
    if any(c is not None and c.se is None for r in rows for c in (r.result.cell(t) for t in tasks)):
        notes.append("Cells without ± come from a single seed: no standard error can be estimated.")
    if any(len(r.result.per_seed) < len(tasks) for r in rows):
        notes.append("*: the row covers fewer tasks than the table; its Avg. is over its own tasks only.")
    notes.append(episodes_footnote({run: n for r in rows for run, n in r.result.episodes.items()}))
    return notes


def episodes_footnote(episodes: dict[str, int], max_names: int = 12) -> str:
    """Says how many evaluation episodes per task the table's runs used, naming the runs when sizes differ.

    `episodes`: run directory -> episodes per task of the evaluation used.
    """
    if not episodes:
        return "Episodes: the number of evaluation episodes per task was not recorded."
    by_size: dict[int, list[str]] = defaultdict(list)
    for run, n in episodes.items():
        by_size[n].append(Path(run).name)
    if len(by_size) <= 1:
        n = next(iter(by_size), "?")
        return (f"Episodes: every cell comes from evaluations of {n} episode{'s' if n != 1 else ''} per task "
                "(each run's largest evaluation).")
    # with many runs, the most common size is given as a count and only the others are named
    common = max(by_size, key=lambda n: (len(by_size[n]), n)) if len(episodes) > max_names else None
    parts = []
    for n in sorted(by_size, reverse=True):
        names = sorted(by_size[n])
        size = f"{n} episode{'s' if n != 1 else ''} per task"
        if n == common:
            parts.append(f"{size}: {len(names)} runs")
        else:
            shown = ", ".join(names[:max_names]) + (f" and {len(names) - max_names} more" if len(names) > max_names else "")
            parts.append(f"{size}: {shown}")
    return ("**Evaluation sizes differ in this table** (each run's largest evaluation): " + "; ".join(parts)
            + ". Cells that mix them are less comparable; re-evaluate the smaller runs with "
            f"`dt-eva evaluate --run RUN --episodes {max(by_size)}`.")
