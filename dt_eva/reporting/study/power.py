"""Power of the paired design, from the observed spread of the pair differences: the minimum detectable
difference at 80 % power (alpha 0.05, two-sided, paired) and the pairs a given difference would need.

Normal approximation: MDE = (z_{1-alpha/2} + z_{power}) x sd / sqrt(n) (2.80 x s.e., as the comparisons'
"Min. detectable"). t-based: MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) x sd / sqrt(n), larger with few
pairs. Pairs needed for a difference delta: the smallest n >= 2 whose t-based MDE is at most delta.
sd: the sample s.d. (ddof 1) of the n pair differences. The within-task s.d. (pooled over tasks, n - tasks
degrees of freedom) is what the tasks-fixed estimand's spread rests on; it is shown beside it.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import numpy as np

from dt_eva.methods.registry import method_label
from dt_eva.reporting.common.tables import METRIC_LABELS
from dt_eva.reporting.study.paired import PairedDifference

ALPHA, POWER = 0.05, 0.80
DEFAULT_DELTAS = (0.01, 0.02, 0.04, 0.10)
POWER_METRICS = ("success_any", "success_final")  # deltas are differences in success rate
MAX_PAIRS = 1_000_000


def check_deltas(deltas: list[float]) -> list[float]:
    """The differences to size the design for: success-rate differences in (0, 1]."""
    for d in deltas:
        if not (isinstance(d, (int, float)) and math.isfinite(d) and 0 < d <= 1):
            raise ValueError(f"--power-delta {d}: not a difference in success rate; give a number in (0, 1], "
                             "e.g. --power-delta 0.04")
    return sorted(set(float(d) for d in deltas))


def mde_normal(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    from scipy import stats

    return (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * sd / math.sqrt(n)


def mde_t(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    from scipy import stats

    return (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n)


def pairs_needed(sd: float, delta: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Smallest n >= 2 with mde_t(sd, n) <= delta (bisection: the MDE falls with n); None past MAX_PAIRS."""
    if sd == 0:
        return 2
    low, high = 2, MAX_PAIRS
    if mde_t(sd, high, alpha, power) > delta:
        return None
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if mde_t(sd, mid, alpha, power) > delta else (low, mid)
    return low


def within_task_sd(d: PairedDifference) -> float | None:
    """Pooled s.d. of the differences around their task's mean (None without a spare degree of freedom)."""
    by_task: dict[str, list[float]] = {}
    for (task, _), value in d.diffs.items():
        by_task.setdefault(task, []).append(value)
    dof = d.n - len(by_task)
    if dof < 1:
        return None
    return math.sqrt(sum(float(np.sum((np.array(v) - np.mean(v)) ** 2)) for v in by_task.values()) / dof)


@dataclass
class PowerRow:
    diff: PairedDifference
    sd: float
    within_sd: float | None
    mde_normal: float
    mde_t: float
    needed: dict[float, int | None]


def power_rows(diffs: list[PairedDifference], deltas: list[float]) -> list[PowerRow]:
    rows = []
    for d in diffs:
        if d.metric in POWER_METRICS and d.n >= 2 and d.se is not None:
            sd = d.se * math.sqrt(d.n)
            rows.append(PowerRow(d, sd, within_task_sd(d), mde_normal(sd, d.n), mde_t(sd, d.n),
                                 {delta: pairs_needed(sd, delta) for delta in deltas}))
    return rows


def power_markdown(rows: list[PowerRow], deltas: list[float]) -> str:
    head = " | ".join(f"Pairs for {x:g}" for x in deltas)
    lines = ["### Power of the paired design", "",
             f"| Comparison | Metric | Pairs | Pair s.d. | Within-task s.d. | MDE (normal) | MDE (t) | {head} |",
             "|---|---|:-:|:-:|:-:|:-:|:-:|" + ":-:|" * len(deltas)]
    for r in rows:
        d = r.diff
        within = "-" if r.within_sd is None else f"{r.within_sd:.3f}"
        needed = " | ".join("-" if n is None else f"{n:,}" for n in r.needed.values())
        lines.append(f"| {method_label(d.a)} − {method_label(d.b)} | {METRIC_LABELS[d.metric]} | {d.n} | {r.sd:.3f} | "
                     f"{within} | {r.mde_normal:.3f} | {r.mde_t:.3f} | {needed} |")
    lines += ["", (f"Alpha {ALPHA} two-sided, {POWER:.0%} power, paired. MDE (normal) = (z_0.975 + z_0.80) x sd / "
                   "sqrt(n) = 2.80 x sd / sqrt(n); MDE (t) = (t_0.975,n-1 + t_0.80,n-1) x sd / sqrt(n). sd: the "
                   "s.d. of the pair differences (ddof 1). Pairs for delta: the smallest number of pairs whose "
                   "t-based MDE is at most delta, if the spread stays as observed (- : more than "
                   f"{MAX_PAIRS:,}). Within-task s.d.: the differences' spread around their task's mean (pooled), "
                   "the part of the spread the tasks-fixed estimand keeps; when it is smaller, the design is "
                   "somewhat more powerful for that estimand than the pair s.d. says.")]
    return "\n".join(lines) + "\n"


def power_csv(rows: list[PowerRow]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["a", "b", "metric", "pairs", "sd", "within_task_sd", "mde_normal", "mde_t", "delta",
                     "pairs_needed"])
    for r in rows:
        d = r.diff
        for delta, n in r.needed.items():
            writer.writerow([d.a, d.b, d.metric, d.n, f"{r.sd:.6g}", "" if r.within_sd is None else f"{r.within_sd:.6g}",
                             f"{r.mde_normal:.6g}", f"{r.mde_t:.6g}", f"{delta:g}", "" if n is None else n])
    return text.getvalue()
