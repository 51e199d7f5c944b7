"""Data quality of the study's comparisons, from the results.csv columns `cpu`, `precision` and
`eval_precision`: runs that a resume carried across machines (their `cpu` holds " | "), pairs whose two
runs ran on different CPUs, how the runs and each comparison's pairs split over CPUs (a study that
outlives one machine), cells where only one method of a comparison finished (a partial grid), and the
precisions each comparison's runs trained and evaluated at (a comparison that mixes them compares the
arithmetic as well as the methods). Tables written before the columns existed say so instead."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from dt_eva.methods.registry import method_label
from dt_eva.reporting.study.paired import PairedDifference
from dt_eva.reporting.study.rows import StudyKey, StudyRow

CROSSED = " | "  # how the sweep joins the CPUs of a run resumed on another machine
SHOWN = 5  # names listed per count
DIFFERENT = "different CPUs"


@dataclass
class PairQuality:
    diff: PairedDifference
    missing: int  # cells where only one of the two methods finished
    different_cpu: list[tuple[str, int]]
    crossed: list[tuple[str, int]]  # pairs with a run that crossed machines
    by_cpu: dict[str, int]  # pairs by the CPU both runs ran on ("different CPUs" when they differ)
    precisions: dict[str, int]  # training precision -> runs
    eval_precisions: dict[str, int]


def crossed_runs(rows: list[StudyRow]) -> list[str]:
    return [r.name for r in rows if r.cpu and CROSSED in r.cpu]


def pair_quality(d: PairedDifference, rows: list[StudyRow], chosen: dict[str, StudyKey]) -> PairQuality:
    """The quality counts of one comparison over its common (task, seed) pairs."""
    by_cell = {(r.key, r.task, r.seed): r for r in rows}
    pairs = [(by_cell[(chosen[d.a], t, s)], by_cell[(chosen[d.b], t, s)]) for t, s in d.diffs]
    runs = [r for pair in pairs for r in pair]
    return PairQuality(
        d, len(d.only_a) + len(d.only_b),
        [(a.task, a.seed) for a, b in pairs if a.cpu and b.cpu and a.cpu != b.cpu],
        [(a.task, a.seed) for a, b in pairs if any(r.cpu and CROSSED in r.cpu for r in (a, b))],
        _count(a.cpu if a.cpu == b.cpu else DIFFERENT for a, b in pairs),
        _count(r.precision for r in runs), _count(r.eval_precision for r in runs))


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v or "not recorded"] = out.get(v or "not recorded", 0) + 1
    return out


def _counts(counts: dict[str, int], sep: str = ", ") -> str:
    return sep.join(f"{k} {n}" for k, n in sorted(counts.items())) or "-"


def _cpu_counts(counts: dict[str, int]) -> str:
    """CPU names hold commas (their feature lists), so their counts are joined with semicolons."""
    return _counts(counts, "; ")


def _pairs(pairs: list[tuple[str, int]]) -> str:
    shown = ", ".join(f"{t}/seed {s}" for t, s in pairs[:SHOWN])
    return f"{len(pairs)}" + (f" ({shown}{', …' if len(pairs) > SHOWN else ''})" if pairs else "")


def quality_warnings(quality: list[PairQuality]) -> list[str]:
    """A warning per comparison whose runs mix training or evaluation precisions."""
    out = []
    for q in quality:
        name = f"{method_label(q.diff.a)} − {method_label(q.diff.b)} ({q.diff.metric})"
        for what, counts in (("evaluation precision", q.eval_precisions), ("training precision", q.precisions)):
            recorded = {k: n for k, n in counts.items() if k != "not recorded"}
            if len(recorded) > 1:
                out.append(f"{name}: its runs mix {what}s ({_counts(counts)}); the difference mixes the methods "
                           "with the arithmetic")
    return out


def quality_section(diffs: list[PairedDifference], rows: list[StudyRow],
                    chosen: dict[str, StudyKey]) -> tuple[str, str, list[str]]:
    """The Markdown section, quality.csv and the warnings, over the success-at-any-step comparisons (the
    other metrics use the same runs)."""
    quality = [pair_quality(d, rows, chosen) for d in diffs if d.metric == "success_any"]
    crossed = crossed_runs(rows)
    recorded = sum(1 for r in rows if r.cpu)
    lines = ["### Data quality", ""]
    if recorded == 0:
        lines.append("CPU: not recorded (the results.csv predates the `cpu` column), so runs and pairs that crossed "
                     "machines cannot be counted.")
    else:
        shown = ", ".join(f"`{n}`" for n in crossed[:SHOWN]) + (", …" if len(crossed) > SHOWN else "")
        lines.append(f"Runs resumed on another machine (their `cpu` holds \"{CROSSED.strip()}\"): **{len(crossed)}** of "
                     f"{len(rows)}" + (f" ({shown})" if crossed else "") + "."
                     + ("" if recorded == len(rows) else f" {len(rows) - recorded} run(s) record no CPU."))
        lines += ["", f"Runs by CPU: {_cpu_counts(_count(r.cpu for r in rows))}."]
    lines += ["", "| Comparison | Pairs | Cells with one method only | Pairs on different CPUs | Pairs with a run that "
              "crossed machines | Pairs by CPU | Training precision (runs) | Evaluation precision (runs) |",
              "|---|:-:|:-:|:-:|:-:|:-:|:-:|:-:|"]
    lines += [f"| {method_label(q.diff.a)} − {method_label(q.diff.b)} | {q.diff.n} | {q.missing} | "
              f"{_pairs(q.different_cpu)} | {_pairs(q.crossed)} | {_cpu_counts(q.by_cpu)} | {_counts(q.precisions)} | "
              f"{_counts(q.eval_precisions)} |" for q in quality]
    lines += ["", "Cells with one method only: (task, seed) cells where one of the two runs has not finished (a "
              "partial grid); they are left out of the pairs. Different CPUs: the two runs of a pair ran on "
              "machines whose CPU model or arithmetic features differ."]
    return "\n".join(lines) + "\n", quality_csv(quality, len(crossed)), quality_warnings(quality)


def quality_csv(quality: list[PairQuality], crossed_runs_total: int) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["a", "b", "pairs", "cells_one_method", "pairs_different_cpu", "pairs_crossed_machines",
                     "runs_crossed_machines_total", "pairs_by_cpu", "precision", "eval_precision"])
    for q in quality:
        writer.writerow([q.diff.a, q.diff.b, q.diff.n, q.missing, len(q.different_cpu), len(q.crossed),
                         crossed_runs_total, _cpu_counts(q.by_cpu), _counts(q.precisions), _counts(q.eval_precisions)])
    return text.getvalue()
