"""The run report's tables from run records: fine-tuning runs grouped by configuration, in the layout of
the paper's Table 6 (best config per method) and Table 19 (per rank)."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from dt_eva.methods.registry import method_label, method_sort_key
from dt_eva.reporting.common.tables import METRICS, ConfigKey, ConfigResult, Row, Table, common_footnotes, order_tasks
from dt_eva.runs.records import RunRecord, full_task_name


def collect_config_results(runs: Iterable[RunRecord], metric: str,
                           warnings: list[str] | None = None) -> dict[ConfigKey, ConfigResult]:
    """Group evaluated fine-tuning runs by configuration; one value per (task, seed).

    Two runs of the same configuration, task and seed: the one with the newer evaluation wins and a
    warning names both.
    """
    results: dict[ConfigKey, ConfigResult] = {}
    chosen: dict[tuple[ConfigKey, str, int], RunRecord] = {}
    for run in runs:
        if run.kind != "finetune" or run.eval is None or run.method is None or run.task is None:
            continue
        task = full_task_name(str(run.task))
        entry = run.eval["tasks"].get(task)
        if entry is None or entry.get(metric) is None:
            continue
        key = ConfigKey(run.method, run.rank, run.rho, run.lr)
        slot = (key, task, run.seed)
        prev = chosen.get(slot)
        if prev is not None:
            newer = run if (run.eval_created or "") >= (prev.eval_created or "") else prev
            if warnings is not None:
                warnings.append(f"runs {prev.name} and {run.name} share method/rank/rho/lr/task/seed; "
                                f"using the newer evaluation ({newer.name})")
            if newer is prev:
                continue
        chosen[slot] = run
        results.setdefault(key, ConfigResult(key, defaultdict(dict))).per_seed[task][run.seed] = float(entry[metric])
    for (key, _task, _seed), run in chosen.items():
        res = results[key]
        res.runs.append(str(run.path))
        res.episodes[str(run.path)] = int(run.eval_episodes or 0)
    for res in results.values():
        res.per_seed = dict(res.per_seed)
    return results


def _lr_varies(results: Iterable[ConfigResult]) -> bool:
    by_method: dict[str, set] = defaultdict(set)
    for r in results:
        by_method[r.key.method].add(r.key.lr)
    return any(len(v) > 1 for v in by_method.values())


def best_per_method(results: dict[ConfigKey, ConfigResult]) -> dict[str, ConfigResult]:
    """For each method, the configuration with the best average (as the paper picks the best rank)."""
    best: dict[str, ConfigResult] = {}
    for res in results.values():
        m = res.key.method
        if m not in best or res.selection_key() > best[m].selection_key():
            best[m] = res
    return best


def best_per_rank(results: dict[ConfigKey, ConfigResult]) -> dict[tuple[str, int | None], ConfigResult]:
    """For each (method, rank), the best configuration over the other swept values (rho, lr)."""
    best: dict[tuple[str, int | None], ConfigResult] = {}
    for res in results.values():
        k = (res.key.method, res.key.rank)
        if k not in best or res.selection_key() > best[k].selection_key():
            best[k] = res
    return best


def build_table6(results: dict[ConfigKey, ConfigResult], metric: str,
                 baselines: list[tuple[str, ConfigResult]] | None = None) -> Table:
    """Paper Table 6: one row per method, its best configuration chosen by the average."""
    best = best_per_method(results)
    with_lr = _lr_varies(results.values())
    tasks = order_tasks({t for r in results.values() for t in r.per_seed})
    rows = []
    for label, res in baselines or []:
        shared = {t: v for t, v in res.per_seed.items() if t in tasks}  # only the table's columns
        if shared:
            rows.append(Row(label, "pretrained", "-", ConfigResult(res.key, shared, res.runs, res.episodes)))
    for m in sorted(best, key=method_sort_key):
        rows.append(Row(method_label(m), m, best[m].key.describe(with_lr), best[m]))
    notes = common_footnotes(rows, tasks, metric)
    notes.append("Config: the configuration (rank, rho, ...) with the highest Avg. among those run for "
                 "the method, as the paper reports each method at its best rank.")
    return Table(f"table6_{metric}", f"Table 6 layout: CW10 {METRICS.get(metric, metric)}, best configuration "
                 "per method", metric, tasks, rows, notes)


def build_table19(results: dict[ConfigKey, ConfigResult], metric: str) -> Table:
    """Paper Table 19: one row per (method, rank)."""
    best = best_per_rank(results)
    with_lr = _lr_varies(results.values())
    tasks = order_tasks({t for r in results.values() for t in r.per_seed})
    keys = sorted(best, key=lambda k: (method_sort_key(k[0]), k[1] if k[1] is not None else -1))
    rows = [Row(method_label(m), m, best[(m, r)].key.describe(with_lr), best[(m, r)]) for m, r in keys]
    notes = common_footnotes(rows, tasks, metric)
    if any(k.rho is not None or (with_lr and k.lr is not None) for k in results):
        notes.append("Per rank, the best of the other swept values (rho, lr) is shown.")
    return Table(f"table19_{metric}", f"Table 19 layout: CW10 {METRICS.get(metric, metric)} per method and rank",
                 metric, tasks, rows, notes)
