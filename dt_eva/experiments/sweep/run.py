"""Plan a sweep (every check before anything starts) and run what is not finished."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dt_eva.experiments.sweep.checks import check_inputs, load_configs, plan_statuses
from dt_eva.experiments.sweep.expand import SweepRun, expand
from dt_eva.experiments.sweep.folder import check_sweep_folder, open_sweep_folder
from dt_eva.experiments.sweep.launchers import make_launcher
from dt_eva.experiments.sweep.spec import RESULTS, SweepSpec, load_sweep
from dt_eva.experiments.sweep.worker import RunJob
from dt_eva.runs.results import ResultsTable


@dataclass
class SweepPlan:
    spec: SweepSpec
    runs: list[SweepRun]

    @property
    def todo(self) -> list[SweepRun]:
        return [r for r in self.runs if r.status != "done"]


@dataclass
class SweepResult:
    results: Path
    runs: int
    ran: int
    failed: list[tuple[str, str]] = field(default_factory=list)


def plan_sweep(path: str | Path, out: str | Path | None = None) -> SweepPlan:
    """Read, expand and check a sweep (every error before anything starts); decide each run's status."""
    spec = load_sweep(path, out)
    check_sweep_folder(spec)  # a folder that is not this sweep's is refused before anything
    runs = expand(spec)
    load_configs(spec, runs)
    plan_statuses(spec, runs)
    check_inputs(spec, [r for r in runs if r.status != "done"])
    return SweepPlan(spec, runs)


def run_sweep(path: str | Path, *, jobs: int = 1, launcher: str = "processes", out: str | Path | None = None,
              progress: bool = True, slurm: dict[str, Any] | None = None) -> SweepResult:
    """Run every run of the sweep that is not finished; returns where the table is and what failed.

    launcher: "processes" (local processes, `jobs` at a time, each pinned to its share of the cores),
    "local" (submitit's LocalExecutor, the same way) or "slurm" (submitit; `slurm` holds partition,
    time (minutes), gpus, cpus_per_task; `jobs` caps how many run at once).
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    plan = plan_sweep(path, out)  # every check before the folder is touched
    spec = plan.spec
    backend = make_launcher(launcher, spec.out, jobs, slurm or {}) if plan.todo else None  # its checks too
    folder = open_sweep_folder(spec)  # locked for the life of the sweep: a second one on it is refused
    try:
        plan_statuses(spec, plan.runs)  # again, under the lock: another sweep may have ended runs meanwhile
        todo = plan.todo
        table = ResultsTable(spec.out / RESULTS, spec.kind, list(spec.grid), plan.runs)
        table.write()
        if todo:
            execute(todo, spec, backend, table, progress)
    finally:
        folder.release()
    return SweepResult(table.path, len(plan.runs), len(todo), table.failed())


def execute(runs: list[SweepRun], spec: SweepSpec, launcher: Any, table: ResultsTable, progress: bool) -> None:
    """Keep `launcher.capacity` runs going until all ended; record each in the table as it ends.
    Ctrl-C or SIGTERM stops the running ones (local runs checkpoint first) and re-raises."""
    from tqdm.auto import tqdm

    queue, running = list(runs), {}  # running: slot -> (run, handle)
    ended: dict[str, int] = {"done": 0, "failed": 0}
    shown: tuple = ()
    capacity = launcher.capacity or len(runs)
    bar = tqdm(total=len(runs), desc=f"sweep {spec.path.stem}", unit="run", disable=not progress, dynamic_ncols=True)
    with _sigterm_as_interrupt():
        try:
            while queue or running:
                batch = [(slot, queue.pop(0)) for slot in range(capacity) if slot not in running and queue]
                if batch:
                    handles = launcher.start([_job(spec, run, *launcher.placement(slot)) for slot, run in batch])
                    running.update({slot: (run, h) for (slot, run), h in zip(batch, handles)})
                launcher.wait([h for _, h in running.values()], timeout=5.0)
                for slot, (run, handle) in list(running.items()):
                    finished, error = launcher.poll(handle)
                    if finished:
                        del running[slot]
                        table.record(run, error)
                        ended["failed" if error else "done"] += 1
                        bar.update(1)
                shown = _show_progress(bar, launcher, [h for _, h in running.values()], ended, shown)
        except BaseException:
            launcher.stop([h for _, h in running.values()])
            raise
        finally:
            bar.close()


def _show_progress(bar: Any, launcher: Any, handles: list[Any], ended: dict[str, int], shown: tuple) -> tuple:
    """The bar's `queued=.. running=.. done=.. failed=..` (on Slurm a run may wait in the queue), redrawn
    when it changes; returns what it shows."""
    states = [launcher.state(h) for h in handles]
    counts = {"queued": states.count("queued"), "running": states.count("running"), **ended}
    if tuple(counts.values()) != shown:
        bar.set_postfix(counts, refresh=True)
    return tuple(counts.values())


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a scheduler, a session's end) stops the sweep as Ctrl-C does: its runs checkpoint
    and stop, so that none goes on alone. (A sweep started in the background by a script ignores SIGINT,
    so SIGTERM is how one stops it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _job(spec: SweepSpec, run: SweepRun, cores: tuple[int, ...] | None, threads: int | None) -> RunJob:
    return RunJob(run.name, spec.kind, spec.base, tuple(run.overrides), run.resume, os.getcwd(), cores, threads)
