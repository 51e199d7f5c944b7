"""The states of a sweep's Slurm jobs, from `squeue` (works on every cluster, accounting or not).

submitit asks `sacct`, which a cluster without accounting storage answers with an error: a warning at
every poll, and a job that dies without writing its result would never be seen to end. The controller
keeps an ended job (COMPLETED, CANCELLED, FAILED, ...) for `MinJobAge` (300 s by default) after it
ends; a job that is no longer listed at all has ended too.
"""

from __future__ import annotations

import getpass
import subprocess
import time

# States of a job that has not ended (it may still write or rewrite its result). PREEMPTED: a
# requeued job passes through it; one preempted for good leaves the queue and counts as ended then.
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
ACTIVE = QUEUED | {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING",
                   "PREEMPTED"}
# A job just submitted may not be listed yet; until then it counts as queued.
LISTING_DELAY_S = 60.0


class SlurmQueue:
    """Job id (`123` or an array task `123_4`) -> its state, from one `squeue` call per refresh."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.pending: dict[str, float] = {}  # submitted, not listed yet -> when submitted
        self.started = time.monotonic()

    def submitted(self, job_ids: list[str]) -> None:
        now = time.monotonic()
        self.pending.update({job_id: now for job_id in job_ids})

    def state(self, job_id: str) -> str | None:
        """Its state; PENDING for a job just submitted and not listed yet, GONE for one the controller no
        longer knows (it ended a while ago)."""
        if job_id in self.states:
            return self.states[job_id]
        if job_id in self.pending:
            return "PENDING" if time.monotonic() - self.pending[job_id] < LISTING_DELAY_S else "GONE"
        return "GONE"

    def refresh(self, timeout: float) -> None:
        """Wait (1 s at first, then longer, up to `timeout`: a long sweep asks the controller rarely), then
        ask squeue. If it fails (the controller is restarting), the last answer stands."""
        time.sleep(min(timeout, 1.0 + (time.monotonic() - self.started) / 30))
        listed = read_queue()
        if listed is None:
            return
        self.states = listed
        for job_id in set(self.pending) & set(listed):
            del self.pending[job_id]


def read_queue() -> dict[str, str] | None:
    """This user's jobs the controller knows, array tasks one by one; None when squeue fails."""
    command = ["squeue", "--noheader", "--array", "--states=all", "--format=%i %T", f"--user={getpass.getuser()}"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)
