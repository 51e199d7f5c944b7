"""An exclusive lock on a run directory for the life of a run.

`fcntl.flock` on `<run>/.dt-eva.lock`: the kernel releases it when the process exits, however it
exits (SIGKILL included), so a stale lock file never blocks a later run. The file holds the
holder's pid, host, command and start time, for the error message of the process that is refused.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from dt_eva.runs.layout import LOCK
from dt_eva.utils.safefs import naming_disk_errors, open_regular


class RunLockedError(ValueError):
    """Another process holds the run directory."""


class RunLock:
    """`with RunLock(run_dir):` holds the lock of `run_dir` (which must exist). `what` names the folder
    in the message of a refused process."""

    def __init__(self, run_dir: str | Path, what: str = "run directory", hint: str = "choose another name= / run_dir=") -> None:
        self.path = Path(run_dir) / LOCK
        self.what, self.hint = what, hint
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, "lock file")  # never a link's target, never a FIFO
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.what} {self.path.parent} is in use by another dt-eva process ({holder}); wait for it to "
                f"finish or stop it, or {self.hint}"
            ) from None
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv, "since": now}
        try:
            with naming_disk_errors(self.path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        command = " ".join(str(a) for a in holder.get("command", []))
        return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}: {command}"
    except (OSError, ValueError, AttributeError):
        return "holder unknown"
