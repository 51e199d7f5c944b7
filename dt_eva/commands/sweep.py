"""`dt-eva sweep`: run a grid of fine-tuning (or pre-training) runs from a sweep file.

    dt-eva sweep configs/sweeps/example.yaml --dry-run      # the runs, their status and cost estimate
    dt-eva sweep configs/sweeps/example.yaml --jobs 2       # two runs at a time, one core each
    dt-eva sweep configs/sweeps/cw10-paper.yaml --launcher slurm --partition gpu --gpus 1 --time 24:00:00

Run it again to continue: finished runs are skipped, interrupted ones resume from their checkpoint,
failed ones are tried again. The table of results is `<out>/results.csv`.
"""

from __future__ import annotations

import argparse
import sys

HELP = "Run a sweep file's grid of runs (skips finished runs, resumes interrupted ones); writes results.csv."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="the sweep file, e.g. configs/sweeps/example.yaml")
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help="runs at once (local: default 1, each pinned to its share of the cores; "
                             "slurm: default no limit)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs, their status and an estimate of their cost")
    parser.add_argument("--launcher", choices=("processes", "local", "slurm"), default="processes",
                        help="processes (default): local processes; local: submitit's LocalExecutor; "
                             "slurm: submitit on Slurm (needs the cluster extra)")
    parser.add_argument("--out", default=None, help="the sweep's folder (default: the sweep file's out:)")
    parser.add_argument("--partition", help="slurm: the partition")
    parser.add_argument("--time", help="slurm (required) / local: time limit of one run, e.g. 90, 12:00:00, 2-00:00:00")
    parser.add_argument("--gpus", type=int, default=None, help="slurm: GPUs per run (default 0)")
    parser.add_argument("--cpus-per-task", dest="cpus_per_task", type=int, default=None,
                        help="slurm: CPUs per run (also its torch threads)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dt_eva.experiments import sweep

    if args.dry_run:
        return print_plan(sweep.plan_sweep(args.sweep, args.out))
    slurm = {"partition": args.partition, "time": sweep.parse_minutes(args.time), "gpus": args.gpus,
             "cpus_per_task": args.cpus_per_task, "parallel": args.jobs}
    jobs = 1 if args.jobs is None else args.jobs  # --jobs 0 is an error, not one job
    result = sweep.run_sweep(args.sweep, jobs=jobs, launcher=args.launcher, out=args.out,
                             progress=not args.no_progress, slurm=slurm)
    done = result.ran - len(result.failed)
    print(f"\nsweep: {result.runs} run(s): {result.runs - result.ran} already finished, {done} ran now, "
          f"{len(result.failed)} failed -> {result.results}")
    for name, error in result.failed:
        print(f"  failed: {name}: {error}", file=sys.stderr)
    return 1 if result.failed else 0


def print_plan(plan) -> int:
    """One line per run (name, status, updates left, estimated training time) and the totals."""
    from dt_eva.experiments.sweep import format_duration, step_seconds, steps_left
    from dt_eva.runs.results import RESULTS, committed_results

    per_step, measured = step_seconds(plan.runs, committed_results(plan.spec.out / RESULTS))
    rows = [(r.name, "new" if r.status == "restart" else r.status, steps_left(r)) for r in plan.runs]
    width = max(len(name) for name, _, _ in rows)
    print(f"{'run':<{width}}  {'status':<6}  {'updates':>9}  estimate")
    for name, status, steps in rows:
        cost = format_duration(steps * per_step) if per_step is not None else "unknown"
        print(f"{name:<{width}}  {status:<6}  {steps:>9,}  {cost if steps else '-'}")
    counts = {s: sum(1 for _, st, _ in rows if st == s) for s in ("new", "resume", "done")}
    total = sum(steps for _, _, steps in rows)
    if per_step is None:
        basis = "unknown: no finished run to measure a step's cost on"
    else:
        basis = f"{format_duration(total * per_step)} of one core ({per_step * 1e3:.3g} ms per update, measured " \
                f"on {measured} finished run(s) with their evaluations; EVA init not included; divide by --jobs)"
    print(f"\n{len(rows)} run(s): {counts['new']} new, {counts['resume']} to resume, {counts['done']} done; "
          f"{total:,} updates left; estimate {basis}. Folder: {plan.spec.out}")
    return 0
