"""`build_report`: run directories in, Markdown + CSV tables and PNG plots out."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from dt_eva.reporting.pretrain_table import build_pretrain_table
from dt_eva.reporting.rundirs import RunRecord, find_run_dirs, load_run
from dt_eva.reporting.tables import (
    METRICS,
    ConfigKey,
    ConfigResult,
    Table,
    best_per_method,
    build_table6,
    build_table19,
    collect_config_results,
    full_task_name,
    method_label,
    method_sort_key,
    order_tasks,
    short_task_name,
)
from dt_eva.utils.io import atomic_write_text

PathLike = str | os.PathLike


def _evaluate_hint(run: RunRecord) -> str:
    return f"run `dt-eva evaluate --run {run.path}`"


def _triage(runs: list[RunRecord]) -> tuple[list[RunRecord], list[dict[str, str]], list[str]]:
    """Split runs into usable ones and skipped ones (with the reason and what to do)."""
    usable, skipped, warnings = [], [], []
    for run in runs:
        reason = None
        if run.eval is None:
            problems = "; ".join(run.problems)
            if run.summary is None:
                reason = (f"training did not finish (no summary.json): resume it with `dt-eva {run.kind} ... "
                          f"--resume`, then {_evaluate_hint(run)}")
            else:
                reason = f"no eval.json ({problems or 'not evaluated yet'}): {_evaluate_hint(run)}"
        elif run.kind not in ("pretrain", "finetune"):
            reason = "unknown run kind (meta.json / summary.json lack 'kind')"
        elif run.kind == "finetune":
            if run.method is None or run.task is None:
                reason = "summary.json / config.yaml lack the fine-tuning 'method' or 'task'"
            elif full_task_name(str(run.task)) not in run.eval["tasks"]:
                reason = (f"eval.json has no result for its fine-tuning task {run.task}: "
                          f"run `dt-eva evaluate --run {run.path} --tasks {run.task}`")
        if reason:
            skipped.append({"run": str(run.path), "reason": reason})
            continue
        if run.summary is None:
            warnings.append(f"{run.path}: evaluated, but training did not finish (no summary.json)")
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
            rows.append((f"Pre-trained ({run.name})", ConfigResult(ConfigKey("pretrained", None, None, None), per_seed,
                                                                   [str(run.path)])))
    return rows


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "run"


def _plot_curves(usable: list[RunRecord], all_runs: list[RunRecord], best: dict[str, ConfigResult],
                 out: Path) -> list[Path]:
    from dt_eva.reporting.curves import plot_learning_curves

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
                                              f"Fine-tuning on {task}: best configuration per method", task=task))
    pretrains = [r for r in all_runs if r.kind == "pretrain" and r.metrics_path is not None]
    if pretrains:
        files.append(plot_learning_curves({r.name: [r] for r in pretrains}, out / "curves" / "pretrain.png",
                                          "Pre-training"))
    return files


def _plot_heatmaps(runs: list[RunRecord], out: Path) -> list[Path]:
    import json

    from dt_eva.reporting.rank_heatmap import plot_rank_heatmap

    files = []
    for run in runs:
        if run.eva_result_path is None:
            continue
        try:
            ranks = json.loads(run.eva_result_path.read_text())["ranks"]
        except (OSError, ValueError, KeyError):
            continue
        if not ranks:
            continue
        title = (f"{method_label(run.method or '?')} r={run.rank} rho={run.rho if run.rho is not None else '-'} "
                 f"on {run.task}, seed {run.seed}: total rank {sum(int(v) for v in ranks.values())}")
        files.append(plot_rank_heatmap({k: int(v) for k, v in ranks.items()},
                                       out / "heatmaps" / f"{_safe_name(run.name)}.png", title=title))
    return files


def build_report(run_dirs_or_root: PathLike | Iterable[PathLike], out_dir: PathLike, plots: bool = True) -> dict[str, Any]:
    """Tables and plots from run directories.

    `run_dirs_or_root`: run directories and/or directories that hold them (searched recursively).
    Writes into `out_dir`: `report.md` (everything), per table `<name>.md` and `<name>.csv`
    (Table 6 layout `table6_success_any|final`, Table 19 layout `table19_success_any|final`,
    `pretrain_success`), `curves/*.png` (loss and success vs updates) and `heatmaps/<run>.png`
    (EVA ranks per layer and module).

    Runs without `eval.json` are listed under `skipped` with what to do; if no run is usable a
    `ValueError` says so. Returns `{"out_dir", "markdown", "tables": {name: markdown},
    "files": [paths], "runs": [used run dirs], "skipped": [{"run", "reason"}], "warnings": [...]}`.
    """
    run_dirs = find_run_dirs(run_dirs_or_root)
    where = run_dirs_or_root if isinstance(run_dirs_or_root, (str, os.PathLike)) else \
        ", ".join(map(str, run_dirs_or_root))
    if not run_dirs:
        raise FileNotFoundError(
            f"no run directories found in {where}: a run directory holds meta.json / summary.json, as written "
            "by `dt-eva pretrain` and `dt-eva finetune`"
        )
    runs = [load_run(d) for d in run_dirs]
    usable, skipped, warnings = _triage(runs)
    if not usable:
        listing = "\n".join(f"  - {s['run']}: {s['reason']}" for s in skipped)
        raise ValueError(f"no evaluated run to report on in {where}:\n{listing}")

    out = Path(out_dir)
    tables: dict[str, Table | Any] = {}
    best_any: dict[str, ConfigResult] = {}
    per_metric = {m: collect_config_results(usable, m, warnings if m == "success_any" else None) for m in METRICS}
    per_metric = {m: res for m, res in per_metric.items() if res}
    for metric, results in per_metric.items():  # Table 6 (any, final), then Table 19 (any, final)
        tables[f"table6_{metric}"] = build_table6(results, metric, _pretrained_baselines(usable, metric))
    for metric, results in per_metric.items():
        tables[f"table19_{metric}"] = build_table19(results, metric)
    if "success_any" in per_metric:
        best_any = best_per_method(per_metric["success_any"])
    pretrain = build_pretrain_table(usable)
    if pretrain is not None:
        tables[pretrain.name] = pretrain

    files: list[Path] = []
    markdown = {name: t.to_markdown() for name, t in tables.items()}
    for name, t in tables.items():
        for suffix, text in ((".md", markdown[name]), (".csv", t.to_csv())):
            atomic_write_text(out / f"{name}{suffix}", text)
            files.append(out / f"{name}{suffix}")
    if plots:
        files += _plot_curves(usable, runs, best_any, out)
        files += _plot_heatmaps(usable, out)

    parts = ["# dt-eva report", "", f"Runs: {len(usable)} used, {len(skipped)} skipped (from {where}).", ""]
    parts += [markdown[n] for n in tables]
    if skipped:
        parts += ["### Skipped runs", ""] + [f"- `{s['run']}`: {s['reason']}" for s in skipped] + [""]
    if warnings:
        parts += ["### Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    images = [f for f in files if f.suffix == ".png"]
    if images:
        parts += ["### Figures", ""] + [f"![{f.stem}]({f.relative_to(out).as_posix()})" for f in images] + [""]
    report_text = "\n".join(parts)
    atomic_write_text(out / "report.md", report_text)
    files.insert(0, out / "report.md")
    return {
        "out_dir": str(out),
        "markdown": report_text,
        "tables": markdown,
        "files": [str(f) for f in files],
        "runs": [str(r.path) for r in usable],
        "skipped": skipped,
        "warnings": warnings,
    }
