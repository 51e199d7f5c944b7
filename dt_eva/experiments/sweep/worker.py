"""One sweep run in a worker process (`run_job`, what launchers start) and the cores each slot gets."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass

from dt_eva.config import load_config
from dt_eva.experiments.sweep.spec import KINDS, load_ref


@dataclass(frozen=True)
class RunJob:
    """What a worker needs to run one sweep run (picklable: it travels to submitit / Slurm jobs)."""

    name: str
    kind: str
    base: str | None
    overrides: tuple[str, ...]
    resume: bool
    cwd: str
    cores: tuple[int, ...] | None = None  # pin the process to these CPUs (local launchers)
    threads: int | None = None  # torch / OpenMP threads


def run_job(job: RunJob) -> str | None:
    """Run one sweep run in this process; None when it finished, else its error (one line). The traceback
    goes to stderr (the run's log). Called in a fresh process."""
    os.chdir(job.cwd)  # the sweep's paths are relative to where it was started
    if job.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, job.cores)
    if job.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(job.threads)
    try:
        import torch

        if job.threads:
            torch.set_num_threads(job.threads)
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "all"
        print(f"dt-eva sweep: run {job.name} on cores {cores} with {torch.get_num_threads()} torch thread(s)",
              flush=True)
        config_ref, driver_ref = KINDS[job.kind]
        cfg = load_config(load_ref(config_ref), job.base, job.overrides)
        load_ref(driver_ref)(cfg, resume=job.resume or _requeued())
        return None
    except BaseException as e:  # the sweep records it and goes on (Ctrl-C / SIGTERM: TrainingInterrupted)
        traceback.print_exc()
        return " ".join(f"{type(e).__name__}: {e}".split())


def _requeued() -> bool:
    """A Slurm job started again (preempted, `scontrol requeue`, node failure) continues its run."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def core_slots(jobs: int, cores: Iterable[int] | None = None) -> list[tuple[int, ...]]:
    """Split the usable CPUs into `jobs` disjoint sets (shared round-robin when jobs > CPUs)."""
    available = sorted(cores if cores is not None else _usable_cores())
    if jobs >= len(available):
        return [(available[i % len(available)],) for i in range(jobs)]
    share = len(available) // jobs
    return [tuple(available[i * share:(i + 1) * share]) for i in range(jobs)]


def _usable_cores() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
