"""`dt-eva report`: Table 6 / Table 19 layout tables and plots from run directories, or the study report
(tables, paired comparisons, curves, EVA ranks) from a sweep's results.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("Tables (paper Table 6 / 19 layout) and plots from run directories, or the study report from a "
        "sweep's results.csv.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories, or directories that hold them (searched recursively); "
                                                "or sweep folders / results.csv files for the study report (several: "
                                                "a study run in phases, pooled; a folder of sweep folders too)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: reports/<name of the first RUNS path>)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no curves / rank heatmaps)")
    parser.add_argument("--run-dirs", action="store_true",
                        help="report the run directories below a sweep folder instead of its results.csv")
    parser.add_argument("--power-delta", type=float, action="append", default=None, metavar="DELTA",
                        help="study report: a success-rate difference in (0, 1] to size the design for (the pairs it "
                             "would need at 80 %% power); repeat for several (default 0.01 0.02 0.04 0.10)")


def default_out_dir(first_path: str) -> Path:
    path = Path(first_path).resolve()
    name = (path.parent.name if path.is_file() else path.name) or "runs"
    return Path("reports") / name


def run(args: argparse.Namespace) -> int:
    from dt_eva.reporting.study import results_csvs_of
    from dt_eva.reporting.study.power import DEFAULT_DELTAS, check_deltas

    out = Path(args.out) if args.out else default_out_dir(args.runs[0])
    deltas = check_deltas(args.power_delta or list(DEFAULT_DELTAS))
    if not args.run_dirs and results_csvs_of(args.runs) is not None:
        return study(args.runs, out, not args.no_plots, deltas)
    if args.power_delta:
        raise ValueError("--power-delta sizes the study report: pass sweep folders (with a results.csv), not run "
                         "directories")
    from dt_eva.reporting import build_report

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


def study(results: list[str], out: Path, plots: bool, deltas: list[float]) -> int:
    from dt_eva.reporting.study import build_study_report

    report = build_study_report(results, out, plots=plots, power_deltas=deltas)
    print(report["header"] + "\n")
    for text in report["sections"]:
        print(text)
    if report["excluded"]:
        print(f"Excluded {len(report['excluded'])} run(s) that did not finish:")
        for name, status, error in report["excluded"]:
            print(f"  - {name} ({status}): {error or 'no error recorded'}")
        print()
    for w in report["warnings"]:
        print(f"warning: {w}")
    print(f"Study report: {len(report['rows'])} run(s) -> {out}/report.md")
    for f in report["files"]:
        print(f"  {f}")
    return 0
