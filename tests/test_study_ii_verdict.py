"""Study II's published numbers against its committed data: the three primary-metric differences and their
seeds-within-tasks intervals that the demo prints (and the README and docs/results.md repeat) must be what
the committed `results.csv` files give. A re-run of a phase, an edited results.csv or a stale verdict line
fails here."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from dt_eva.experiments.demo import STUDY_VERDICT
from dt_eva.reporting.study.paired import seeds_within_tasks_interval

STUDY = Path(__file__).resolve().parent.parent / "studies" / "cw10-ii"
# comparison in the verdict line -> (phase folder of the first method, method, phase folder of the second, method)
COMPARISONS = {
    "EVA - LoRA": ("main-lora-eva", "eva", "main-lora-eva", "lora"),
    "EVA+DoRA - DoRA": ("main-dora", "eva_dora", "main-dora", "dora"),
    "EVA - FFT": ("main-lora-eva", "eva", "main-fft", "fft"),
}
NUMBER = r"([+-]?\d\.\d{3})"


def success_any(phase: str, method: str) -> dict[tuple[str, int], float]:
    """(task, seed) -> success at any step of the phase's finished runs of `method`."""
    with open(STUDY / phase / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "done" and r["method"] == method]
    return {(r["task"], int(r["seed"])): float(r["success_any"]) for r in rows}


def published(comparison: str) -> tuple[float, float, float]:
    match = re.search(re.escape(comparison) + rf" {NUMBER} \[{NUMBER}, {NUMBER}\]", STUDY_VERDICT)
    assert match, f"the demo's verdict line does not state {comparison}: {STUDY_VERDICT}"
    return tuple(float(x) for x in match.groups())


@pytest.mark.parametrize("comparison", sorted(COMPARISONS))
def test_published_difference_and_interval_recompute_from_the_committed_results(comparison):
    phase_a, method_a, phase_b, method_b = COMPARISONS[comparison]
    a, b = success_any(phase_a, method_a), success_any(phase_b, method_b)
    assert set(a) == set(b) and len(a) == 96, "the study's 8 tasks x 12 seeds must all be paired"
    by_task = defaultdict(list)
    for task, seed in sorted(a):
        by_task[task].append(a[task, seed] - b[task, seed])
    diffs = [np.array(by_task[t]) for t in sorted(by_task)]
    mean = float(np.concatenate(diffs).mean())
    low, high = seeds_within_tasks_interval(diffs)
    stated_mean, stated_low, stated_high = published(comparison)
    assert round(mean, 3) == stated_mean
    assert (round(low, 3), round(high, 3)) == (stated_low, stated_high)
    # the verdict the line states: the protocol's interval lies inside (-0.04, +0.04)
    assert -0.04 < low and high < 0.04
