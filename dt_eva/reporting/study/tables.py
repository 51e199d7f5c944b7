"""The study's tables from a sweep's rows: the paper's Table 6 layout (one row per method, the paper's
averages beside ours), Table 19 (per rank) when ranks were swept, and every configuration when a method
was run with several (e.g. the learning-rate validation).

Where a method has several configurations, its Table 6 row is the one the study protocol
(docs/results.md) would choose: the lowest mean held-out action MSE, or, without it, the highest mean
success at any step. The same row is used for every metric, and for the paired comparisons.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from dt_eva.methods.registry import method_label, method_sort_key
from dt_eva.reporting.common.paper import PAPER_TABLE6_AVG
from dt_eva.reporting.common.tables import METRIC_LABELS, ConfigResult, Row, Table, common_footnotes, order_tasks
from dt_eva.reporting.study.rows import StudyKey, StudyRow, per_seed

TABLE_METRICS = ("success_any", "success_final", "heldout_loss")
SELECTION_NOTE = ("Config: where a method ran with several configurations, the row shows the one with the "
                  "lowest mean held-out action MSE (the study protocol's rule; without it, the highest mean "
                  "success at any step), the same row in every table.")
PAPER_NOTE = ("Paper avg.: the paper's Table 6 average CW10 success (its DT at 100K updates, one success "
              "measure), beside our average; not a like-for-like comparison of scale.")
HELDOUT_NOTE = ("Held-out action MSE: mean over every window of the held-out episodes of the task, at the last "
                "evaluated step; lower is better.")

Results = dict[StudyKey, ConfigResult]


def config_results(rows: list[StudyRow], metric: str) -> Results:
    """configuration -> its per-task, per-seed values of `metric` (and its runs' evaluation sizes)."""
    results = {}
    for key, tasks in per_seed(rows, metric).items():
        used = [r for r in rows if r.key == key and metric in r.values]
        results[key] = ConfigResult(key, tasks, [r.name for r in used],  # type: ignore[arg-type]
                                    {r.name: r.episodes for r in used if r.episodes is not None})
    return results


def choose_configs(by_metric: dict[str, Results], group: Callable[[StudyKey], Hashable]) -> dict[Hashable, StudyKey]:
    """For each group of configurations (a method, or a method and rank), the one the protocol picks."""
    keys = {k for results in by_metric.values() for k in results}
    best: dict[Hashable, StudyKey] = {}
    for key in sorted(keys, key=lambda k: k.describe(True)):  # ties: the first in this order
        g = group(key)
        if g not in best or _score(key, by_metric) > _score(best[g], by_metric):
            best[g] = key
    return best


def _score(key: StudyKey, by_metric: dict[str, Results]) -> tuple:
    """Higher is better: covers more tasks, lower held-out MSE, higher success."""
    loss, success = by_metric["heldout_loss"].get(key), by_metric["success_any"].get(key)
    coverage = max(len(loss.per_seed) if loss else 0, len(success.per_seed) if success else 0)
    return (coverage, -loss.average().mean if loss else float("-inf"),
            success.average().mean if success else float("-inf"))


def _sort_key(key: StudyKey) -> tuple:
    return (method_sort_key(key.method), key.rank if key.rank is not None else -1, key.describe(True))


def _lr_varies(keys: list[StudyKey]) -> bool:
    """Show each row's learning rate when the table's configurations do not all share one."""
    return len({k.lr for k in keys}) > 1


def build_table(name: str, title: str, metric: str, results: Results, keys: list[StudyKey],
                notes: list[str], reference: dict[str, float] | None = None) -> Table:
    """A `Table` with one row per configuration in `keys` (in registry order), over every task of `results`."""
    tasks = order_tasks({t for res in results.values() for t in res.per_seed})
    with_lr = _lr_varies(list(results))
    rows = [Row(method_label(k.method), k.method, k.describe(with_lr), results[k])
            for k in sorted(keys, key=_sort_key) if k in results]
    footnotes = common_footnotes(rows, tasks, metric)
    if metric == "heldout_loss":  # the evaluation-size note is about online episodes, not this metric
        footnotes = footnotes[:-1] + [HELDOUT_NOTE]
    return Table(name, title, metric, tasks, rows, footnotes + notes, digits=4 if metric == "heldout_loss" else 2,
                 reference=reference)


def study_tables(rows: list[StudyRow]) -> tuple[list[Table], dict[str, StudyKey]]:
    """Table 6 layout per metric; Table 19 layout when ranks vary; all configurations when a method has
    several. Returns the tables and each method's chosen configuration."""
    by_metric = {m: config_results(rows, m) for m in TABLE_METRICS}
    keys = list({k for results in by_metric.values() for k in results})
    chosen = choose_configs(by_metric, lambda k: k.method)
    several = any(sum(k.method == m for k in keys) > 1 for m in chosen)
    tables = []
    for metric, results in by_metric.items():
        if not results:
            continue
        label = METRIC_LABELS[metric]
        reference = PAPER_TABLE6_AVG if metric != "heldout_loss" else None
        notes = ([SELECTION_NOTE] if several else []) + ([PAPER_NOTE] if reference else [])
        tables.append(build_table(f"table6_{metric}", f"Table 6 layout: {label}, one row per method", metric,
                                  results, list(chosen.values()), notes, reference))
    if len({k.rank for k in keys if k.rank is not None}) > 1:
        per_rank = choose_configs(by_metric, lambda k: (k.method, k.rank))
        for metric, results in by_metric.items():
            if results:
                tables.append(build_table(f"table19_{metric}", f"Table 19 layout: {METRIC_LABELS[metric]} per "
                                          "method and rank", metric, results, list(per_rank.values()),
                                          [SELECTION_NOTE.replace("a method", "a method and rank")]))
    if several:
        for metric, results in by_metric.items():
            if results:
                tables.append(build_table(f"configs_{metric}", f"Every configuration: {METRIC_LABELS[metric]}",
                                          metric, results, keys, []))
    return tables, {m: k for m, k in chosen.items()}  # type: ignore[misc]
