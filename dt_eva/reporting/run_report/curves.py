"""Learning curves (training loss and success vs updates) from the metrics.jsonl of runs.

Runs that differ only by seed are drawn as one line: the mean over seeds at each logged step.
matplotlib is imported lazily with the Agg backend (no display needed).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from dt_eva.reporting.common.figures import pyplot, save_figure
from dt_eva.runs.records import RunRecord
from dt_eva.utils.io import read_metrics

DPI = 110  # the two-panel curves are wider than the other figures


def _mean_by_step(series: list[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for points in series:
        for step, value in points:
            by_step[step].append(value)
    steps = sorted(by_step)
    return steps, [math.fsum(by_step[s]) / len(by_step[s]) for s in steps]


def _smooth(values: list[float], points: int = 50) -> list[float]:
    """Trailing moving average over ~len/points values: readable curves from noisy minibatch losses."""
    window = max(1, len(values) // points)
    if window == 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def run_curves(run: RunRecord, task: str | None = None,
               problems: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """`{"loss": [(step, loss)], "success": [(step, success_any)]}` of one run.

    Success points come from in-training evaluation lines (`eval/<task>/success_any`, else
    `eval/success_any`), plus the run's largest evaluation at its last step. Bad lines of
    `metrics.jsonl` are skipped and named in `problems`.
    """
    loss: list[tuple[int, float]] = []
    success: list[tuple[int, float]] = []
    keys = ([f"eval/{task}/success_any"] if task else []) + ["eval/success_any"]
    rows = read_metrics(run.metrics_path, problems) if run.metrics_path else []
    for row in rows:
        step = row["step"]
        if _is_number(row.get("loss")) and math.isfinite(row["loss"]):
            loss.append((step, float(row["loss"])))
        for k in keys:
            if _is_number(row.get(k)):
                success.append((step, float(row[k])))
                break
    if run.eval is not None:
        steps = run.summary.steps if run.summary is not None else None
        final_step = steps if isinstance(steps, int) else max((r["step"] for r in rows), default=0)
        entry = run.eval["tasks"].get(task) if task else None
        value = (entry or run.eval.get("mean") or {}).get("success_any")
        if value is not None and not any(s == final_step for s, _ in success):
            success.append((int(final_step), float(value)))
    success.sort()
    return {"loss": loss, "success": success}


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_learning_curves(groups: dict[str, Sequence[RunRecord]], path: str | os.PathLike, title: str,
                         task: str | None = None, problems: list[str] | None = None) -> Path:
    """Two panels, loss and success (any step) vs updates; one line per group (mean over its seeds).

    Bad lines of the runs' `metrics.jsonl` are skipped and named in `problems`."""
    plt = pyplot()
    fig, (ax_loss, ax_succ) = plt.subplots(1, 2, figsize=(11, 4))
    any_loss = any_success = False
    all_losses: list[float] = []
    for label, runs in groups.items():
        curves = [run_curves(r, task, problems) for r in runs]
        steps, loss = _mean_by_step([c["loss"] for c in curves])
        if steps:
            any_loss = True
            all_losses.extend(loss)
            ax_loss.plot(steps, _smooth(loss), label=f"{label} (n={len(runs)})", lw=1.4)
        steps, succ = _mean_by_step([c["success"] for c in curves])
        if steps:
            any_success = True
            ax_succ.plot(steps, succ, marker="o", ms=3, label=f"{label} (n={len(runs)})", lw=1.4)
    ax_loss.set_xlabel("updates")
    ax_loss.set_ylabel("training loss (action MSE, smoothed)")
    if all_losses and min(all_losses) > 0 and max(all_losses) / min(all_losses) > 20:
        ax_loss.set_yscale("log")
    ax_succ.set_xlabel("updates")
    ax_succ.set_ylabel("success rate (any step)")
    ax_succ.set_ylim(-0.03, 1.03)
    if any_loss or any_success:  # one x range for both panels, from the first update
        right = max(ax_loss.get_xlim()[1] if any_loss else 0, ax_succ.get_xlim()[1] if any_success else 0)
        for ax in (ax_loss, ax_succ):
            ax.set_xlim(0, right)
    for ax, has, what in ((ax_loss, any_loss, "no loss logged"), (ax_succ, any_success, "no evaluation logged")):
        if has:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=DPI)
