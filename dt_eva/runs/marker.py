"""The marker that makes a directory a dt-eva run: `meta.json` with the package's name, the run's
kind and a run id. Only a marked directory is ever resumed into, replaced or cleared.

Runs of the legacy format (`layout.LEGACY_FORMAT`) carry no `package` / `run_id`; their `meta.json`
names dt-eva in its recorded library versions, which marks them as ours too.
"""

from __future__ import annotations

import datetime
import sys
import uuid
from pathlib import Path
from typing import Any

from dt_eva.runs.layout import KINDS, META, PACKAGE
from dt_eva.utils.io import atomic_write_json, load_json_object
from dt_eva.utils.versions import library_versions


def read_meta(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's `meta.json` as a dict; None when there is none; `ValueError` when it is damaged."""
    path = Path(run_dir) / META
    try:
        meta = load_json_object(path)
    except ValueError as e:  # names the file
        raise ValueError(f"{e}; the run directory is damaged") from None
    if meta is None:
        return None
    _check_types(path, meta)
    return meta


# the JSON type of each entry dt-eva writes (and later reads as that type)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "package": (str,), "kind": (str,), "run_id": (str,), "versions": (dict,), "command": (list,),
    "created": (str,), "resumed": (list,), "task": (str,), "method": (str,), "base": (dict,), "model": (dict,),
}
_BASE_TYPES: dict[str, tuple[type, ...]] = {"path": (str,), "sha256": (str,), "step": (int, type(None))}
_JSON_NAMES = {str: "a string", dict: "an object", list: "a list", int: "an integer", type(None): "null"}


def _check_types(path: Path, meta: dict[str, Any]) -> None:
    """A `meta.json` entry of the wrong type is a damaged (or hand-edited) marker: name the entry."""
    entries = [(key, meta.get(key), types) for key, types in _FIELD_TYPES.items()]
    base = meta.get("base")
    if isinstance(base, dict):
        entries += [(f"base.{key}", base.get(key), types) for key, types in _BASE_TYPES.items()]
    for key, value, types in entries:
        if value is None or (isinstance(value, types) and not isinstance(value, bool)):
            continue
        expected = " or ".join(_JSON_NAMES[t] for t in types)
        raise ValueError(f"{path}: {key!r} is {value!r}, expected {expected}; the run directory is damaged "
                         "(restore its meta.json, or delete the folder to start the run again)")


def is_marked(meta: dict[str, Any] | None) -> bool:
    """True for the `meta.json` of a dt-eva run (this version's marker or the legacy format's)."""
    if not meta or meta.get("kind") not in KINDS:
        return False
    if meta.get("package") == PACKAGE and meta.get("run_id"):
        return True
    versions = meta.get("versions")
    return isinstance(versions, dict) and PACKAGE in versions  # LEGACY_FORMAT


def is_run_dir(path: str | Path) -> bool:
    """True when `path` is a directory that dt-eva marked as one of its runs."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        return is_marked(read_meta(path))
    except ValueError:
        return False


def run_kind(run_dir: str | Path) -> str:
    """"pretrain" or "finetune"; a directory that is not a marked run is a `ValueError` naming it."""
    meta = read_meta(run_dir)
    if not is_marked(meta):
        raise ValueError(
            f"{run_dir} is not a dt-eva run directory (no meta.json written by dt-eva); pass a directory made by "
            "`dt-eva pretrain` or `dt-eva finetune`"
        )
    return str(meta["kind"])  # type: ignore[index]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_meta(run_dir: str | Path, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mark `run_dir` as a run (new `meta.json`), or record a resume in the existing one."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; expected one of {KINDS}")
    meta = read_meta(run_dir)
    if meta is None:
        meta = {"package": PACKAGE, "kind": kind, "run_id": uuid.uuid4().hex, "versions": library_versions(),
                "command": list(sys.argv), "created": _now()}
    else:
        meta.setdefault("package", PACKAGE)
        meta.setdefault("run_id", uuid.uuid4().hex)  # a LEGACY_FORMAT run gets its id when resumed
        meta.setdefault("resumed", []).append({"at": _now(), "command": list(sys.argv), "versions": library_versions()})
    meta.update(extra or {})
    atomic_write_json(Path(run_dir) / META, meta)
    return meta
