"""Tests of the paired differences: a sign-flip permutation test of the mean difference and the Wilcoxon
signed-rank test (both `scipy.stats`), each with Holm's correction over the comparisons of one metric (the
protocol's family: EVA − LoRA, EVA+DoRA − DoRA, EVA − FFT), beside the protocol's estimand, the mean over
pairs with its tasks-fixed bootstrap interval (`paired.seeds_within_tasks_interval`).

The sign-flip test: under "no difference" each pair's difference is as likely to have either sign, so the
null distribution of the mean is that of the mean with random signs; `scipy.stats.permutation_test` with
`permutation_type='samples'` on the differences alone flips the signs. With 2^n <= PERMUTATIONS it
enumerates every flip (exact); beyond that it draws PERMUTATIONS random flips (Monte Carlo, seeded).
Two-sided p = 2 x min(P(null <= observed), P(null >= observed)), at most 1.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from dt_eva.methods.registry import method_label
from dt_eva.reporting.paired import BOOTSTRAP_SEED, RESAMPLES, PairedDifference
from dt_eva.reporting.tables import METRIC_LABELS

PERMUTATIONS = 100_000  # 2^16 < 100,000: up to 16 pairs the test enumerates every sign flip


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest is multiplied by
    (m - k + 1), made non-decreasing along that order, and capped at 1."""
    m = len(pvalues)
    adjusted, running = [0.0] * m, 0.0
    for k, i in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def sign_flip_test(diffs: np.ndarray, resamples: int = PERMUTATIONS, seed: int = BOOTSTRAP_SEED) -> tuple[float, bool]:
    """Two-sided p-value of the mean difference under random sign flips, and whether it was exact."""
    from scipy import stats

    result = stats.permutation_test((diffs,), lambda d, axis: np.mean(d, axis=axis), permutation_type="samples",
                                    vectorized=True, n_resamples=resamples, alternative="two-sided",
                                    rng=np.random.default_rng(seed))
    return float(result.pvalue), 2 ** len(diffs) <= resamples


def wilcoxon_test(diffs: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value (zero differences dropped, scipy's default); None when
    every difference is zero."""
    from scipy import stats

    if not np.any(diffs != 0):
        return None
    return float(stats.wilcoxon(diffs).pvalue)


@dataclass
class PairedTest:
    diff: PairedDifference
    permutation_p: float
    exact: bool
    wilcoxon_p: float | None
    permutation_holm: float = 1.0
    wilcoxon_holm: float | None = None
    family: int = 1  # comparisons in the Holm family


def paired_tests(diffs: list[PairedDifference]) -> list[PairedTest]:
    """A test per difference with at least 2 pairs; Holm over the comparisons of each metric."""
    tests = []
    for d in diffs:
        if d.n >= 2:
            values = np.array(list(d.diffs.values()))
            tests.append(PairedTest(d, *sign_flip_test(values), wilcoxon_test(values)))
    for metric in dict.fromkeys(t.diff.metric for t in tests):
        family = [t for t in tests if t.diff.metric == metric]
        for t, p in zip(family, holm([t.permutation_p for t in family])):
            t.permutation_holm, t.family = p, len(family)
        with_w = [t for t in family if t.wilcoxon_p is not None]
        for t, p in zip(with_w, holm([t.wilcoxon_p for t in with_w])):  # type: ignore[misc]
            t.wilcoxon_holm = p
    return tests


def _p(value: float | None) -> str:
    return "-" if value is None else (f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}")


def tests_markdown(tests: list[PairedTest]) -> str:
    lines = ["### The protocol's estimand and tests of the paired differences", "",
             ("| Comparison | Metric | Pairs | Mean difference | Tasks-fixed interval | Sign-flip p | Holm | "
              "Wilcoxon p | Holm |"), "|---|---|:-:|:-:|:-:|:-:|:-:|:-:|:-:|"]
    for t in tests:
        d, digits = t.diff, 4 if t.diff.metric == "heldout_loss" else 3
        interval = f"[{d.fixed_low:+.{digits}f}, {d.fixed_high:+.{digits}f}]"
        flag = "" if t.exact else " (MC)"
        lines.append(f"| {method_label(d.a)} − {method_label(d.b)} | {METRIC_LABELS[d.metric]} | {d.n} | "
                     f"{d.mean:+.{digits}f} | {interval} | {_p(t.permutation_p)}{flag} | {_p(t.permutation_holm)} | "
                     f"{_p(t.wilcoxon_p)} | {_p(t.wilcoxon_holm)} |")
    lines += ["", ("Mean difference over the (task, seed) pairs; tasks-fixed interval: the protocol's estimand, a "
                   f"percentile bootstrap that keeps the tasks and resamples the seeds within each task ({RESAMPLES:,} "
                   f"resamples, numpy seed {BOOTSTRAP_SEED}). Sign-flip p: two-sided permutation test of the mean "
                   "difference (scipy.stats.permutation_test, permutation_type='samples'): every one of the 2^n sign "
                   f"flips when 2^n <= {PERMUTATIONS:,}, else {PERMUTATIONS:,} random flips (MC, seed "
                   f"{BOOTSTRAP_SEED}). Wilcoxon p: two-sided signed-rank test (scipy.stats.wilcoxon; zero "
                   "differences dropped). Holm: Holm's step-down correction over the comparisons of the same metric "
                   "(the protocol corrects the three comparisons of success at any step); a difference is "
                   "significant at 0.05 when its Holm p is below 0.05. An exact two-sided sign-flip p is at least "
                   "2 / 2^n: 0.0625 with 5 pairs, so very small designs cannot reach 0.05.")]
    return "\n".join(lines) + "\n"


def tests_csv(tests: list[PairedTest]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["a", "b", "metric", "pairs", "mean", "fixed_ci_low", "fixed_ci_high", "permutation_p",
                     "permutation_exact", "permutation_holm", "wilcoxon_p", "wilcoxon_holm", "holm_family"])
    for t in tests:
        d = t.diff
        writer.writerow([d.a, d.b, d.metric, d.n, *(("" if v is None else f"{v:.6g}") for v in (
            d.mean, d.fixed_low, d.fixed_high, t.permutation_p)), t.exact,
            *(("" if v is None else f"{v:.6g}") for v in (t.permutation_holm, t.wilcoxon_p, t.wilcoxon_holm)),
            t.family])
    return text.getvalue()
