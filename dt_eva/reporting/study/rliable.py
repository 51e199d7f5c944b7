"""The RL-evaluation summaries of Agarwal et al. (2021) through rliable (the optional extra `stats`): the
interquartile mean of success per method and the probability of improvement per comparison, each with a
stratified-bootstrap 95 % interval (runs resampled within each task), and performance profiles (the
fraction of runs whose success exceeds tau, with bands) as a PNG.

rliable wants a (runs x tasks) matrix per method: the seeds that ran on every one of the method's tasks
are used (the others are counted in a note). It draws from numpy's global generator, so the draws are
seeded here (and the caller's global state restored). Without rliable, `missing_note` says what to install.
"""

from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dt_eva.methods.registry import method_label, method_sort_key
from dt_eva.reporting.common.figures import pyplot
from dt_eva.reporting.common.paper import COMPARISONS
from dt_eva.reporting.common.tables import METRIC_LABELS, short_task_name
from dt_eva.reporting.study.curves import save_updates_figure
from dt_eva.reporting.study.paired import BOOTSTRAP_SEED
from dt_eva.reporting.study.rows import StudyKey, StudyRow, per_seed

REPS = 2_000  # bootstrap resamples per interval (rliable's default for profiles; a percentile 95 % interval)
IQM_METRICS = ("success_any", "success_final")
TAUS = np.linspace(0.0, 1.0, 101)
INSTALL = 'pip install "dt-eva[stats]"'


def missing_note() -> str | None:
    """None when rliable imports; else the line that says which sections need it."""
    try:
        import rliable.library  # noqa: F401
        import rliable.metrics  # noqa: F401
    except ImportError as error:
        return (f"IQM, probability of improvement and performance profiles need rliable ({INSTALL}); "
                f"not written here ({error}).")
    return None


@contextlib.contextmanager
def seeded(seed: int = BOOTSTRAP_SEED):
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass
class Scores:
    """A method's (seeds x tasks) matrix of one metric, and the runs left out to make it rectangular."""

    tasks: list[str]
    seeds: list[int]
    matrix: np.ndarray
    left_out: int


def score_matrix(per_task: dict[str, dict[int, float]], tasks: list[str] | None = None) -> Scores:
    tasks = sorted(per_task) if tasks is None else tasks
    seeds = sorted(set.intersection(*(set(per_task[t]) for t in tasks)))
    matrix = np.array([[per_task[t][s] for t in tasks] for s in seeds], dtype=np.float64).reshape(len(seeds), len(tasks))
    return Scores(tasks, seeds, matrix, sum(len(per_task[t]) for t in tasks) - len(seeds) * len(tasks))


def method_scores(rows: list[StudyRow], chosen: dict[str, StudyKey], metric: str) -> dict[str, Scores]:
    values = per_seed(rows, metric)
    out = {m: score_matrix(values[k]) for m, k in chosen.items() if k in values}
    return {m: s for m, s in sorted(out.items(), key=lambda kv: method_sort_key(kv[0])) if s.seeds}


def iqm_intervals(scores: dict[str, Scores]) -> dict[str, tuple[float, float, float]]:
    """method -> (IQM, low, high) over its (seed, task) runs, stratified by task."""
    from rliable import library, metrics

    with seeded():
        points, cis = library.get_interval_estimates({m: s.matrix for m, s in scores.items()},
                                                     lambda x: np.array([metrics.aggregate_iqm(x)]), reps=REPS)
    return {m: (float(points[m][0]), float(cis[m][0, 0]), float(cis[m][1, 0])) for m in scores}


def improvement(scores: dict[str, Scores]) -> dict[tuple[str, str], tuple[float, float, float, int]]:
    """(a, b) -> (P(a > b), low, high, tasks) over the tasks both ran, for the study's comparisons."""
    from rliable import library, metrics

    out = {}
    for a, b in COMPARISONS:
        if a not in scores or b not in scores:
            continue
        tasks = sorted(set(scores[a].tasks) & set(scores[b].tasks))
        if not tasks:
            continue
        x, y = (scores[m].matrix[:, [scores[m].tasks.index(t) for t in tasks]] for m in (a, b))
        with seeded():
            points, cis = library.get_interval_estimates({"p": [x, y]}, lambda u, v: np.array(
                [metrics.probability_of_improvement(u, v)]), reps=REPS)
        out[(a, b)] = (float(points["p"][0]), float(cis["p"][0, 0]), float(cis["p"][1, 0]), len(tasks))
    return out


def rliable_markdown(metric: str, scores: dict[str, Scores], iqm: dict, poi: dict) -> str:
    label = METRIC_LABELS[metric]
    lines = [f"### Interquartile mean and probability of improvement: {label}", "",
             "| Method | Runs | Tasks | IQM | 95 % stratified interval |", "|---|:-:|:-:|:-:|:-:|"]
    for m, (point, low, high) in iqm.items():
        s = scores[m]
        lines.append(f"| {method_label(m)} | {s.matrix.size} | {len(s.tasks)} | {point:.3f} | [{low:.3f}, {high:.3f}] |")
    if poi:
        lines += ["", "| Comparison | Tasks | P(first > second) | 95 % stratified interval |", "|---|:-:|:-:|:-:|"]
        lines += [f"| {method_label(a)} vs {method_label(b)} | {n} | {p:.3f} | [{low:.3f}, {high:.3f}] |"
                  for (a, b), (p, low, high, n) in poi.items()]
    left = [f"{method_label(m)} {s.left_out}" for m, s in scores.items() if s.left_out]
    lines += ["", (f"IQM: the mean of the middle 50 % of a method's (seed, task) {label.lower()} values "
                   "(rliable.metrics.aggregate_iqm). P(first > second): the probability that a run of the first "
                   "beats a run of the second on the same task (Mann-Whitney U / runs^2, ties half), averaged over "
                   "tasks (rliable.metrics.probability_of_improvement; unpaired: it ignores the shared seeds); 0.5 is "
                   f"no difference. Intervals: rliable's stratified percentile bootstrap, {REPS:,} resamples that "
                   f"redraw the runs within each task, numpy seed {BOOTSTRAP_SEED}.")]
    if left:
        lines.append(f"Runs left out to keep every method's seeds the same on all its tasks: {', '.join(left)}.")
    return "\n".join(lines) + "\n"


def rliable_csv(metric: str, scores: dict[str, Scores], iqm: dict, poi: dict) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["metric", "statistic", "a", "b", "runs", "tasks", "value", "ci_low", "ci_high"])
    for m, (point, low, high) in iqm.items():
        writer.writerow([metric, "iqm", m, "", scores[m].matrix.size, len(scores[m].tasks),
                         f"{point:.6g}", f"{low:.6g}", f"{high:.6g}"])
    for (a, b), (p, low, high, n) in poi.items():
        writer.writerow([metric, "probability_of_improvement", a, b, "", n, f"{p:.6g}", f"{low:.6g}", f"{high:.6g}"])
    return text.getvalue()


def plot_profiles(scores: dict[str, Scores], metric: str, path: Path) -> Path:
    """Performance profiles (rliable.library.create_performance_profile) with their 95 % bands."""
    plt = pyplot()
    from rliable import library  # optional: the `stats` extra

    with seeded():
        profiles, cis = library.create_performance_profile({method_label(m): s.matrix for m, s in scores.items()},
                                                           TAUS, reps=REPS)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, profile in profiles.items():
        line, = ax.plot(TAUS, profile, label=label)
        ax.fill_between(TAUS, cis[label][0], cis[label][1], color=line.get_color(), alpha=0.15, linewidth=0)
    tasks = sorted({short_task_name(t) for s in scores.values() for t in s.tasks})
    fig_title = f"Performance profile: fraction of runs with {METRIC_LABELS[metric].lower()} > tau ({len(tasks)} tasks)"
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    return save_updates_figure(fig, ax, "fraction of runs", fig_title, path, xlabel="tau (success rate)")
