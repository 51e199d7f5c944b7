"""EVA's rank distribution across tasks and its initialisation time as a share of a run, from the
`adapter_ranks`, `eva_init_seconds` and `seconds` columns of a sweep's rows (EVA-family methods, each
at its chosen configuration)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

from dt_eva.methods.ranks import rank_grid
from dt_eva.methods.registry import METHODS, method_label, method_sort_key
from dt_eva.reporting.common.stats import mean_se
from dt_eva.reporting.common.tables import order_tasks, short_task_name
from dt_eva.reporting.study.rows import StudyKey, StudyRow


@dataclass
class RankSummary:
    """One EVA-family method's ranks: per (layer, module) the mean over its runs and the spread of the
    per-task means; per task the mean total rank."""

    method: str
    runs: int
    layers: list[int]
    modules: list[str]
    mean: list[list[float | None]]  # [layer][module], over every run
    low: list[list[float | None]]  # the smallest per-task mean
    high: list[list[float | None]]
    task_totals: dict[str, float]  # task -> mean total rank over its seeds


def eva_rows(rows: list[StudyRow], chosen: dict[str, StudyKey]) -> dict[str, list[StudyRow]]:
    """The rows of each EVA-family method at its chosen configuration, in registry order."""
    methods = sorted((m for m in chosen if m in METHODS and METHODS[m].eva), key=method_sort_key)
    return {m: [r for r in rows if r.key == chosen[m]] for m in methods}


def rank_summary(method: str, rows: list[StudyRow]) -> RankSummary | None:
    with_ranks = [r for r in rows if r.adapter_ranks]
    if not with_ranks:
        return None
    cells: dict[tuple[int, str], dict[str, list[int]]] = {}  # (layer, module) -> task -> ranks
    layers: set[int] = set()
    modules: list[str] = []
    for row in with_ranks:
        row_layers, row_modules, grid = rank_grid(row.adapter_ranks)  # type: ignore[arg-type]
        modules += [m for m in row_modules if m not in modules]
        layers.update(row_layers)
        for i, layer in enumerate(row_layers):
            for j, module in enumerate(row_modules):
                if grid[i][j] is not None:
                    cells.setdefault((layer, module), {}).setdefault(row.task, []).append(grid[i][j])
    ordered = sorted(layers)

    def stat(fn):
        return [[fn(cells[(layer, m)]) if (layer, m) in cells else None for m in modules] for layer in ordered]

    totals: dict[str, list[int]] = {}
    for row in with_ranks:
        totals.setdefault(row.task, []).append(sum(row.adapter_ranks.values()))  # type: ignore[union-attr]
    return RankSummary(method, len(with_ranks), ordered, modules,
                       stat(lambda by_task: _mean([v for vs in by_task.values() for v in vs])),
                       stat(lambda by_task: min(_mean(vs) for vs in by_task.values())),
                       stat(lambda by_task: max(_mean(vs) for vs in by_task.values())),
                       {t: _mean(totals[t]) for t in order_tasks(totals)})


def _mean(values: list[int] | list[float]) -> float:
    return math.fsum(values) / len(values)


def rank_markdown(summary: RankSummary) -> str:
    label = method_label(summary.method)
    lines = [f"### {label}: mean rank per layer and module ({summary.runs} runs)", "",
             "| Layer | " + " | ".join(summary.modules) + " |", "|---|" + "|".join([":-:"] * len(summary.modules)) + "|"]
    for i, layer in enumerate(summary.layers):
        cells = [("-" if summary.mean[i][j] is None else
                  f"{summary.mean[i][j]:.1f} ({summary.low[i][j]:.1f}–{summary.high[i][j]:.1f})")
                 for j in range(len(summary.modules))]
        lines.append(f"| {layer if layer >= 0 else '-'} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean rank over every run (in brackets: the smallest and largest per-task mean).", "",
              f"| Task | {label} total rank (mean over seeds) |", "|---|:-:|"]
    lines += [f"| {short_task_name(t)} | {v:.1f} |" for t, v in summary.task_totals.items()]
    return "\n".join(lines) + "\n"


def rank_csv(summaries: list[RankSummary]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["method", "layer", "module", "mean_rank", "min_task_mean", "max_task_mean", "runs"])
    for s in summaries:
        for i, layer in enumerate(s.layers):
            for j, module in enumerate(s.modules):
                if s.mean[i][j] is not None:
                    writer.writerow([s.method, layer, module, f"{s.mean[i][j]:.6g}", f"{s.low[i][j]:.6g}",
                                     f"{s.high[i][j]:.6g}", s.runs])
    return text.getvalue()


def init_time_table(by_method: dict[str, list[StudyRow]]) -> tuple[str, str] | None:
    """Markdown and CSV of EVA's init seconds and their share of the run, init / (init + training)."""
    lines = ["### EVA initialisation time as a share of a run", "",
             "| Method | Runs | EVA init s | Training s | Share of the run |", "|---|:-:|:-:|:-:|:-:|"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["method", "runs", "init_s_mean", "init_s_se", "train_s_mean", "share_mean", "share_se",
                     "share_min", "share_max"])
    for method, rows in by_method.items():
        timed = [r for r in rows if r.eva_init_seconds is not None and r.seconds is not None]
        if not timed:
            continue
        init = mean_se(r.eva_init_seconds for r in timed)  # type: ignore[misc]
        train = mean_se(r.seconds for r in timed)  # type: ignore[misc]
        shares = [r.eva_init_seconds / (r.eva_init_seconds + r.seconds) for r in timed]  # type: ignore[operator]
        share = mean_se(shares)
        lines.append(f"| {method_label(method)} | {len(timed)} | {init.format(2)} | {train.format(1)} | "
                     f"{share.format(3)} ({min(shares):.3f}–{max(shares):.3f}) |")
        writer.writerow([method, len(timed), f"{init.mean:.6g}", _blank(init.se), f"{train.mean:.6g}",
                         f"{share.mean:.6g}", _blank(share.se), f"{min(shares):.6g}", f"{max(shares):.6g}"])
    if len(lines) == 4:
        return None
    lines += ["", ("Share: EVA init seconds / (init + training seconds) per run, mean ± s.e. (min–max); training "
                   "seconds include the evaluations during training. Init runs once, before the first update.")]
    return "\n".join(lines) + "\n", text.getvalue()


def _blank(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
