"""`dt-eva finetune`: fine-tune a pre-trained DT on one task with one method.

    dt-eva finetune --checkpoint runs/mt40-tiny --task hammer --method eva --rank 8 --rho 2 \\
        --config configs/finetune/tiny.yaml train.steps=2000
    dt-eva finetune --checkpoint runs/mt40-tiny --task hammer --method lora --resume
    dt-eva finetune ... eva.token_types=state,rtg eva.max_batches=50 --export-merged

Flags set the config keys of the same name (`--rank 8` = `rank=8`); `key=value` overrides come after.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "Fine-tune a pre-trained DT on one CW10 task (fft, lora, dora, eva, eva_dora, ...)."

# flag -> config key
_FLAG_KEYS = {"checkpoint": "checkpoint", "task": "task", "method": "method", "rank": "rank", "rho": "rho",
              "alpha": "alpha", "seed": "seed", "name": "name", "run_dir": "run_dir"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dt_eva.methods import METHODS

    parser.add_argument("--config", "-c", help="YAML preset (configs/finetune/tiny.yaml or paper.yaml); "
                        "default: the paper's values")
    parser.add_argument("--checkpoint", help="the pre-training run directory, e.g. runs/mt40-tiny")
    parser.add_argument("--task", help="the task to fine-tune on, e.g. hammer (any Meta-World task; CW10 in the paper)")
    parser.add_argument("--method", help=f"one of: {', '.join(METHODS)}")
    parser.add_argument("--rank", type=int, help="LoRA rank (EVA: the average rank of the budget)")
    parser.add_argument("--rho", type=float, help="EVA: components per layer = round(rho * rank); 1 = uniform ranks")
    parser.add_argument("--alpha", type=float, help="LoRA alpha (paper: 1)")
    parser.add_argument("--seed", type=int, help="run seed (data order, adapter init, dropout)")
    parser.add_argument("--name", help="run name (default: <pretrain>-<task>-<method>-r<rank>[-rho<rho>]-s<seed>)")
    parser.add_argument("--run-dir", dest="run_dir", help="run directory (default: next to the pre-training run)")
    parser.add_argument("--resume", action="store_true", help="continue the run from checkpoints/last.pt")
    parser.add_argument("--force", action="store_true", help="delete an existing run of the same name first")
    parser.add_argument("--export-merged", action="store_true",
                        help="also write merged_model.pt: a plain DT with the adapters folded into its weights")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. train.steps=500 eva.token_types=state,rtg")


def config_overrides(args: argparse.Namespace) -> list[str]:
    """Flags first, then the positional `key=value` overrides (which win)."""
    out = []
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    if args.export_merged:
        out.append("export_merged=true")
    return out + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    from dt_eva.config import load_config
    from dt_eva.experiments.finetune import run_finetune
    from dt_eva.runs.configs import FinetuneConfig
    from dt_eva.training import TrainingInterrupted

    if args.resume and args.force:
        raise ValueError("--resume and --force contradict each other: pass one of them")
    cfg = load_config(FinetuneConfig, args.config, config_overrides(args))
    try:
        run_dir = run_finetune(cfg, resume=args.resume, force=args.force)
    except TrainingInterrupted as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"\ndt-eva finetune: {e}", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":
        print_summary(run_dir)
    return 0


def print_summary(run_dir: Path) -> None:
    """What the run did and where its files are."""
    from dt_eva.runs.layout import RunPaths
    from dt_eva.runs.summary import read_summary

    paths = RunPaths(run_dir)
    summary = read_summary(run_dir)
    ev = summary.eval or {}
    rows = [
        ("run", f"{summary.name}  ({run_dir})"),
        ("task / method", f"{summary.task} / {summary.method}"),
        ("rank / rho / alpha", f"{summary.rank} / {summary.rho:g} / {summary.alpha:g}"),
        ("trainable params", f"{summary.trainable_params:,} of {summary.total_params:,}"),
        ("steps", f"{summary.steps:,}"),
        ("final loss", f"{summary.final_loss:.5f}"),
        ("time", f"{summary.seconds:.1f} s"),
        ("eval success (any / final)",
         f"{ev['success_any']:.3f} / {ev['success_final']:.3f}" if "success_any" in ev else "not evaluated"),
    ]
    if summary.eva_init_seconds is not None:
        rows.append(("EVA init", f"{summary.eva_init_seconds:.2f} s, total rank {summary.total_rank}  "
                     f"({paths.eva_ranks_plot})"))
    rows.append(("weights", str(paths.model)))
    if paths.merged_model.is_file():
        rows.append(("merged model", str(paths.merged_model)))
    rows.append(("metrics", f"{paths.metrics}  (tensorboard --logdir {paths.tensorboard})"))
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
