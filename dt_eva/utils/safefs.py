"""Writing only to the package's own files: no writes through symbolic links, no FIFOs, and disk
errors that name the file.

A run, sweep or report folder can be handed over by someone else; a symbolic link planted in it
(`metrics.jsonl -> ~/.bashrc`, `evals -> /elsewhere`) must not turn a write of dt-eva into a write
outside the folder. Files dt-eva appends to or locks are opened with `O_NOFOLLOW` and must be regular
files; folders it writes into must not be links.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path


class LinkRefusedError(ValueError):
    """A file or folder dt-eva would write is a symbolic link or not a regular file."""


def refuse_link(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` unchanged; `LinkRefusedError` when it is a symbolic link (dangling ones too)."""
    path = Path(path)
    if path.is_symlink():
        raise LinkRefusedError(f"{path} is a symbolic link (to {os.readlink(path)}); dt-eva does not write its "
                               f"{what} through links. Remove the link (or the folder holding it) and try again")
    return path


def open_regular(path: str | os.PathLike, flags: int, what: str = "file", mode: int = 0o644) -> int:
    """`os.open(path, flags | O_NOFOLLOW)` that also refuses what is not a regular file (a FIFO, a device),
    before it could block or be truncated. Returns the descriptor."""
    path = Path(path)
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer; cleared again below
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_link(path, what)
        if e.errno in (errno.ENXIO, errno.ENODEV):
            raise LinkRefusedError(_not_regular(path, what)) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise LinkRefusedError(_not_regular(path, what))
    os.set_blocking(fd, True)
    return fd


def _not_regular(path: Path, what: str) -> str:
    return f"{path} is not a regular file (a FIFO, socket or device); dt-eva keeps its {what} there. Remove it and try again"


def open_append(path: str | os.PathLike, what: str = "file"):  # noqa: ANN201  (a text file object)
    """`path` opened to append text (created if missing), refusing links and non-regular files."""
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
    return os.fdopen(fd, "a", encoding="utf-8")


def ensure_real_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """Create folder `path` if needed; refuse it when it is a symbolic link or not a folder."""
    path = refuse_link(path, what)
    path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        raise LinkRefusedError(f"{path} exists and is not a folder; dt-eva keeps its {what} there. Move it away")
    return path


@contextlib.contextmanager
def naming_disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """An `OSError` that names no file (a full disk: `write` gives `[Errno 28]` alone) is re-raised with
    `path` as its file name, so the one-line message says where: `<path>: No space left on device`."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, os.strerror(e.errno), str(path)) from None
