"""How the compared methods learn, not only where they end: the paired differences at every evaluated
step of the budget (does EVA get there faster?) and the gradient norm over the first updates (the
paper's figure-2 claim that EVA's gradients start larger), both from a sweep's `<metric>@<step>` columns."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from dt_eva.methods.registry import method_label
from dt_eva.reporting.common.figures import pyplot
from dt_eva.reporting.common.paper import COMPARISONS
from dt_eva.reporting.common.stats import MeanSE, mean_se
from dt_eva.reporting.common.tables import METRIC_LABELS
from dt_eva.reporting.study.curves import save_updates_figure
from dt_eva.reporting.study.paired import MIN_PAIRS, Pair, PairedDifference, metric_digits, paired_difference
from dt_eva.reporting.study.rows import StudyKey, StudyRow

ALONG_METRICS = ("heldout_loss", "success_any")


def _curve_values(rows: list[StudyRow], key: StudyKey, metric: str, step: int) -> dict[Pair, float]:
    return {(r.task, r.seed): r.curves[metric][step] for r in rows if r.key == key and step in r.curves[metric]}


def _steps(rows: list[StudyRow], keys: tuple[StudyKey, StudyKey], metric: str) -> list[int]:
    """The steps at which both configurations logged `metric` in at least one run."""
    per_key = [{s for r in rows if r.key == k for s in r.curves[metric]} for k in keys]
    return sorted(per_key[0] & per_key[1])


def along_budget(rows: list[StudyRow], chosen: dict[str, StudyKey]) -> list[tuple[int, PairedDifference]]:
    """(step, a - b) for every comparison, metric of `ALONG_METRICS` and step both methods logged."""
    out = []
    for a, b in COMPARISONS:
        if a not in chosen or b not in chosen:
            continue
        keys = (chosen[a], chosen[b])
        for metric in ALONG_METRICS:
            for step in _steps(rows, keys, metric):
                values = [_curve_values(rows, k, metric, step) for k in keys]
                out.append((step, paired_difference(a, b, metric, *values)))
    return out


def along_budget_markdown(diffs: list[tuple[int, PairedDifference]]) -> str:
    lines = ["### Paired differences along the budget", "",
             ("| Comparison | Metric | Update | Pairs | Mean difference | 95 % bootstrap interval | Task-level interval "
              "| Verdict |"), "|---|---|--:|:-:|:-:|:-:|:-:|---|"]
    for step, d in diffs:
        digits = metric_digits(d.metric)
        mean = "-" if d.mean is None else f"{d.mean:+.{digits}f}"
        interval = "-" if d.low is None else f"[{d.low:+.{digits}f}, {d.high:+.{digits}f}]"
        lines.append(f"| {method_label(d.a)} − {method_label(d.b)} | {METRIC_LABELS[d.metric]} | {step} | {d.n} | "
                     f"{mean} | {interval} | {d.task_interval(digits)} | {d.verdict()} |")
    lines += ["", ("The same paired bootstrap as above, at each evaluated (or probed) update. A method that "
                   "learns faster shows a difference early in the budget that shrinks later.")]
    return "\n".join(lines) + "\n"


def along_budget_csv(diffs: list[tuple[int, PairedDifference]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["a", "b", "metric", "step", "pairs", "mean", "se", "ci_low", "ci_high", "resolved",
                     "task_ci_low", "task_ci_high", "task_resolved"])
    for step, d in diffs:
        writer.writerow([d.a, d.b, d.metric, step, d.n, *(("" if v is None else f"{v:.6g}")
                                                          for v in (d.mean, d.se, d.low, d.high)), d.resolved,
                         *("" if v is None else f"{v:.6g}" for v in (d.task_low, d.task_high)), d.task_resolved])
    return text.getvalue()


def plot_along_budget(diffs: list[tuple[int, PairedDifference]], metric: str, path: Path) -> Path:
    """The paired difference of `metric` against updates, one line per comparison, its 95 % bootstrap
    interval as a band, and zero marked: where the band leaves zero the study resolves a difference."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.0))
    for a, b in dict.fromkeys((d.a, d.b) for _, d in diffs if d.metric == metric):
        points = [(step, d) for step, d in diffs if (d.a, d.b, d.metric) == (a, b, metric) and d.mean is not None]
        steps = [s for s, _ in points]
        line, = ax.plot(steps, [d.mean for _, d in points], marker="o", markersize=3,
                        label=f"{method_label(a)} − {method_label(b)}")
        banded = [(s, d) for s, d in points if d.low is not None]
        ax.fill_between([s for s, _ in banded], [d.low for _, d in banded], [d.high for _, d in banded],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=0.8)
    return save_updates_figure(fig, ax, f"difference in {METRIC_LABELS[metric]}",
                               f"Paired difference in {METRIC_LABELS[metric]} (mean over (task, seed), 95 % bootstrap)",
                               path)


@dataclass
class GradNormRatio:
    """a / b of the gradient norm at the first logged step: the geometric mean of the paired ratios."""

    step: int
    a_stats: MeanSE
    b_stats: MeanSE
    log_diff: PairedDifference  # log(a) - log(b) over the pairs

    def ratio(self, value: float | None) -> float | None:
        return None if value is None else math.exp(value)


def grad_norm_ratios(rows: list[StudyRow], chosen: dict[str, StudyKey]) -> list[GradNormRatio]:
    """For every comparison whose runs logged `grad_norm`, the ratio at the first step both logged (the
    mean over the updates up to it: `train.log_every`)."""
    out = []
    for a, b in COMPARISONS:
        if a not in chosen or b not in chosen:
            continue
        keys = (chosen[a], chosen[b])
        steps = _steps(rows, keys, "grad_norm")
        if not steps:
            continue
        values = [_curve_values(rows, k, "grad_norm", steps[0]) for k in keys]
        logs = [{p: math.log(v) for p, v in vals.items() if v > 0} for vals in values]
        out.append(GradNormRatio(steps[0], mean_se(values[0].values()), mean_se(values[1].values()),
                                 paired_difference(a, b, "grad_norm", *logs)))
    return out


def grad_norm_markdown(ratios: list[GradNormRatio]) -> str:
    lines = ["### Gradient norm over the first updates (the paper's figure-2 claim)", "",
             "| Comparison | Updates | Pairs | First method | Second method | Ratio (geometric mean) "
             "| 95 % bootstrap interval |", "|---|:-:|:-:|:-:|:-:|:-:|:-:|"]
    for g in ratios:
        d = g.log_diff
        ratio = "-" if d.mean is None else f"{g.ratio(d.mean):.2f}x"
        interval = "-" if d.low is None else f"[{g.ratio(d.low):.2f}x, {g.ratio(d.high):.2f}x]"
        lines.append(f"| {method_label(d.a)} / {method_label(d.b)} | 1-{g.step} | {d.n} | {g.a_stats.format(4)} | "
                     f"{g.b_stats.format(4)} | {ratio} | {interval} |")
    lines += ["", ("Gradient norm: the global norm of the trained parameters' gradients before clipping, "
                   "averaged over the first logged window of updates; mean ± s.e. over (task, seed). Ratio: "
                   "exp of the mean paired difference of the logs, with the bootstrap interval of that mean "
                   f"mapped through exp (no verdict below {MIN_PAIRS} pairs).")]
    return "\n".join(lines) + "\n"


def grad_norm_csv(ratios: list[GradNormRatio]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["a", "b", "steps", "pairs", "a_mean", "b_mean", "ratio", "ci_low", "ci_high"])
    for g in ratios:
        d = g.log_diff
        writer.writerow([d.a, d.b, g.step, d.n, f"{g.a_stats.mean:.6g}", f"{g.b_stats.mean:.6g}",
                         *(("" if v is None else f"{g.ratio(v):.6g}") for v in (d.mean, d.low, d.high))])
    return text.getvalue()
