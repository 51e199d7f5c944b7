"""`dt-eva collect`: generate a Meta-World dataset with scripted expert policies plus action noise."""

from __future__ import annotations

import argparse

HELP = "Generate a Meta-World dataset with scripted expert policies plus action noise."


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", required=True,
                        help="mt40, cw10, mt50, or a comma list of task names (hammer or hammer-v3)")
    parser.add_argument("--episodes", type=int, required=True,
                        help="episodes per task, split evenly over the noise levels (x random prefixes)")
    parser.add_argument("--noise", type=_float_list, default=[0.0, 0.1, 0.3, 0.5],
                        help="Gaussian action-noise stds, comma-separated (default 0,0.1,0.3,0.5)")
    parser.add_argument("--random-prefix", type=_int_list, default=[0], metavar="K,...",
                        help="also split episodes over these counts of leading uniform-random steps "
                             "before the expert takes over (default 0: expert from the start)")
    parser.add_argument("--out", required=True, help="dataset directory, e.g. data/mt40-tiny")
    parser.add_argument("--seed", type=int, default=0,
                        help="dataset seed: goal layouts and noise (default 0); see data/README.md")
    parser.add_argument("--workers", type=int, default=2, help="parallel worker processes (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dt_eva.data import collect_dataset, dataset_summary
    from dt_eva.utils.io import check_writable_dir

    check_writable_dir(args.out)  # before any rollout: a read-only --out fails here
    result = collect_dataset(
        args.out,
        args.tasks,
        episodes=args.episodes,
        noise_levels=args.noise,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
        random_prefixes=args.random_prefix,
    )
    run_info = result["run"]
    print(dataset_summary(result))
    speed = f", {run_info['env_steps_per_s']:.0f} env steps/s" if run_info["env_steps_per_s"] else ""
    print(
        f"\n{args.out}: {len(result['tasks'])} tasks; collected {len(run_info['collected'])} "
        f"(skipped {len(run_info['skipped'])} already complete) in {run_info['seconds']:.1f} s{speed}"
    )
    return 0
