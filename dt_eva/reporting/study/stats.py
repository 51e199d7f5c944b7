"""The study protocol's tests of the paired differences (docs/results.md, study II): the sign-flip
permutation test of the mean difference and the Wilcoxon signed-rank test (both `scipy.stats`), Holm's
correction over the comparisons of the primary metric (EVA − LoRA, EVA+DoRA − DoRA, EVA − FFT on success
at any step), and the verdict words fixed in advance, beside the estimand: the mean over pairs with its
seeds-within-tasks bootstrap interval (`paired.seeds_within_tasks_interval`), the pair and task-level
intervals next to it.

The sign-flip test: under "no difference" each pair's difference is as likely to have either sign, so the
null distribution of the mean is that of the mean with random signs; `scipy.stats.permutation_test` with
`permutation_type='samples'` on the differences alone flips the signs. Up to EXACT_PATTERNS (2^20) sign
patterns it enumerates every one (exact); beyond, MC_DRAWS random patterns (Monte Carlo, seeded).
Two-sided p = 2 x min(P(null <= observed), P(null >= observed)), at most 1.

Secondary metrics get the same tests unadjusted and are called exploratory (the protocol's rule).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from dt_eva.methods.registry import method_label
from dt_eva.reporting.common.tables import METRIC_LABELS
from dt_eva.reporting.study.paired import BOOTSTRAP_SEED, MIN_PAIRS, RESAMPLES, PairedDifference, metric_digits

EXACT_PATTERNS = 2 ** 20  # up to 20 pairs every sign pattern is enumerated
MC_DRAWS = 100_000
PRIMARY = "success_any"
ALPHA = 0.05
MARGIN = 0.04  # the protocol's "no difference as large as 0.04"
BATCH = 2 ** 16  # sign patterns scored at a time (bounds the memory of the exact test)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest is multiplied by
    (m - k + 1), made non-decreasing along that order, and capped at 1."""
    m = len(pvalues)
    adjusted, running = [0.0] * m, 0.0
    for k, i in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def sign_flip_test(diffs: np.ndarray, seed: int = BOOTSTRAP_SEED) -> tuple[float, bool]:
    """Two-sided p-value of the mean difference under random sign flips, and whether it was exact."""
    from scipy import stats

    exact = 2 ** len(diffs) <= EXACT_PATTERNS
    result = stats.permutation_test((diffs,), lambda d, axis: np.mean(d, axis=axis), permutation_type="samples",
                                    vectorized=True, n_resamples=2 ** len(diffs) if exact else MC_DRAWS,
                                    alternative="two-sided", batch=BATCH, rng=np.random.default_rng(seed))
    return float(result.pvalue), exact


def wilcoxon_test(diffs: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value, zero differences dropped (scipy's default); exact without
    ties or zeros (scipy's choice up to 50 pairs), else the tie-corrected normal approximation (scipy's
    `auto` would run an unseeded permutation test there: another p on every run). None when every
    difference is zero."""
    from scipy import stats

    nonzero = diffs[diffs != 0]
    if len(nonzero) == 0:
        return None
    tied = len(np.unique(np.abs(nonzero))) < len(nonzero) or len(nonzero) < len(diffs)
    return float(stats.wilcoxon(diffs, method="approx" if tied else "auto").pvalue)


@dataclass
class PairedTest:
    diff: PairedDifference
    permutation_p: float
    exact: bool
    wilcoxon_p: float | None
    permutation_holm: float | None = None  # primary metric only
    wilcoxon_holm: float | None = None
    family: int = 0  # primary comparisons in the Holm family

    @property
    def primary(self) -> bool:
        return self.diff.metric == PRIMARY

    def verdict(self) -> str:
        """The protocol's words: helps / hurts (Holm p < 0.05), no difference as large as 0.04 (the
        seeds-within-tasks interval inside (-0.04, 0.04)), inconclusive; secondary metrics: exploratory."""
        d = self.diff
        if not self.primary:
            return "exploratory"
        if d.n < MIN_PAIRS:
            return f"too few pairs to judge (< {MIN_PAIRS})"
        if self.permutation_holm is not None and self.permutation_holm < ALPHA:
            return "EVA helps" if (d.mean or 0) > 0 else "EVA hurts"
        if d.fixed_low is not None and d.fixed_high is not None and -MARGIN < d.fixed_low and d.fixed_high < MARGIN:
            return f"no difference as large as {MARGIN:g}"
        return "inconclusive"


def paired_tests(diffs: list[PairedDifference]) -> list[PairedTest]:
    """A test per difference with at least 2 pairs; Holm over the primary metric's comparisons."""
    tests = []
    for d in diffs:
        if d.n >= 2:
            values = np.array(list(d.diffs.values()))
            tests.append(PairedTest(d, *sign_flip_test(values), wilcoxon_test(values)))
    family = [t for t in tests if t.primary]
    for t, p in zip(family, holm([t.permutation_p for t in family])):
        t.permutation_holm, t.family = p, len(family)
    with_w = [t for t in family if t.wilcoxon_p is not None]
    for t, p in zip(with_w, holm([t.wilcoxon_p for t in with_w])):  # type: ignore[misc]
        t.wilcoxon_holm = p
    return tests


def _p(value: float | None) -> str:
    return "-" if value is None else (f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}")


def _interval(low: float | None, high: float | None, digits: int) -> str:
    return "-" if low is None or high is None else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def _line(t: PairedTest) -> str:
    d, digits = t.diff, metric_digits(t.diff.metric)
    tasks = len({task for task, _ in d.diffs})
    cells = [f"{method_label(d.a)} − {method_label(d.b)}", METRIC_LABELS[d.metric], str(d.n), str(tasks),
             f"{d.mean:+.{digits}f}", _interval(d.fixed_low, d.fixed_high, digits), _interval(d.low, d.high, digits),
             _interval(d.task_low, d.task_high, digits), _p(t.permutation_p) + ("" if t.exact else " (MC)"),
             _p(t.permutation_holm), _p(t.wilcoxon_p), _p(t.wilcoxon_holm), t.verdict()]
    return "| " + " | ".join(cells) + " |"


def tests_markdown(tests: list[PairedTest]) -> str:
    head = ("| Comparison | Metric | Pairs | Tasks | Mean difference | Seeds-within-tasks 95 % (protocol) | "
            "Pair 95 % | Task-level 95 % | Sign-flip p | Holm | Wilcoxon p | Holm | Verdict |")
    rule = "|---|---|:-:|:-:|:-:|:-:|:-:|:-:|:-:|:-:|:-:|:-:|---|"
    primary = [t for t in tests if t.primary]
    family = primary[0].family if primary else 0
    lines = ["### The protocol's estimand, tests and verdicts", ""]
    if primary:
        lines += [f"Primary metric ({METRIC_LABELS[PRIMARY]}), Holm over {family} comparison(s):", "", head, rule]
        lines += [_line(t) for t in primary] + [""]
    secondary = [t for t in tests if not t.primary]
    if secondary:
        lines += ["Secondary metrics (exploratory: unadjusted p-values, no Holm):", "", head, rule]
        lines += [_line(t) for t in secondary] + [""]
    lines.append(
        "Mean difference over the (task, seed) pairs both methods finished. Seeds-within-tasks interval: the "
        "protocol's, a 95 % percentile bootstrap that keeps the tasks and resamples the seeds within each task "
        f"({RESAMPLES:,} resamples, numpy seed {BOOTSTRAP_SEED}); beside it the pair bootstrap and the task-level "
        "bootstrap (tasks, then seeds within them). Sign-flip p: two-sided permutation test of the mean difference "
        "(scipy.stats.permutation_test, permutation_type='samples'): every one of the 2^n sign patterns up to "
        f"2^20, else {MC_DRAWS:,} random patterns (MC, seed {BOOTSTRAP_SEED}). Wilcoxon p: two-sided signed-rank "
        "test (scipy.stats.wilcoxon; zero differences dropped; exact without ties, else the tie-corrected normal "
        "approximation). Holm: Holm's step-down correction over the primary "
        "metric's comparisons present here (the protocol's family is EVA − LoRA, EVA+DoRA − DoRA and EVA − FFT). "
        f"Verdicts (fixed in advance): *EVA helps* / *hurts* when the Holm-adjusted sign-flip p < {ALPHA}, by the "
        f"sign of the mean; *no difference as large as {MARGIN:g}* when the seeds-within-tasks interval lies inside "
        f"(−{MARGIN:g}, +{MARGIN:g}); *inconclusive* otherwise; fewer than {MIN_PAIRS} pairs: no verdict. An exact "
        "two-sided sign-flip p is at least 2 / 2^n (0.0625 with 5 pairs).")
    return "\n".join(lines) + "\n"


def tests_csv(tests: list[PairedTest]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["a", "b", "metric", "pairs", "mean", "fixed_ci_low", "fixed_ci_high", "pair_ci_low",
                     "pair_ci_high", "task_ci_low", "task_ci_high", "permutation_p", "permutation_exact",
                     "permutation_holm", "wilcoxon_p", "wilcoxon_holm", "holm_family", "verdict"])
    for t in tests:
        d = t.diff
        numbers = (d.mean, d.fixed_low, d.fixed_high, d.low, d.high, d.task_low, d.task_high, t.permutation_p)
        writer.writerow([d.a, d.b, d.metric, d.n, *(("" if v is None else f"{v:.6g}") for v in numbers), t.exact,
                         *(("" if v is None else f"{v:.6g}") for v in (t.permutation_holm, t.wilcoxon_p,
                                                                        t.wilcoxon_holm)),
                         t.family if t.primary else "", t.verdict()])
    return text.getvalue()
