"""Atomic file writes: write to a temporary file in the target directory, fsync, then rename.

A crash, SIGKILL or Ctrl-C at any point leaves either the old file or the new one, never a
half-written file. Every checkpoint, dataset file, JSON and result in dt_eva goes through here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


class DiskFullError(OSError):
    """A write failed because the file system that holds it is full (or the user is over quota).
    Its message names the file the write was for; `str()` is that message alone."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`.

    The temporary name keeps `suffix` (e.g. ".npy") so writers that append extensions behave.
    On any exception (including KeyboardInterrupt) the temporary file is removed; a full disk
    becomes a `DiskFullError` naming `path`. The file gets the mode a plain `open()` would give
    it (0666 less the umask), not the temporary file's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=(suffix or ".tmp"), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~current_umask())
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        full = _disk_full(e, path.parent)  # before the partial file is removed and its space freed
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if full:
            raise _disk_full_error(path) from e
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; on success rename it onto `path`.

    An existing directory at `path` is replaced only after the new one is complete. As with
    `atomic_path`: the temporary is removed on failure, a full disk is a `DiskFullError` naming
    `path`, and the directory gets 0777 less the umask (not 0700).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmpdir", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        full = _disk_full(e, path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise _disk_full_error(path) from e
        raise


def current_umask() -> int:
    """The process's umask, read without changing it (Linux reports it in /proc); elsewhere it is
    set and restored at once."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Below this much free space, a failed write is taken for a full disk: writers that do not say so
# (torch's zip writer: "unexpected pos ...", NumPy: "N requested and M written") fail exactly then.
_FULL_BELOW = 1 << 20


def _disk_full(error: BaseException, folder: Path) -> bool:
    if isinstance(error, DiskFullError) or (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)):
        return True
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < _FULL_BELOW


def _disk_full_error(path: Path) -> DiskFullError:
    return DiskFullError(errno.ENOSPC, f"no space left on device while writing {path}: free space or choose "
                                       "another folder")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], None], suffix: str = "") -> None:
    """Call `writer(tmp_path)` and atomically move the result onto `path`."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch  # local: keep this module importable without torch

    atomic_save(path, lambda tmp: torch.save(obj, tmp))


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of `path`; a file that is not UTF-8 is `ValueError("<what> <path> is not UTF-8
    text (...)")` (Python's codec error names no file). OSErrors pass through."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text ({e}); save it as UTF-8") from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in `path`. A file that cannot be read, is not UTF-8 JSON or is nested too deeply
    for Python's parser (`[[[[...` 100000 deep) raises `ValueError("<path> is corrupt (...)")`."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except RecursionError:
        reason = _TOO_DEEP
    except UnicodeDecodeError as e:
        reason = f"not UTF-8 text: {e}"
    except json.JSONDecodeError as e:
        reason = f"not valid JSON: {e}"
    except (OSError, ValueError) as e:
        reason = str(e)
    raise ValueError(f"{path} is corrupt ({reason})")


def load_json_object(path: str | os.PathLike, *, required: bool = False,
                     error: type[ValueError] = ValueError) -> dict[str, Any] | None:
    """The one JSON-object reader: the object in `path`. A missing file is None, or with `required` a
    damaged one. A file that cannot be read, is not UTF-8 JSON, is nested too deeply or holds something
    other than an object raises `error("<path> is corrupt (...)")`, `error` being the caller's kind of
    `ValueError` (`DatasetError` for a dataset's files). Callers that collect problems wrap it."""
    path = Path(path)
    if not required and not path.is_file():
        return None
    try:
        obj = read_json(path)
    except ValueError as e:
        raise error(str(e)) from None
    if not isinstance(obj, dict):
        raise error(f"{path} is corrupt (not a JSON object)")
    return obj


def read_yaml(path: str | os.PathLike, loader: Any = None) -> Any:
    """The YAML document in `path`, read with `loader` (default PyYAML's safe loader). Not UTF-8, not
    YAML or nested too deeply: `ValueError("<path> is not valid YAML (...)")`; a missing file is
    `FileNotFoundError`."""
    import yaml  # local: most users of this module write files and never parse YAML

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid YAML (not UTF-8 text: {e})") from None
    try:
        return yaml.load(text, Loader=loader or yaml.SafeLoader)
    except RecursionError:
        raise ValueError(f"{path} is not valid YAML ({_TOO_DEEP})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None


def read_metrics(path: str | os.PathLike, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """The records of a run's `metrics.jsonl`: JSON objects with an integer "step".

    A bad line (not UTF-8, not JSON, not an object, no integer step; e.g. the torn last line of a
    killed run) is skipped, and a line naming the file and line number is appended to `problems`.
    A missing file gives an empty list.
    """
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        reason = None
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            reason = f"not UTF-8 text ({e.reason} at byte {e.start})"
        except json.JSONDecodeError as e:
            reason = f"not valid JSON ({e.msg})"
        else:
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(record, dict):
                reason = "not a JSON object"
            elif not isinstance(step, int) or isinstance(step, bool):
                reason = f"its step {step!r} is not an integer"
        if reason is not None:
            if problems is not None:
                problems.append(f"{path} line {number}: {reason}; line skipped")
            continue
        out.append(record)
    return out


def check_writable_dir(path: str | os.PathLike) -> None:
    """Fail before any work when files cannot be created in `path`.

    A `path` that does not exist yet is checked where it would be created (the nearest existing
    folder above it). The check creates and removes a file, so it holds for any user (root too) and
    file system (read-only mounts too). A failure is the `OSError` the work would have met later,
    with `path` as its file name (e.g. `PermissionError: [Errno 13] Permission denied: 'runs/x'`).
    """
    path = Path(path)
    target = path
    while not target.exists() and target.parent != target:
        target = target.parent
    if not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    try:
        fd, probe = tempfile.mkstemp(prefix=".dt-eva-write-check.", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


_TOO_DEEP = "nested too deeply to parse; dt-eva never writes such a file"


def _json_default(o: Any) -> Any:
    # numpy / torch scalars and arrays, Paths
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
