"""Launchers: start runs, tell when they end, stop them. Local processes or submitit (local / Slurm).

Each has `capacity` (runs at once, None: no limit), `placement(slot)` (cores, threads), `start(jobs)`
-> handles, `state(handle)` (queued / running), `poll(handle)` -> (finished, error), `wait(handles,
timeout)` and `stop(handles)`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from dt_eva.experiments.sweep.slurm import ACTIVE, QUEUED, SlurmQueue
from dt_eva.experiments.sweep.spec import LOGS
from dt_eva.experiments.sweep.worker import RunJob, core_slots, run_job
from dt_eva.utils.safefs import ensure_real_dir, open_append

# What a run imports; a fork server imports it once, so that each run does not pay ~5 s of CPU for it.
PRELOAD = ["dt_eva.experiments.finetune", "dt_eva.experiments.pretrain", "dt_eva.evaluation", "dt_eva.envs",
           "torch.utils.tensorboard", "matplotlib.pyplot"]


class ProcessLauncher:
    """Each run in a fresh local process, pinned to one slot's cores, its output in `<out>/logs/<name>.log`.
    The processes fork from multiprocessing's fork server, which has only imported `PRELOAD` (no torch
    state of the sweep, no threads); where there is none, they start from scratch (spawn)."""

    def __init__(self, jobs: int, logs: Path) -> None:
        import multiprocessing

        self.capacity, self.logs, self.slots = jobs, logs, core_slots(jobs)
        if "forkserver" in multiprocessing.get_all_start_methods():
            self.ctx = multiprocessing.get_context("forkserver")
            self.ctx.set_forkserver_preload(PRELOAD)
        else:
            self.ctx = multiprocessing.get_context("spawn")

    def placement(self, slot: int) -> tuple[tuple[int, ...] | None, int | None]:
        """The cores and threads of the run in `slot`."""
        return self.slots[slot], len(self.slots[slot])

    def start(self, jobs: list[RunJob]) -> list[Any]:
        ensure_real_dir(self.logs, "sweep logs")
        handles = []
        for job in jobs:
            receive, send = self.ctx.Pipe(duplex=False)
            process = self.ctx.Process(target=_process_main, args=(job, send, str(self.logs / f"{job.name}.log")),
                                       name=f"dt-eva-sweep:{job.name}")
            process.start()
            send.close()
            handles.append((process, receive))
        return handles

    def state(self, handle: Any) -> str:
        return "running"

    def poll(self, handle: Any) -> tuple[bool, str | None]:
        process, receive = handle
        if receive.poll():
            error = receive.recv()
            process.join()
            return True, error
        if process.is_alive():
            return False, None
        process.join()
        return True, _exit_message(process.exitcode)

    def wait(self, handles: list[Any], timeout: float) -> None:
        from multiprocessing.connection import wait

        wait([h[0].sentinel for h in handles] + [h[1] for h in handles], timeout)

    def stop(self, handles: list[Any]) -> None:
        """Let each run save a checkpoint and stop (a later sweep resumes it). After Ctrl-C in a terminal
        the runs got the SIGINT too: give them time, since a second signal stops a run without saving."""
        deadline = time.monotonic() + 10
        for process, _ in handles:
            process.join(max(deadline - time.monotonic(), 0))
        for process, _ in handles:
            if process.is_alive():
                process.terminate()  # SIGTERM: checkpoint, then stop
        for process, _ in handles:
            process.join(120)
            if process.is_alive():
                process.kill()


def _process_main(job: RunJob, send: Any, log: str) -> None:
    try:
        f = open_append(log, "sweep log")  # a planted link must not make the run append elsewhere
    except (OSError, ValueError) as e:  # the run fails with this message; the sweep goes on
        send.send(" ".join(f"{type(e).__name__}: {e}".split()))
        return
    with f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    error = run_job(job)
    sys.stdout.flush()
    sys.stderr.flush()
    send.send(error)


def _exit_message(code: int | None) -> str:
    if code is not None and code < 0:
        return f"the run's process was killed by signal {-code}"
    return f"the run's process ended with exit code {code} before reporting"


class SubmititLauncher:
    """Runs as submitit jobs: `cluster="local"` (its LocalExecutor, on this machine) or `"slurm"`
    (`SlurmLauncher`)."""

    def __init__(self, cluster: str, folder: Path, jobs: int, slurm: dict[str, Any]) -> None:
        try:
            import submitit
        except ImportError:
            raise ValueError("--launcher local / slurm needs submitit: pip install 'dt-eva[cluster]'") from None
        # Locally at most `jobs` at a time, pinned like ProcessLauncher; on Slurm every run is submitted at
        # once (one array) and `jobs` caps how many run together.
        self.cluster = cluster
        self.capacity = jobs if cluster == "local" else None
        self.slots = core_slots(jobs) if cluster == "local" else None
        self.threads = slurm.get("cpus_per_task")
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        minutes = slurm.get("time") or 7 * 24 * 60
        params: dict[str, Any] = {"timeout_min": minutes, "name": "dt-eva-sweep"}
        if cluster == "slurm":
            params.update(slurm_partition=slurm.get("partition"), gpus_per_node=slurm.get("gpus") or 0,
                          cpus_per_task=slurm.get("cpus_per_task"))
            params["slurm_array_parallelism"] = slurm.get("parallel")
            # A preempted (or node-failed) job goes back to the queue; its next start resumes the run.
            params["slurm_additional_parameters"] = {"requeue": True}
        self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})

    def placement(self, slot: int) -> tuple[tuple[int, ...] | None, int | None]:
        if self.slots is None:  # Slurm: the job's allocation holds its CPUs
            return None, self.threads
        return self.slots[slot], len(self.slots[slot])

    def start(self, jobs: list[RunJob]) -> list[Any]:
        with self.executor.batch():  # one Slurm array per batch of runs
            handles = [self.executor.submit(run_job, job) for job in jobs]
        return handles

    def state(self, handle: Any) -> str:
        """queued or running (of a run that has not ended)."""
        return "running"

    def poll(self, handle: Any) -> tuple[bool, str | None]:
        if not handle.done():
            return False, None
        return True, _job_outcome(handle)

    def wait(self, handles: list[Any], timeout: float) -> None:
        time.sleep(min(timeout, 1.0))

    def stop(self, handles: list[Any]) -> None:
        for job in handles:
            job.cancel(check=False)


def _job_outcome(handle: Any) -> str | None:
    """The run's error (None: it finished) from a job whose result file is written."""
    error = handle.exception()
    if error is not None:  # the job itself died (killed, timed out, node failure)
        lines = [line for line in str(error).splitlines() if line.strip()]
        return f"submitit job {handle.job_id} failed: {lines[-1] if lines else type(error).__name__}"
    return handle.result()


class SlurmLauncher(SubmititLauncher):
    """submitit on Slurm, with job states from `squeue` (`SlurmQueue`) rather than submitit's `sacct`,
    which clusters without accounting do not have (it would warn at every poll and never see a job end)."""

    def __init__(self, folder: Path, jobs: int, slurm: dict[str, Any]) -> None:
        if shutil.which("sbatch") is None:
            raise ValueError("--launcher slurm: sbatch is not on this machine's PATH; run the sweep on a Slurm "
                             "login node (or use --launcher processes / local here)")
        super().__init__("slurm", folder, jobs, slurm)
        self.threads = self.threads or 1  # a job gets one CPU unless --cpus-per-task says more
        self.queue = SlurmQueue()

    def start(self, jobs: list[RunJob]) -> list[Any]:
        handles = super().start(jobs)
        self.queue.submitted([h.job_id for h in handles])
        return handles

    def state(self, handle: Any) -> str:
        return "queued" if self.queue.state(handle.job_id) in QUEUED else "running"

    def poll(self, handle: Any) -> tuple[bool, str | None]:
        state = self.queue.state(handle.job_id)
        if state in ACTIVE:  # a requeued job may have a stale result file: wait for it
            return False, None
        if not handle.paths.result_pickle.exists():
            return True, f"Slurm job {handle.job_id} ended ({state}) without a result; " \
                         f"its log: {handle.paths.stderr}{_last_line(handle.paths.stderr)}"
        error = _job_outcome(handle)
        if error is not None and state != "COMPLETED":
            error = f"{error} (Slurm job {handle.job_id}: {state})"
        return True, error

    def wait(self, handles: list[Any], timeout: float) -> None:
        self.queue.refresh(timeout)

    def stop(self, handles: list[Any]) -> None:
        pass  # Slurm jobs keep running on the cluster; a later `dt-eva sweep` finds their results


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1]}" if lines else ""


def make_launcher(name: str, out: Path, jobs: int, slurm: dict[str, Any]) -> Any:
    """The launcher, made after every check (submitit creates its folder)."""
    if name == "processes":
        return ProcessLauncher(jobs, out / LOGS)
    if name in ("local", "slurm"):
        if name == "slurm" and not slurm.get("time"):
            raise ValueError("--launcher slurm needs --time (the wall-clock limit of one run, e.g. --time 24:00:00): "
                             "submitit's default is 5 minutes")
        if name == "slurm":
            return SlurmLauncher(out / "submitit", jobs, slurm)
        return SubmititLauncher(name, out / "submitit", jobs, slurm)
    raise ValueError(f"unknown launcher {name!r}; use processes, local or slurm")
