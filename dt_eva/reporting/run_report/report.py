"""`build_report`: run directories in, Markdown + CSV tables and PNG plots out."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from dt_eva.methods.registry import method_label, method_sort_key
from dt_eva.reporting.common.folder import REPORT_TITLE, check_out_dir, write_manifest
from dt_eva.reporting.common.heatmap import plot_rank_heatmap
from dt_eva.reporting.common.tables import (
    METRICS,
    ConfigKey,
    ConfigResult,
    Table,
    markdown_text,
    order_tasks,
    short_task_name,
)
from dt_eva.reporting.run_report.curves import plot_learning_curves
from dt_eva.reporting.run_report.pretrain_table import build_pretrain_table
from dt_eva.reporting.run_report.tables import best_per_method, build_table6, build_table19, collect_config_results
from dt_eva.runs.layout import SUMMARY
from dt_eva.runs.records import RunRecord, find_run_dirs, full_task_name, load_run
from dt_eva.utils.io import atomic_dir, atomic_write_text, read_json

PathLike = str | os.PathLike


def _evaluate_hint(run: RunRecord) -> str:
    return f"run `dt-eva evaluate --run {run.path}`"


def _triage(runs: list[RunRecord]) -> tuple[list[RunRecord], list[dict[str, str]], list[str]]:
    """Split runs into usable ones and skipped ones (with the reason and what to do)."""
    usable, skipped, warnings = [], [], []
    for run in runs:
        reason = None
        summary_corrupt = SUMMARY in run.corrupt
        if run.eval is None:
            problems = "; ".join(run.problems)
            if summary_corrupt:
                reason = f"{run.path / SUMMARY} is corrupt, and the run has no usable evaluation ({problems})"
            elif run.summary is None:
                reason = (f"training did not finish (no summary.json): resume it with `dt-eva {run.kind} ... "
                          f"--resume`, then {_evaluate_hint(run)}")
            elif run.kind == "finetune" and run.evaluations:
                reason = (f"no evaluation on its fine-tuning task {run.task}: "
                          f"run `dt-eva evaluate --run {run.path} --tasks {run.task}`")
            else:
                reason = f"no evaluation ({problems or 'not evaluated yet'}): {_evaluate_hint(run)}"
        elif run.kind not in ("pretrain", "finetune"):
            reason = "unknown run kind (meta.json / summary.json lack 'kind')"
        elif run.kind == "finetune" and (run.method is None or run.task is None):
            reason = "summary.json / config.yaml lack the fine-tuning 'method' or 'task'"
        if reason:
            skipped.append({"run": str(run.path), "reason": reason})
            continue
        if summary_corrupt:
            warnings.append(f"{run.path / SUMMARY} is corrupt; the run is reported from its config.yaml and "
                            "evaluation")
        elif run.summary is None:
            warnings.append(f"{run.path}: evaluated, but training did not finish (no summary.json)")
        warnings += [p for p in run.problems if f"{run.path / SUMMARY} " not in p]
        usable.append(run)
    return usable, skipped, warnings


def _same_run(checkpoint: str, run: RunRecord) -> bool:
    ckpt = Path(checkpoint)
    if ckpt.suffix in (".pt", ".safetensors"):  # a weights file inside the run directory
        ckpt = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    try:
        if ckpt.resolve() == run.path.resolve():
            return True
    except OSError:
        pass
    return ckpt.name == run.path.name


def _pretrained_baselines(usable: list[RunRecord], metric: str) -> list[tuple[str, ConfigResult]]:
    """Rows for the pre-trained checkpoints the fine-tuning runs started from, where they were
    evaluated on fine-tuning tasks: the 'no fine-tuning' reference."""
    finetunes = [r for r in usable if r.kind == "finetune" and r.checkpoint]
    rows = []
    for run in usable:
        if run.kind != "pretrain" or not any(_same_run(f.checkpoint, run) for f in finetunes):  # type: ignore[arg-type]
            continue
        per_seed = {t: {run.seed: float(e[metric])} for t, e in run.eval["tasks"].items()  # type: ignore[index]
                    if e.get(metric) is not None}
        if per_seed:
            key = ConfigKey("pretrained", None, None, None)
            rows.append((f"Pre-trained ({run.name})",
                         ConfigResult(key, per_seed, [str(run.path)], {str(run.path): int(run.eval_episodes or 0)})))
    return rows


def display_names(runs: list[RunRecord], warnings: list[str] | None = None) -> dict[Path, str]:
    """Each run's name in figures and file names; runs that share a name (from different folders under one
    root) are told apart by the folders above them, with a warning, so that none replaces another."""
    names = {r.path: r.name for r in runs}
    for name in sorted({n for n in names.values() if list(names.values()).count(n) > 1}):
        same = [r.path for r in runs if r.name == name]
        depth = 1
        while depth < 64 and len({_tail(p, depth) for p in same}) < len(same):
            depth += 1
        names.update({p: _tail(p, depth) for p in same})
        if warnings is not None:
            warnings.append(f"{len(same)} runs are named {name} ({', '.join(map(str, same))}); the figures name "
                            "them by their folders")
    return names


def _tail(path: Path, depth: int) -> str:
    return "/".join(path.parts[-depth - 1:])


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "run"


def _plot_curves(usable: list[RunRecord], all_runs: list[RunRecord], best: dict[str, ConfigResult],
                 out: Path, problems: list[str]) -> list[Path]:
    files = []
    by_path = {str(r.path): r for r in usable}
    tasks = order_tasks({t for res in best.values() for t in res.per_seed})
    for task in tasks:
        groups: dict[str, list[RunRecord]] = {}
        for method in sorted(best, key=method_sort_key):
            res = best[method]
            runs = [by_path[p] for p in dict.fromkeys(res.runs)
                    if p in by_path and full_task_name(str(by_path[p].task)) == task]
            config = res.key.describe()
            if runs:
                groups[method_label(method) + (f" {config}" if config != "-" else "")] = runs
        if groups:
            files.append(plot_learning_curves(groups, out / "curves" / f"finetune-{short_task_name(task)}.png",
                                              f"Fine-tuning on {task}: best configuration per method", task=task,
                                              problems=problems))
    pretrains = [r for r in all_runs if r.kind == "pretrain" and r.metrics_path is not None]
    if pretrains:
        names = display_names(pretrains)
        files.append(plot_learning_curves({names[r.path]: [r] for r in pretrains}, out / "curves" / "pretrain.png",
                                          "Pre-training", problems=problems))
    return files


def _plot_heatmaps(runs: list[RunRecord], out: Path, problems: list[str]) -> list[Path]:
    files = []
    names = display_names(runs)
    for run in runs:
        if run.eva_result_path is None:
            continue
        try:
            ranks = {str(k): int(v) for k, v in read_json(run.eva_result_path)["ranks"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            problems.append(f"{run.eva_result_path} is corrupt ({type(e).__name__}: {e}); no rank heatmap for it")
            continue
        if not ranks:
            continue
        title = (f"{method_label(run.method or '?')} r={run.rank} rho={run.rho if run.rho is not None else '-'} "
                 f"on {run.task}, seed {run.seed}: total rank {sum(ranks.values())}")
        files.append(plot_rank_heatmap(ranks, out / "heatmaps" / f"{_safe_name(names[run.path])}.png", title=title))
    return files


def _build_tables(usable: list[RunRecord], warnings: list[str]) -> tuple[dict[str, Any], dict[str, ConfigResult]]:
    """Table 6 (any, final), Table 19 (any, final), the pre-training table; and the best config per method."""
    tables: dict[str, Table | Any] = {}
    per_metric = {m: collect_config_results(usable, m, warnings if m == "success_any" else None) for m in METRICS}
    per_metric = {m: res for m, res in per_metric.items() if res}
    for metric, results in per_metric.items():
        tables[f"table6_{metric}"] = build_table6(results, metric, _pretrained_baselines(usable, metric))
    for metric, results in per_metric.items():
        tables[f"table19_{metric}"] = build_table19(results, metric)
    pretrain = build_pretrain_table(usable)
    if pretrain is not None:
        tables[pretrain.name] = pretrain
    return tables, best_per_method(per_metric["success_any"]) if "success_any" in per_metric else {}


def _report_markdown(header: str, tables: list[str], skipped: list[dict[str, str]], warnings: list[str],
                     images: list[Path]) -> str:
    parts = [REPORT_TITLE, "", header, ""] + tables
    if skipped:
        parts += ["### Skipped runs", ""] + [f"- {markdown_text(s['run'])}: {markdown_text(s['reason'])}"
                                             for s in skipped] + [""]
    if warnings:
        parts += ["### Warnings", ""] + [f"- {markdown_text(w)}" for w in warnings] + [""]
    if images:
        parts += ["### Figures", ""] + [f"![{f.stem}]({f.as_posix()})" for f in images] + [""]
    return "\n".join(parts)


def _load_runs(run_dirs_or_root: PathLike | Iterable[PathLike]) -> tuple[str, list[RunRecord]]:
    """Where the runs were looked for (for messages) and every run directory found there, loaded; none
    found is a `FileNotFoundError`."""
    run_dirs = find_run_dirs(run_dirs_or_root)
    where = run_dirs_or_root if isinstance(run_dirs_or_root, (str, os.PathLike)) else \
        ", ".join(map(str, run_dirs_or_root))
    if not run_dirs:
        raise FileNotFoundError(
            f"no run directories found in {where}: a run directory holds a meta.json with the run's kind, as "
            "written by `dt-eva pretrain` and `dt-eva finetune`"
        )
    return str(where), [load_run(d) for d in run_dirs]


def _write_tables(folder: Path, tables: dict[str, Any], markdown: dict[str, str]) -> list[Path]:
    """Each table as `<name>.md` and `<name>.csv` in `folder`; returns the files in that order."""
    files: list[Path] = []
    for name, t in tables.items():
        for suffix, text in ((".md", markdown[name]), (".csv", t.to_csv())):
            atomic_write_text(folder / f"{name}{suffix}", text)
            files.append(folder / f"{name}{suffix}")
    return files


def build_report(run_dirs_or_root: PathLike | Iterable[PathLike], out_dir: PathLike, plots: bool = True) -> dict[str, Any]:
    """Tables and plots from run directories.

    `run_dirs_or_root`: run directories and/or directories that hold them (searched recursively).
    Writes `out_dir` as a whole (atomically: a crash leaves the old report or none, never half of
    one): `report.md` (everything), per table `<name>.md` and `<name>.csv` (Table 6 layout
    `table6_success_any|final`, Table 19 layout `table19_success_any|final`, `pretrain_success`),
    `curves/*.png` (loss and success vs updates) and `heatmaps/<run>.png` (EVA ranks per layer and
    module). `out_dir` must be new, empty or an older report, and writable (checked first).

    Each run is reported with its largest evaluation, and each table says how many episodes per task
    its evaluations used (naming the runs when sizes differ). Runs without an evaluation are listed
    under `skipped` with what to do; if no run is usable a `ValueError` says so. Damaged files
    (a bad `metrics.jsonl` line, a corrupt `summary.json`) become warnings that name the file.
    Returns `{"out_dir", "markdown", "tables": {name: markdown}, "files": [paths], "runs": [used run
    dirs], "skipped": [{"run", "reason"}], "warnings": [...]}`.
    """
    out = Path(out_dir)
    check_out_dir(out)
    where, runs = _load_runs(run_dirs_or_root)
    usable, skipped, warnings = _triage(runs)
    display_names(runs, warnings)  # the warning when runs share a name
    if not usable:
        listing = "\n".join(f"  - {s['run']}: {s['reason']}" for s in skipped)
        raise ValueError(f"no evaluated run to report on in {where}:\n{listing}")
    sizes = sorted({r.eval_episodes for r in usable if r.eval_episodes is not None})
    if len(sizes) > 1:
        warnings.append(f"the runs' evaluations differ in size ({', '.join(map(str, sizes))} episodes per task); "
                        "each table's footnote names the runs")
    tables, best_any = _build_tables(usable, warnings)
    markdown = {name: t.to_markdown() for name, t in tables.items()}
    with atomic_dir(out) as tmp:
        files = _write_tables(tmp, tables, markdown)
        if plots:
            files += _plot_curves(usable, runs, best_any, tmp, warnings)
            files += _plot_heatmaps(usable, tmp, warnings)
        warnings = list(dict.fromkeys(warnings))  # a run's metrics are read once per plot
        report_text = _report_markdown(f"Runs: {len(usable)} used, {len(skipped)} skipped (from {where}).",
                                       list(markdown.values()), skipped, warnings,
                                       [f.relative_to(tmp) for f in files if f.suffix == ".png"])
        atomic_write_text(tmp / "report.md", report_text)
        write_manifest(tmp, [tmp / "report.md", *files])
        files = [out / f.relative_to(tmp) for f in [tmp / "report.md", *files]]
    return {"out_dir": str(out), "markdown": report_text, "tables": markdown, "files": [str(f) for f in files],
            "runs": [str(r.path) for r in usable], "skipped": skipped, "warnings": warnings}
