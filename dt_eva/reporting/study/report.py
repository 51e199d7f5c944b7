"""`build_study_report`: a sweep's results.csv in, the study's tables, paired comparisons, curves and EVA
rank / init-time summaries out (Markdown, CSV, PNG). Reads only the table: no run directory, no torch."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from dt_eva.methods.registry import method_label
from dt_eva.reporting.common.folder import REPORT_TITLE, check_out_dir, write_manifest
from dt_eva.reporting.common.heatmap import plot_grid_heatmap
from dt_eva.reporting.common.paper import COMPARISONS, PAPER_TABLE6_AVG
from dt_eva.reporting.common.tables import METRIC_LABELS, METRICS, short_task_name
from dt_eva.reporting.study import rliable as rl
from dt_eva.reporting.study.curves import curve_keys, curve_stats, curves_csv, plot_curves
from dt_eva.reporting.study.dynamics import (
    along_budget,
    along_budget_csv,
    along_budget_markdown,
    grad_norm_csv,
    grad_norm_markdown,
    grad_norm_ratios,
    plot_along_budget,
)
from dt_eva.reporting.study.ordering import ordering_markdown, ordering_vs_paper
from dt_eva.reporting.study.paired import (
    BOOTSTRAP_SEED,
    MDD_FACTOR,
    MIN_PAIRS,
    RESAMPLES,
    PairedDifference,
    metric_digits,
    paired_difference,
)
from dt_eva.reporting.study.pertask import per_task_section
from dt_eva.reporting.study.power import DEFAULT_DELTAS, check_deltas, power_csv, power_markdown, power_rows
from dt_eva.reporting.study.quality import quality_section
from dt_eva.reporting.study.ranks import eva_rows, init_time_table, rank_csv, rank_markdown, rank_summary
from dt_eva.reporting.study.rows import FIRST_SUCCESS, StudyData, StudyKey, StudyRow, read_study
from dt_eva.reporting.study.stats import paired_tests, tests_csv, tests_markdown
from dt_eva.reporting.study.tables import TABLE_METRICS, study_tables
from dt_eva.runs.results import RESULTS
from dt_eva.utils.io import atomic_dir, atomic_write_text

PathLike = str | os.PathLike
LISTED = 8  # left-out pairs named per comparison (a partial grid can leave out dozens)
VALIDATION_PREFIX = "validation"  # a parent folder's validation sweep is not pooled with its main grid
FIRST_SUCCESS_NOTE = (" Time to first success: a run's mean first success step (1-200) over its episodes that "
                      "succeed, from the sweep's episodes.csv.gz; negative favours the first method. The share "
                      "of episodes that never succeed is 1 minus success at any step.")


def results_csv_of(path: PathLike) -> Path | None:
    """The results.csv that `path` names: the file itself, or `<sweep folder>/results.csv`; else None."""
    path = Path(path)
    if path.is_file() and path.suffix == ".csv":
        return path
    if path.is_dir() and (path / RESULTS).is_file():
        return path / RESULTS
    return None


def results_csvs_of(paths: list[PathLike]) -> list[Path] | None:
    """The results.csv files that `paths` name (each a results.csv, a sweep folder, or a folder whose
    sub-folders are sweep folders: a study run in phases, e.g. studies/cw10-ii); None when none of them
    names one (then they are run directories). A path that names none while others do is an error."""
    found = [_named_csvs(Path(path)) for path in paths]
    if not any(found):
        return None
    for path, files in zip(paths, found):
        if not files:
            raise FileNotFoundError(f"{path}: no results.csv there (nor in its sub-folders); pass sweep folders "
                                    "or their results.csv files")
    return list(dict.fromkeys(f for files in found for f in files))


def _named_csvs(path: Path) -> list[Path]:
    """`path`'s own results.csv, or those of the sweep folders directly below it except a learning-rate
    validation (`validation*`: another design, other tasks and seeds; name it to pool it)."""
    own = results_csv_of(path)
    if own is not None or not path.is_dir():
        return [own] if own is not None else []
    return sorted(p / RESULTS for p in path.iterdir()
                  if (p / RESULTS).is_file() and not p.name.startswith(VALIDATION_PREFIX))


def comparisons(rows: list[StudyRow], chosen: dict[str, StudyKey]) -> tuple[list[PairedDifference], list[str]]:
    """EVA - LoRA, EVA+DoRA - DoRA, EVA - FFT per metric (the tables' and, where the sweep kept its
    episodes, the time to first success), each method at its chosen configuration; and notes on the
    comparisons that could not be made (a method without a finished run)."""
    out, notes = [], []
    for a, b in COMPARISONS:
        missing = [method_label(m) for m in (a, b) if m not in chosen]
        if len(missing) == 1:
            notes.append(f"{method_label(a)} − {method_label(b)}: not computed, {missing[0]} has no finished run.")
        if missing:
            continue
        for metric in TABLE_METRICS:
            values = [{(r.task, r.seed): r.values[metric] for r in rows if r.key == chosen.get(m) and metric in r.values}
                      for m in (a, b)]
            if values[0] or values[1]:
                out.append(paired_difference(a, b, metric, *values))
        first = _first_success_difference(rows, chosen, a, b, notes)
        if first is not None:
            out.append(first)
    return out, notes


def _first_success_difference(rows: list[StudyRow], chosen: dict[str, StudyKey], a: str, b: str,
                              notes: list[str]) -> PairedDifference | None:
    """`a - b` in time to first success over the pairs whose two runs both have episode records (a run
    without a value there never succeeded); the pairs without records are counted in `notes`."""
    runs = [{(r.task, r.seed): r for r in rows if r.key == chosen[m]} for m in (a, b)]
    recorded = {p for p in runs[0].keys() & runs[1].keys() if runs[0][p].episode_records and runs[1][p].episode_records}
    if not recorded:
        return None
    unrecorded = len(runs[0].keys() & runs[1].keys()) - len(recorded)
    if unrecorded:
        notes.append(f"{method_label(a)} − {method_label(b)}, {METRIC_LABELS[FIRST_SUCCESS]}: {unrecorded} pair(s) "
                     "not compared, their episodes are not in an episodes.csv.gz.")
    values = [{p: run.values[FIRST_SUCCESS] for p, run in side.items() if p in recorded and FIRST_SUCCESS in run.values}
              for side in runs]
    return paired_difference(a, b, FIRST_SUCCESS, *values) if values[0] or values[1] else None


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def comparisons_markdown(diffs: list[PairedDifference], not_computed: list[str]) -> str:
    lines = ["### Paired comparisons over (task, seed)", "",
             ("| Comparison | Metric | Pairs | Mean difference | 95 % bootstrap interval | Task-level interval "
              "| Min. detectable | Verdict | Paper |"), "|---|---|:-:|:-:|:-:|:-:|:-:|---|:-:|"]
    notes = list(not_computed)
    for d in diffs:
        digits = metric_digits(d.metric)
        name = f"{method_label(d.a)} − {method_label(d.b)}"
        interval = "-" if d.low is None else f"[{d.low:+.{digits}f}, {d.high:+.{digits}f}]"
        mdd = "-" if d.mdd is None else f"{d.mdd:.{digits}f}"
        paper = _paper_difference(d)
        lines.append(f"| {name} | {METRIC_LABELS[d.metric]} | {d.n} | {_fmt(d.mean, digits)} | {interval} | "
                     f"{d.task_interval(digits)} | {mdd} | {d.verdict()} | {paper} |")
        for missing, present in ((d.b, d.only_a), (d.a, d.only_b)):
            if present:
                pairs = ", ".join(f"{short_task_name(t)}/seed {s}" for t, s in present[:LISTED]) + (
                    ", …" if len(present) > LISTED else "")
                why = "has no successful episode" if d.metric == FIRST_SUCCESS else "missing"
                notes.append(f"{name}, {METRIC_LABELS[d.metric]}: {len(present)} pair(s) left out, "
                             f"{method_label(missing)} {why}: {pairs}.")
    lines += ["", ("Mean difference: the first method minus the second over the (task, seed) pairs where both "
                   "finished (held-out MSE: negative favours the first method). Interval: percentile bootstrap over "
                   f"pairs, {RESAMPLES:,} resamples, numpy seed {BOOTSTRAP_SEED}. Task-level interval: the "
                   "bootstrap that resamples the tasks and then the seeds within each drawn task, so it asks whether "
                   "the difference would hold on other tasks; a verdict that holds over pairs but not here says "
                   f"'not at the task level'. Min. detectable: {MDD_FACTOR} x the "
                   "standard error of the paired mean, the smallest true difference this design finds with about "
                   "80 % power at alpha 0.05 (normal approximation; with few pairs the true value is larger); a "
                   "smaller true difference has less than an 80 % chance of being resolved here. With fewer than "
                   f"{MIN_PAIRS} pairs no verdict is drawn (the bootstrap interval is too narrow). Paper: the difference of the "
                   "paper's Table 6 averages (success only; no interval given).")]
    if any(d.metric == FIRST_SUCCESS for d in diffs):
        lines[-1] += FIRST_SUCCESS_NOTE
    if notes:
        lines += [""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def _paper_difference(d: PairedDifference) -> str:
    if d.metric not in METRICS or d.a not in PAPER_TABLE6_AVG or d.b not in PAPER_TABLE6_AVG:
        return "-"
    return f"{PAPER_TABLE6_AVG[d.a] - PAPER_TABLE6_AVG[d.b]:+.2f}"


def comparisons_csv(diffs: list[PairedDifference]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["a", "b", "metric", "pairs", "mean", "se", "ci_low", "ci_high", "mdd", "resolved",
                     "task_ci_low", "task_ci_high", "task_resolved", "pairs_only_a", "pairs_only_b"])
    for d in diffs:
        writer.writerow([d.a, d.b, d.metric, d.n, *(("" if v is None else f"{v:.6g}")
                                                     for v in (d.mean, d.se, d.low, d.high, d.mdd)),
                         d.resolved, *("" if v is None else f"{v:.6g}" for v in (d.task_low, d.task_high)),
                         d.task_resolved, len(d.only_a), len(d.only_b)])
    return text.getvalue()


def data_warnings(data: StudyData) -> list[str]:
    """Evaluation sizes or precisions that differ between runs, on top of the reader's warnings."""
    sizes: dict[int, list[str]] = {}
    precisions: dict[str, list[str]] = {}
    for row in data.rows:
        if row.episodes is not None:
            sizes.setdefault(row.episodes, []).append(row.name)
        if row.precision:
            precisions.setdefault(row.precision, []).append(row.name)
    warnings = list(data.warnings)
    if len(sizes) > 1:
        parts = "; ".join(f"{n} episode(s) per task: {len(names)} run(s) (e.g. {names[0]})"
                          for n, names in sorted(sizes.items()))
        warnings.append(f"the runs' evaluations differ in size ({parts}); success cells that mix them are less "
                        "comparable")
    if len(precisions) > 1:  # `precision: auto` is bf16 on machines with native bf16 matmuls, fp32 elsewhere
        parts = "; ".join(f"{p}: {len(names)} run(s) (e.g. {names[0]})" for p, names in sorted(precisions.items()))
        warnings.append(f"the runs trained at different precisions ({parts}); a difference between runs of two "
                        "precisions mixes the methods with the arithmetic: pin `train.precision` in the sweep")
    return warnings


def _header(data: StudyData) -> str:
    rows = data.rows
    tasks = sorted({r.task for r in rows})
    seeds = sorted({r.seed for r in rows})
    methods = sorted({r.key.method for r in rows})
    sources = ", ".join(f"`{p}`" for p in (data.paths or [data.path]))
    return (f"Study from {sources}: {len(rows)} finished run(s) used, {len(data.excluded)} excluded; "
            f"{len(methods)} method(s), {len(tasks)} task(s), seeds {', '.join(map(str, seeds))}.")


def _sections(data: StudyData, out: Path, plots: bool, deltas: list[float],
              warnings: list[str]) -> tuple[list[str], dict[str, str], list[Path]]:
    """Markdown sections, CSV files (name -> text) and PNGs written under `out`; adds to `warnings`."""
    tables, chosen = study_tables(data.rows)
    sections = [t.to_markdown() for t in tables]
    files = {f"{t.name}.csv": t.to_csv() for t in tables}
    diffs, not_computed = comparisons(data.rows, chosen)
    if diffs or not_computed:
        sections.append(comparisons_markdown(diffs, not_computed))
        files["comparisons.csv"] = comparisons_csv(diffs)
        _statistics(diffs, data.rows, chosen, deltas, sections, files, warnings)
    for metric in ("success_any", "success_final"):
        ordering = ordering_vs_paper(data.rows, chosen, metric)
        if ordering is not None:
            sections.append(ordering_markdown(ordering))
    steps = along_budget(data.rows, chosen)
    if steps:
        sections.append(along_budget_markdown(steps))
        files["comparisons_along_budget.csv"] = along_budget_csv(steps)
    ratios = grad_norm_ratios(data.rows, chosen)
    if ratios:
        sections.append(grad_norm_markdown(ratios))
        files["grad_norm.csv"] = grad_norm_csv(ratios)
    images = _rliable_sections(data.rows, chosen, out, plots, sections, files)
    if steps and plots:
        images += [plot_along_budget(steps, metric, out / "curves" / f"difference_{metric}.png")
                   for metric in dict.fromkeys(d.metric for _, d in steps)]
    curves = curve_stats(data.rows, curve_keys(data.rows, chosen))
    if curves:
        files["curves.csv"] = curves_csv(curves)
        if plots:
            images += [plot_curves(points, metric, out / "curves" / f"{metric}.png") for metric, points in curves.items()]
    summaries = [s for m, rows in eva_rows(data.rows, chosen).items() if (s := rank_summary(m, rows))]
    if summaries:
        sections += ["## EVA's ranks across tasks", ""] + [rank_markdown(s) for s in summaries]
        files["eva_ranks.csv"] = rank_csv(summaries)
        if plots:
            images += [plot_grid_heatmap(s.layers, s.modules, s.mean, out / "heatmaps" / f"{s.method}-mean-ranks.png",
                                         f"{method_label(s.method)}: mean rank over {s.runs} runs", digits=1)
                       for s in summaries]
    timing = init_time_table(eva_rows(data.rows, chosen))
    if timing:
        sections.append(timing[0])
        files["eva_init_time.csv"] = timing[1]
    return sections, files, images


def _statistics(diffs: list[PairedDifference], rows: list[StudyRow], chosen: dict[str, StudyKey],
                deltas: list[float], sections: list[str], files: dict[str, str], warnings: list[str]) -> None:
    """The tests with Holm and verdicts, the per-task tables, the power and the data-quality sections
    (the first and third need scipy: without it, the note that says what to install)."""
    quality, files["quality.csv"], more = quality_section(diffs, rows, chosen)
    warnings += more
    try:
        import scipy.stats  # noqa: F401
    except ImportError as error:
        sections.append(f"### Tests, verdicts and power\n\nThe sign-flip and Wilcoxon tests, Holm's correction, the "
                        f"verdicts and the power section need scipy ({rl.INSTALL}); not written here ({error}).\n")
        tests = []
    else:
        tests = paired_tests(diffs)
    if tests:
        sections.append(tests_markdown(tests))
        files["tests.csv"] = tests_csv(tests)
    per_task = per_task_section(diffs, rows, chosen)
    if per_task:
        sections.append(per_task[0])
        files["per_task.csv"] = per_task[1]
    power = power_rows(diffs, deltas) if tests else []
    if power:
        sections.append(power_markdown(power, deltas))
        files["power.csv"] = power_csv(power)
    sections.append(quality)


def _rliable_sections(rows: list[StudyRow], chosen: dict[str, StudyKey], out: Path, plots: bool,
                      sections: list[str], files: dict[str, str]) -> list[Path]:
    """IQM, probability of improvement and performance profiles, or the note that says to install rliable."""
    note = rl.missing_note()
    if note is not None:
        sections.append(f"### Interquartile mean, probability of improvement, performance profiles\n\n{note}\n")
        return []
    images, text = [], []
    for metric in rl.IQM_METRICS:
        scores = rl.method_scores(rows, chosen, metric)
        if not scores:
            continue
        iqm, poi = rl.iqm_intervals(scores), rl.improvement(scores)
        sections.append(rl.rliable_markdown(metric, scores, iqm, poi))
        text.append(rl.rliable_csv(metric, scores, iqm, poi))
        if plots:
            images.append(rl.plot_profiles(scores, metric, out / "profiles" / f"{metric}.png"))
    if text:
        files["rliable.csv"] = text[0] + "".join(t.split("\n", 1)[1] for t in text[1:])
    return images


def _excluded_lines(excluded: list[tuple[str, str, str]]) -> list[str]:
    """Failed runs one by one with their error; runs not yet run (a sweep still going) as one line."""
    pending = [n for n, s, _ in excluded if s == "pending"]
    lines = [f"- `{n}` ({s}): {e or 'no error recorded'}" for n, s, e in excluded if s != "pending"]
    if pending:
        lines.append(f"- {len(pending)} run(s) not run yet (pending), e.g. `{pending[0]}`: the sweep has not "
                     "finished; `dt-eva sweep <file>` continues it")
    return lines


def build_study_report(results: PathLike | list[PathLike], out_dir: PathLike, plots: bool = True,
                       power_deltas: tuple[float, ...] | list[float] = DEFAULT_DELTAS) -> dict[str, Any]:
    """The study report of a sweep's results.csv (or its folder; or several, pooled: a study run in
    phases), written to `out_dir` as a whole
    (atomically; `out_dir` must be new, empty or an older report): report.md, a CSV per table,
    comparisons.csv, tests.csv (permutation / Wilcoxon with Holm), per_task.csv, power.csv (differences
    `power_deltas` sized), rliable.csv and profiles/*.png (with rliable installed), curves.csv and
    curves/*.png, eva_ranks.csv and heatmaps/*.png, eva_init_time.csv.
    Returns {"out_dir", "markdown", "header", "sections", "files", "rows", "excluded", "warnings"}."""
    out = Path(out_dir)
    deltas = check_deltas(list(power_deltas))
    paths = results_csvs_of(list(results) if isinstance(results, (list, tuple)) else [results])
    if paths is None:
        raise FileNotFoundError(f"{results}: no results.csv there; pass a sweep's folder or its results.csv")
    check_out_dir(out)
    data = read_study(paths)
    warnings = data_warnings(data)
    with atomic_dir(out) as tmp:
        sections, files, images = _sections(data, tmp, plots, deltas, warnings)
        for name, text in files.items():
            atomic_write_text(tmp / name, text)
        parts = [REPORT_TITLE + ": study", "", _header(data), ""] + sections
        if data.excluded:
            parts += ["### Excluded runs", ""] + _excluded_lines(data.excluded) + [""]
        if warnings:
            parts += ["### Warnings", ""] + [f"- {w}" for w in warnings] + [""]
        if images:
            parts += ["### Figures", ""] + [f"![{f.stem}]({f.relative_to(tmp).as_posix()})" for f in images] + [""]
        markdown = "\n".join(parts)
        atomic_write_text(tmp / "report.md", markdown)
        write_manifest(tmp, [tmp / "report.md"] + [tmp / n for n in files] + list(images))
        written = [out / "report.md"] + [out / n for n in files] + [out / f.relative_to(tmp) for f in images]
    return {"out_dir": str(out), "markdown": markdown, "header": _header(data), "sections": sections,
            "files": [str(f) for f in written],
            "rows": [r.name for r in data.rows], "excluded": data.excluded, "warnings": warnings}
