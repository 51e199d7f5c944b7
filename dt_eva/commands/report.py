"""`dt-eva report`: Table 6 / Table 19 layout tables and plots from run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Tables (paper Table 6 / 19 layout) and plots from run directories."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories, or directories that hold them (searched recursively)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: reports/<name of the first RUNS path>)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no learning curves / rank heatmaps)")


def default_out_dir(first_path: str) -> Path:
    name = Path(first_path).resolve().name or "runs"
    return Path("reports") / name


def run(args: argparse.Namespace) -> int:
    from dt_eva.reporting import build_report

    out = Path(args.out) if args.out else default_out_dir(args.runs[0])
    report = build_report(args.runs, out, plots=not args.no_plots)
    for name, text in report["tables"].items():
        print(text)
    if report["skipped"]:
        print(f"Skipped {len(report['skipped'])} run(s):")
        for s in report["skipped"]:
            print(f"  - {s['run']}: {s['reason']}")
        print()
    for w in report["warnings"]:
        print(f"warning: {w}")
    print(f"Report: {len(report['runs'])} run(s) -> {out}/report.md")
    for f in report["files"]:
        print(f"  {f}")
    return 0
