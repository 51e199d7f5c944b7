"""`dt-eva evaluate`: online Meta-World rollouts of a run's model; per-task success table."""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "Online Meta-World rollouts of a run's model; success rates per task."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory (from dt-eva pretrain / finetune)")
    parser.add_argument(
        "--tasks", default=None,
        help="cw10, mt40, mt50 or a comma list (hammer,push); default: the run's own tasks",
    )
    parser.add_argument("--episodes", type=int, default=30, help="episodes per task (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed: fixes the goal layouts (default 0)")
    parser.add_argument(
        "--target-return", type=float, default=None,
        help="raw target return for every task (default: each task's best return in the training data)",
    )
    parser.add_argument(
        "--num-envs", type=int, default=None,
        help="envs stepped in lock-step, one model forward per step (default: all episodes, at most 64)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model: cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (default: torch's; 1 is faster on a busy CPU, see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--precision", default="run", choices=["run", "auto", "bf16", "fp32"],
        help="run: the precision the run trained at (default; fp32 where bf16 is not native here); "
             "auto: bf16 where native, else fp32",
    )
    parser.add_argument("--video", action="store_true", help="GIF of episode 0 of every task into <run>/videos/")
    parser.add_argument("--async", dest="asynchronous", action="store_true", help="step envs in worker processes")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def check_device(spec: str) -> str:
    """The torch device `spec` names, checked to exist here before any work; a `ValueError` otherwise."""
    import torch

    from dt_eva.utils.precision import resolve_device

    device = resolve_device(spec, key="--device ")
    try:
        torch.empty(0, device=device)  # e.g. cuda:3 on a one-GPU machine
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"--device {spec!r} cannot be used here: {str(e).splitlines()[0]}") from None
    return str(device)


def run(args: argparse.Namespace) -> int:
    from dt_eva.experiments.evaluate import EvaluationNotSaved, evaluate_run
    from dt_eva.runs.evals import best_eval, record_path

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    device = check_device(args.device)
    try:
        result = evaluate_run(
            args.run,
            tasks=args.tasks,
            episodes=args.episodes,
            seed=args.seed,
            target_return=args.target_return,
            num_envs=args.num_envs,
            device=device,
            video=args.video,
            progress=args.progress,
            asynchronous=args.asynchronous,
            precision=args.precision,
        )
    except EvaluationNotSaved as e:
        print(f"dt-eva evaluate: error: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    print(
        f"\n{result['episodes']} episodes per task, seed {result['seed']}, {result['precision']} "
        f"(trained at {result.get('train_precision') or 'unknown'}) on {result.get('cpu')}, {result['seconds']:.1f} s "
        f"({result['env_steps_per_s']:.0f} env-steps/s in rollouts); wrote {record_path(args.run, result)}"
    )
    largest = best_eval(args.run)
    if largest is not None and largest["settings"]["episodes"] > result["episodes"]:
        print(f"eval.json keeps the larger evaluation ({largest['settings']['episodes']} episodes per task, "
              f"evals/{largest['key']}.json); reports use it")
    for task, path in result.get("videos", {}).items():
        print(f"video {task}: {path}")
    return 0


def format_table(result: dict[str, Any]) -> str:
    """Per-task rows (success any / final, return mean +- std, target) and the mean row last."""
    rows = [("task", "success_any", "success_final", "return", "target")]
    for task, e in result["tasks"].items():
        rows.append((
            task, f"{e['success_any']:.3f}", f"{e['success_final']:.3f}",
            f"{e['return_mean']:.1f} +- {e['return_std']:.1f}", f"{e['target_return']:.1f}",
        ))
    m = result["mean"]
    rows.append(("mean", f"{m['success_any']:.3f}", f"{m['success_final']:.3f}", f"{m['return_mean']:.1f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)
