"""Does the study order the methods as the paper's Table 6 does?

Spearman's rank correlation between each method's average success here (mean of its per-task means, the
Table 6 "Avg." column) and the paper's Table 6 average, with a bootstrap interval that resamples the tasks
and then the seeds within each drawn task (the seed index is shared by the methods: a (task, seed) pair
plays the same goal layouts for every method). numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dt_eva.methods.registry import method_label, method_sort_key
from dt_eva.reporting.common.paper import PAPER_TABLE6_AVG
from dt_eva.reporting.common.tables import METRIC_LABELS
from dt_eva.reporting.study.paired import BOOTSTRAP_SEED, RESAMPLES, resample_tasks_then_seeds
from dt_eva.reporting.study.rows import StudyKey, StudyRow
from dt_eva.reporting.study.tables import config_results

MIN_METHODS = 3  # fewer give a rank correlation of +-1 or nothing
MIN_TASKS = 5  # fewer: no interval (a bootstrap over 2-4 tasks has only a handful of distinct resamples)


@dataclass
class Ordering:
    metric: str
    methods: list[str]
    ours: np.ndarray  # per method: the mean of its per-task means over `tasks`
    paper: np.ndarray
    tasks: list[str]
    rho: float | None
    interval: tuple[float, float] | None  # None with fewer than MIN_TASKS tasks
    resamples: int  # resamples with a defined rho (ours not all tied)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis (1 = smallest); tied values share the mean of their ranks."""
    x = np.asarray(values, dtype=np.float64)
    below = (x[..., None, :] < x[..., :, None]).sum(axis=-1)
    equal = (x[..., None, :] == x[..., :, None]).sum(axis=-1)
    return below + (equal + 1) / 2


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis (Pearson's r of the average ranks); nan where a side is constant."""
    rx, ry = np.broadcast_arrays(average_ranks(x), average_ranks(y))
    dx, dy = rx - rx.mean(axis=-1, keepdims=True), ry - ry.mean(axis=-1, keepdims=True)
    norm = np.sqrt((dx * dx).sum(axis=-1) * (dy * dy).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (dx * dy).sum(axis=-1) / np.where(norm > 0, norm, 1.0), np.nan)


def ordering_vs_paper(rows: list[StudyRow], chosen: dict[str, StudyKey], metric: str = "success_any",
                      resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Ordering | None:
    """The methods with a paper number, each at its chosen configuration, over the tasks every one of them
    ran (per task, the seeds all of them ran); None with fewer than `MIN_METHODS` such methods."""
    results = config_results(rows, metric)
    methods = sorted((m for m in chosen if m in PAPER_TABLE6_AVG and chosen[m] in results), key=method_sort_key)
    if len(methods) < MIN_METHODS:
        return None
    per_seed = [results[chosen[m]].per_seed for m in methods]
    tasks = sorted(set.intersection(*(set(p) for p in per_seed)))
    seeds = {t: sorted(set.intersection(*(set(p[t]) for p in per_seed))) for t in tasks}
    tasks = [t for t in tasks if seeds[t]]
    if not tasks:
        return None
    width = max(len(seeds[t]) for t in tasks)
    values = np.zeros((len(methods), len(tasks), width))  # method x task x seed, padded per task
    for i, p in enumerate(per_seed):
        for j, t in enumerate(tasks):
            values[i, j, :len(seeds[t])] = [p[t][s] for s in seeds[t]]
    sizes = np.array([len(seeds[t]) for t in tasks])
    ours = (values.sum(axis=2) / sizes).mean(axis=1)
    paper = np.array([PAPER_TABLE6_AVG[m] for m in methods])
    interval, used = None, 0
    if len(tasks) >= MIN_TASKS:
        rhos = spearman(_bootstrap_averages(values, sizes, resamples, seed).T, paper)
        draws = rhos[~np.isnan(rhos)]
        if len(draws):
            interval = (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)))
            used = len(draws)
    rho = float(spearman(ours, paper))
    return Ordering(metric, methods, ours, paper, tasks, None if np.isnan(rho) else rho, interval, used)


def _bootstrap_averages(values: np.ndarray, sizes: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """method x resample: the average over resampled tasks of each task's mean over its resampled seeds."""
    total = np.zeros((values.shape[0], resamples))
    for task, picked, used in resample_tasks_then_seeds(sizes, resamples, seed):
        cells = values[:, task[:, None], picked]  # method x resample x seed slot
        total += np.where(used[None], cells, 0.0).sum(axis=2) / used.sum(axis=1)[None]
    return total / len(sizes)


def ordering_markdown(o: Ordering) -> str:
    label = METRIC_LABELS[o.metric]
    ours_rank = len(o.methods) + 1 - average_ranks(o.ours)  # 1 = best
    paper_rank = len(o.methods) + 1 - average_ranks(o.paper)
    lines = [f"### Ordering against the paper's Table 6: {label}", "",
             f"| Method | Ours (avg. over {len(o.tasks)} tasks) | Our rank | Paper avg. | Paper rank |",
             "|---|:-:|:-:|:-:|:-:|"]
    for i in np.argsort(ours_rank, kind="stable"):
        lines.append(f"| {method_label(o.methods[i])} | {o.ours[i]:.2f} | {_rank(ours_rank[i])} | {o.paper[i]:.2f} | "
                     f"{_rank(paper_rank[i])} |")
    lines.append("")
    if o.rho is None:
        lines.append("Spearman's rank correlation: undefined (every method has the same average here).")
    else:
        text = f"Spearman's rank correlation between the two orderings: **{o.rho:+.2f}**"
        if o.interval is not None:
            low, high = o.interval
            verdict = ("resolved: positive (our ordering tends to follow the paper's)" if low > 0 else
                       "resolved: negative (our ordering tends to reverse the paper's)" if high < 0 else
                       "not resolved (the interval includes 0)")
            text += (f", 95 % bootstrap interval [{low:+.2f}, {high:+.2f}] ({o.resamples:,} resamples of the tasks, "
                     f"then of the seeds within each task; resamples where every method ties are left out): {verdict}")
        elif len(o.tasks) < MIN_TASKS:
            text += f" (no interval: {len(o.tasks)} task(s), fewer than {MIN_TASKS})"
        lines.append(text + ".")
    lines += ["", "Ranks: 1 is the highest average; ties share the mean of their ranks. The paper's averages come "
              "from its DT at 100K updates on all ten CW10 tasks; ours from this study's budget and tasks.", ""]
    return "\n".join(lines)


def _rank(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
