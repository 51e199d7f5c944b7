"""Success and held-out MSE against updates, per method: the mean over tasks and seeds of the sweep's
`<metric>@<step>` columns (success at any / the final step, held-out MSE, gradient norm), as PNG (matplotlib, Agg) and as a CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from dt_eva.methods.registry import method_label, method_sort_key
from dt_eva.reporting.stats import MeanSE, mean_se
from dt_eva.reporting.study_rows import CURVE_METRICS, StudyKey, StudyRow
from dt_eva.reporting.tables import METRIC_LABELS
from dt_eva.utils.io import atomic_path

Curves = dict[str, dict[str, list[tuple[int, MeanSE]]]]  # metric -> method -> [(step, mean ± s.e.)]


def curve_stats(rows: list[StudyRow], chosen: dict[str, StudyKey]) -> Curves:
    """Per metric and method (its chosen configuration), the mean ± s.e. over (task, seed) at each step."""
    out: Curves = {}
    for metric in CURVE_METRICS:
        per_method = {}
        for method in sorted(chosen, key=method_sort_key):
            by_step: dict[int, list[float]] = {}
            for row in rows:
                if row.key == chosen[method]:
                    for step, value in row.curves[metric].items():
                        by_step.setdefault(step, []).append(value)
            if by_step:
                per_method[method] = [(s, mean_se(by_step[s])) for s in sorted(by_step)]
        if per_method:
            out[metric] = per_method
    return out


def curves_csv(curves: Curves) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["metric", "method", "step", "mean", "se", "n"])
    for metric, per_method in curves.items():
        for method, points in per_method.items():
            for step, stat in points:
                writer.writerow([metric, method, step, f"{stat.mean:.6g}", "" if stat.se is None else f"{stat.se:.6g}",
                                 stat.n])
    return text.getvalue()


def plot_curves(points: dict[str, list[tuple[int, MeanSE]]], metric: str, path: Path) -> Path:
    """One line per method with a band of ± one standard error."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method, series in points.items():
        steps = [s for s, _ in series]
        means = [m.mean for _, m in series]
        ses = [m.se or 0.0 for _, m in series]
        line, = ax.plot(steps, means, marker="o", markersize=3, label=method_label(method))
        ax.fill_between(steps, [m - e for m, e in zip(means, ses)], [m + e for m, e in zip(means, ses)],
                        color=line.get_color(), alpha=0.15, linewidth=0)
    if metric == "grad_norm":
        ax.set_yscale("log")
    ax.set_xlabel("updates")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_title(f"{METRIC_LABELS[metric]} vs updates (mean over tasks and seeds, ± s.e.)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
