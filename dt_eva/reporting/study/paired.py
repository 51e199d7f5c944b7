"""Paired comparisons of two methods over the (task, seed) pairs where both ran: the mean difference, a
bootstrap 95 % interval, and the smallest difference the design could detect.

The bootstrap: the n differences in (task, seed) order, `numpy.random.default_rng(seed)`, one draw of
`rng.integers(0, n, size=(resamples, n))` indices, the mean of each resample, and the 2.5th and 97.5th
percentiles (numpy's default linear interpolation) of those means.

The task-level interval: the same, but each resample first draws the tasks with replacement and then,
within each drawn task, its seeds with replacement (`rng.integers(0, n_tasks, size=(resamples, n_tasks))`,
then for each drawn position `floor(rng.random((resamples, max seeds)) * seeds of that task)`), and takes
the mean of every drawn difference. It treats the tasks as a sample of tasks, so it answers whether a
difference would hold on other tasks; with few tasks it is wider than the pair interval.

The tasks-fixed interval (the study protocol's estimand): the tasks are held fixed and each resample draws,
task by task in (task) order, that task's seeds with replacement (`rng.integers(0, n_t, size=(resamples, n_t))`),
then takes the mean of every drawn difference. It asks whether the difference would hold with other seeds
on these tasks; with one task it is the pair interval.

The minimum detectable difference: 2.8 x the standard error of the paired mean (std(ddof=1) / sqrt(n)),
i.e. (z_0.975 + z_0.8) x s.e.: a true difference this large is found (a 95 % interval that excludes 0)
with about 80 % power, in the normal approximation (with few pairs the t distribution makes it larger).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dt_eva.methods.registry import method_label

RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
MDD_FACTOR = 2.8  # z_0.975 + z_0.80 = 1.96 + 0.84
# Below this many pairs a percentile bootstrap has few distinct resample means and its interval is far too
# narrow: it is shown, but no verdict is drawn from it.
MIN_PAIRS = 5
LOWER_IS_BETTER = {"heldout_loss", "final_loss", "first_success_step"}
DIGITS = {"heldout_loss": 4, "first_success_step": 1}  # decimals a metric is shown with; 3 for the others


def metric_digits(metric: str) -> int:
    """Decimals for differences of `metric` in the study report's tables."""
    return DIGITS.get(metric, 3)

Pair = tuple[str, int]  # (task, seed)


@dataclass
class PairedDifference:
    """`a - b` of `metric` over their common (task, seed) pairs."""

    a: str
    b: str
    metric: str
    n: int
    mean: float | None
    se: float | None
    low: float | None  # bootstrap 95 % interval (None with fewer than 2 pairs)
    high: float | None
    only_a: list[Pair] = field(default_factory=list)  # pairs left out: one method is missing
    only_b: list[Pair] = field(default_factory=list)
    task_low: float | None = None  # task-level bootstrap 95 % interval (None with fewer than 2 tasks)
    task_high: float | None = None
    fixed_low: float | None = None  # tasks-fixed (seeds within tasks) bootstrap 95 % interval
    fixed_high: float | None = None
    diffs: dict[Pair, float] = field(default_factory=dict)  # a - b per common pair

    @property
    def task_resolved(self) -> bool:
        """The task-level interval excludes 0 too."""
        return (self.resolved and self.task_low is not None and self.task_high is not None
                and (self.task_low > 0 or self.task_high < 0))

    @property
    def mdd(self) -> float | None:
        return MDD_FACTOR * self.se if self.se is not None else None

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (and there are enough pairs to trust it)."""
        return (self.n >= MIN_PAIRS and self.low is not None and self.high is not None
                and (self.low > 0 or self.high < 0))

    def verdict(self) -> str:
        """Which method the interval favours, or that it does not resolve the difference."""
        if self.n == 0:
            return "no common pairs"
        if self.low is None:
            return "one pair: no interval"
        if self.n < MIN_PAIRS:
            return f"too few pairs to judge (< {MIN_PAIRS})"
        if not self.resolved:
            return "not resolved (interval includes 0)"
        higher = method_label(self.a) if self.low > 0 else method_label(self.b)
        verdict = f"resolved: {higher} higher" + (" (worse)" if self.metric in LOWER_IS_BETTER else "")
        if self.task_low is not None and not self.task_resolved:
            verdict += "; not at the task level"
        return verdict

    def task_interval(self, digits: int) -> str:
        if self.task_low is None or self.task_high is None:
            return "-"
        return f"[{self.task_low:+.{digits}f}, {self.task_high:+.{digits}f}]"


def bootstrap_interval(diffs: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `diffs` (resampling the pairs with replacement)."""
    n = len(diffs)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def resample_tasks_then_seeds(sizes: np.ndarray, resamples: int, seed: int):
    """The two-level bootstrap's draws, one task slot at a time: for slot j of every resample, the drawn task
    (shape [resamples]), the drawn seed indices within it ([resamples, max(sizes)]) and which of those count
    ([resamples, max(sizes)]: a drawn task keeps its own number of seeds). `sizes[t]`: task t's seeds."""
    rng = np.random.default_rng(seed)
    n_tasks, width = len(sizes), int(sizes.max())
    tasks = rng.integers(0, n_tasks, size=(resamples, n_tasks))
    for j in range(n_tasks):
        task = tasks[:, j]
        n = sizes[task][:, None]
        picked = np.floor(rng.random((resamples, width)) * n).astype(int)
        yield task, picked, np.arange(width)[None, :] < n


def task_bootstrap_interval(diffs_by_task: list[np.ndarray], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                            level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the mean difference resampling tasks, then seeds within each drawn task."""
    sizes = np.array([len(d) for d in diffs_by_task])
    padded = np.zeros((len(diffs_by_task), sizes.max()))
    for i, d in enumerate(diffs_by_task):
        padded[i, :len(d)] = d
    total, count = np.zeros(resamples), np.zeros(resamples)
    for task, picked, used in resample_tasks_then_seeds(sizes, resamples, seed):
        total += np.where(used, padded[task[:, None], picked], 0.0).sum(axis=1)
        count += used.sum(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(total / count, [tail, 100 - tail])
    return float(low), float(high)


def seeds_within_tasks_interval(diffs_by_task: list[np.ndarray], resamples: int = RESAMPLES,
                                seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the mean difference with the tasks held fixed: seeds resampled within each task."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for d in diffs_by_task:
        total += d[rng.integers(0, len(d), size=(resamples, len(d)))].sum(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(total / sum(len(d) for d in diffs_by_task), [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(a: str, b: str, metric: str, values_a: dict[Pair, float], values_b: dict[Pair, float],
                      resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> PairedDifference:
    """`a - b` over the pairs both have (in (task, seed) order); the pairs only one has are listed."""
    common = sorted(set(values_a) & set(values_b))
    only_a, only_b = sorted(set(values_a) - set(values_b)), sorted(set(values_b) - set(values_a))
    diffs = np.array([values_a[p] - values_b[p] for p in common], dtype=np.float64)
    n = len(diffs)
    if n == 0:
        return PairedDifference(a, b, metric, 0, None, None, None, None, only_a, only_b)
    mean = float(diffs.mean())
    if n == 1:
        return PairedDifference(a, b, metric, 1, mean, None, None, None, only_a, only_b,
                                diffs={common[0]: mean})
    se = float(diffs.std(ddof=1)) / math.sqrt(n)
    low, high = bootstrap_interval(diffs, resamples, seed)
    tasks = sorted({task for task, _ in common})
    by_task = [np.array([values_a[p] - values_b[p] for p in common if p[0] == t]) for t in tasks]
    task_low = task_high = None
    if len(tasks) >= 2:
        task_low, task_high = task_bootstrap_interval(by_task, resamples, seed)
    fixed_low, fixed_high = seeds_within_tasks_interval(by_task, resamples, seed)
    return PairedDifference(a, b, metric, n, mean, se, low, high, only_a, only_b, task_low, task_high,
                            fixed_low, fixed_high, dict(zip(common, diffs.tolist())))
