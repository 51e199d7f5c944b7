"""`dt-eva demo`: the whole pipeline at tiny scale (collect, pretrain, finetune LoRA vs EVA, evaluate, report)."""

from __future__ import annotations

import argparse

HELP = "The whole pipeline at tiny scale: collect, pretrain, finetune LoRA vs EVA, evaluate with uncertainty."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=None,
                        help="where datasets, runs and the report go (default: runs/demo, or runs/demo-fast with --fast)")
    parser.add_argument("--fast", action="store_true",
                        help="a ~2-minute smoke version (few episodes, a few dozen updates): checks the pipeline, "
                             "not the method")
    parser.add_argument("--task", default=None, help="the CW10 task to fine-tune on (default: window-close)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from dt_eva.experiments.demo import run_demo

    run_demo(workdir=args.workdir, fast=args.fast, task=args.task, progress=not args.no_progress)
    return 0
