"""A report folder, whichever report writes it: refused unless it is new, empty or an older report, and
its manifest, the list of the files the report wrote (only those are ever replaced)."""

from __future__ import annotations

import re
from pathlib import Path

from dt_eva.utils.io import atomic_write_json, check_writable_dir, load_json_object

REPORT_TITLE = "# dt-eva report"
# The files a report wrote, listed in the report folder: only these are ever replaced by the next report.
MANIFEST = ".dt-eva-report.json"
# What reports of dt-eva before the manifest wrote at the top of their folder (tables, report.md)
LEGACY_NAMES = re.compile(r"(report|table6_\w+|table19_\w+|pretrain_success|configs_\w+|comparisons\w*|curves|"
                          r"grad_norm|eva_ranks|eva_init_time|quality|tests|per_task|power|rliable)\.(md|csv)")
FIGURE_DIRS = ("curves", "heatmaps", "profiles")  # the report's folders of figures (*.png)


def check_out_dir(out: Path) -> None:
    """Before any work: `out` can be written and replaced as a whole (it is new, empty or an older report).

    The report folder is replaced atomically, so a folder holding anything the report did not write
    (by its manifest; for a report older than the manifest, by the names reports write) is refused,
    naming those files, rather than deleted.
    """
    check_writable_dir(out)
    if out.exists():
        check_writable_dir(out.parent)  # the old report is renamed away there
        foreign = foreign_files(out) if any(out.iterdir()) else []
        if foreign:
            listing = ", ".join(str(f) for f in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise ValueError(f"{out} holds files that are not a dt-eva report's, which it did not write ({listing}); "
                             "the report replaces its folder as a whole, so choose a new or empty --out (or move "
                             "those files away)")


def write_manifest(folder: Path, files: list[Path]) -> None:
    """List what the report wrote (paths relative to `folder`) in its manifest."""
    names = sorted(f.relative_to(folder).as_posix() for f in files)
    atomic_write_json(folder / MANIFEST, {"package": "dt-eva", "kind": "report", "files": names})


def foreign_files(out: Path) -> list[Path]:
    """The entries of an existing report folder that no report wrote (all of them if it is no report)."""
    entries = sorted(out.rglob("*"))
    try:
        if not (out / "report.md").read_text(encoding="utf-8").startswith(REPORT_TITLE):
            return entries or [out]
        manifest = load_json_object(out / MANIFEST)  # None when absent; damaged or too deep: ValueError
    except (OSError, ValueError):
        return entries or [out]
    listed = set(manifest.get("files") or []) if isinstance(manifest, dict) else None
    foreign = []
    for f in entries:
        rel = f.relative_to(out)
        if f.is_dir() and not f.is_symlink():
            ok = len(rel.parts) == 1 and rel.name in FIGURE_DIRS
        elif listed is not None:
            ok = f.is_file() and not f.is_symlink() and (rel.as_posix() in listed or rel.as_posix() == MANIFEST)
        else:  # a report from before the manifest: the names it writes
            ok = f.is_file() and not f.is_symlink() and (
                (len(rel.parts) == 1 and bool(LEGACY_NAMES.fullmatch(rel.name))) or (
                    len(rel.parts) == 2 and rel.parts[0] in FIGURE_DIRS and f.suffix == ".png"))
        if not ok:
            foreign.append(f)
    return foreign
