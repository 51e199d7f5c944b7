"""`dt-eva pretrain`: pre-train a Decision Transformer from a YAML preset plus key=value overrides.

    dt-eva pretrain --config configs/pretrain/tiny.yaml train.steps=2000 name=my-run
    dt-eva pretrain --config configs/pretrain/tiny.yaml name=my-run --resume
    torchrun --nproc_per_node=2 -m dt_eva.cli pretrain --config configs/pretrain/paper.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "Pre-train a Decision Transformer (default: on MT40)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config (e.g. configs/pretrain/tiny.yaml); default: built-in paper values")
    parser.add_argument("--resume", action="store_true", help="continue the run in run_dir from checkpoints/last.pt")
    parser.add_argument("--force", action="store_true", help="delete an existing run directory of the same name first")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.steps=500 optim.lr=3e-4"
    )


def run(args: argparse.Namespace) -> int:
    from dt_eva.config import load_config
    from dt_eva.experiments.pretrain import run_pretrain
    from dt_eva.runs.configs import PretrainConfig
    from dt_eva.training import TrainingInterrupted

    if args.resume and args.force:
        raise ValueError("--resume and --force contradict each other: pass one of them")
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    try:
        run_dir = run_pretrain(cfg, resume=args.resume, force=args.force)
    except TrainingInterrupted as e:
        if _is_main():
            print(f"\ndt-eva pretrain: {e}", file=sys.stderr)
        return 130
    if _is_main():
        print_summary(run_dir)
    return 0


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def print_summary(run_dir: Path) -> None:
    """A short table of what the run did and where its files are."""
    from dt_eva.runs.layout import RunPaths
    from dt_eva.runs.summary import read_summary

    paths = RunPaths(run_dir)
    summary = read_summary(run_dir)
    ev = summary.eval or {}
    rows = [
        ("run", summary.name),
        ("steps", f"{summary.steps:,}"),
        ("final loss", f"{summary.final_loss:.5f}"),
        ("time", _duration(summary.seconds)),
        ("tokens/s", f"{summary.tokens_per_s:,.0f}"),
        ("processes / device", f"{summary.world_size} x {summary.device} ({summary.precision})"),
        ("parameters", f"{summary.parameters:,}"),
        (
            "eval success (any / final)",
            f"{ev['success_any']:.3f} / {ev['success_final']:.3f}" if "success_any" in ev else "not evaluated",
        ),
        ("model", str(paths.model)),
        ("config", str(paths.config)),
        ("metrics", f"{paths.metrics}  (tensorboard --logdir {paths.tensorboard})"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
