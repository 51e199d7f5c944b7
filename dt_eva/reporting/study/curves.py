"""Success and held-out MSE against updates, per method: the mean over tasks and seeds of the sweep's
`<metric>@<step>` columns (success at any / the final step, held-out MSE, gradient norm), as PNG (matplotlib, Agg) and as a CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from dt_eva.methods.registry import method_label, method_sort_key
from dt_eva.reporting.common.figures import pyplot, save_figure
from dt_eva.reporting.common.stats import MeanSE, mean_se
from dt_eva.reporting.common.tables import METRIC_LABELS
from dt_eva.reporting.study.rows import CURVE_METRICS, StudyKey, StudyRow

Curves = dict[str, dict[str, list[tuple[int, MeanSE]]]]  # metric -> config label -> [(step, mean ± s.e.)]


def curve_keys(rows: list[StudyRow], chosen: dict[str, StudyKey]) -> dict[str, StudyKey]:
    """The configurations to draw, by label: each method's chosen one; every configuration instead when
    the sweep varies a key other than the learning rate (e.g. EVA's variants), since those are what it
    compares."""
    keys = sorted({r.key for r in rows}, key=lambda k: (method_sort_key(k.method), k.describe(True)))
    if not any(k.extra for k in keys):
        return {method_label(m): chosen[m] for m in sorted(chosen, key=method_sort_key)}
    return {f"{method_label(k.method)}, {k.describe()}": k for k in keys}


def curve_stats(rows: list[StudyRow], keys: dict[str, StudyKey]) -> Curves:
    """Per metric and configuration (`curve_keys`), the mean ± s.e. over (task, seed) at each step."""
    out: Curves = {}
    for metric in CURVE_METRICS:
        per_label = {}
        for label, key in keys.items():
            by_step: dict[int, list[float]] = {}
            for row in rows:
                if row.key == key:
                    for step, value in row.curves[metric].items():
                        by_step.setdefault(step, []).append(value)
            if by_step:
                per_label[label] = [(s, mean_se(by_step[s])) for s in sorted(by_step)]
        if per_label:
            out[metric] = per_label
    return out


def curves_csv(curves: Curves) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["metric", "config", "step", "mean", "se", "n"])
    for metric, per_label in curves.items():
        for label, points in per_label.items():
            for step, stat in points:
                writer.writerow([metric, label, step, f"{stat.mean:.6g}", "" if stat.se is None else f"{stat.se:.6g}",
                                 stat.n])
    return text.getvalue()


def plot_curves(points: dict[str, list[tuple[int, MeanSE]]], metric: str, path: Path) -> Path:
    """One line per method with a band of ± one standard error."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.0))
    for label, series in points.items():
        steps = [s for s, _ in series]
        means = [m.mean for _, m in series]
        ses = [m.se or 0.0 for _, m in series]
        line, = ax.plot(steps, means, marker="o", markersize=3, label=label)
        ax.fill_between(steps, [m - e for m, e in zip(means, ses)], [m + e for m, e in zip(means, ses)],
                        color=line.get_color(), alpha=0.15, linewidth=0)
    if metric == "grad_norm":
        ax.set_yscale("log")
    return save_updates_figure(fig, ax, METRIC_LABELS[metric],
                               f"{METRIC_LABELS[metric]} vs updates (mean over tasks and seeds, ± s.e.)", path)


def save_updates_figure(fig, ax, ylabel: str, title: str, path: Path, xlabel: str = "updates") -> Path:
    """Label an against-updates plot, add its grid and legend, and write it as a PNG atomically."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
