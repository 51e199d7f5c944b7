"""Cost of one `WindowSampler.sample()` relative to one tiny-scale training step.

Reference: a training step of the tiny Decision Transformer (`DTConfig.tiny()`, batch 64,
context 20): forward + MSE loss + backward + AdamW step, on the same CPU threads, fed with batches
from the sampler itself. Target: sampler time < 10 % of a step. Rounds of sampler batches and
training steps are interleaved, and the median time per call of each is reported.

Data: `--data PATH` times a real dataset from `dt-eva collect`; by default an MT40-sized synthetic
dataset (40 tasks x `--episodes` episodes of random arrays, written in the real on-disk format
and loaded through `load_dataset`) is used, since the sampler's cost depends on sizes, not values.

    python scripts/bench_sampler.py                         # synthetic 40 tasks x 50 episodes
    python scripts/bench_sampler.py --data data/mt40-tiny
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dt_eva.data import FORMAT_VERSION, WindowSampler, load_dataset
from dt_eva.data.collect import write_task_dir
from dt_eva.envs import EPISODE_LENGTH, MT40
from dt_eva.models import DecisionTransformer, DTConfig
from dt_eva.utils.io import atomic_write_json


def synthetic_dataset(root: Path, tasks: int, episodes: int, seed: int = 0) -> Path:
    """Random arrays in the on-disk format (for timing only)."""
    rng = np.random.default_rng(seed)
    names = list(MT40[:tasks])
    for task in names:
        rewards = rng.uniform(0, 10, size=(episodes, EPISODE_LENGTH)).astype(np.float32)
        rtg = np.flip(np.cumsum(np.flip(rewards.astype(np.float64), 1), 1), 1).astype(np.float32)
        arrays = {
            "observations": rng.standard_normal((episodes, EPISODE_LENGTH, 39), dtype=np.float32),
            "actions": rng.uniform(-1, 1, size=(episodes, EPISODE_LENGTH, 4)).astype(np.float32),
            "rewards": rewards,
            "successes": np.zeros((episodes, EPISODE_LENGTH), dtype=bool),
            "returns_to_go": rtg,
            "noise": np.zeros(episodes, dtype=np.float32),
            "random_prefix": np.zeros(episodes, dtype=np.int32),
        }
        write_task_dir(root / task, arrays, {"task": task, "episodes": episodes, "synthetic": True})
    atomic_write_json(root / "metadata.json", {"format_version": FORMAT_VERSION, "tasks": names, "synthetic": True})
    return root


def time_calls(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a dataset directory (default: synthetic MT40-sized data)")
    parser.add_argument("--tasks", type=int, default=40, help="synthetic data: tasks (default 40)")
    parser.add_argument("--episodes", type=int, default=50, help="synthetic data: episodes per task (default 50)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--samples", type=int, default=100, help="sampler batches per round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    from dt_eva.utils.precision import cpu_model

    # every figure names its CPU and date (docs/benchmarks.md)
    print(f"machine: {cpu_model()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.data) if args.data else synthetic_dataset(Path(tmp) / "synthetic", args.tasks, args.episodes)
        t0 = time.perf_counter()
        dataset = load_dataset(path)
        load_s = time.perf_counter() - t0
        cfg = DTConfig.tiny()
        t0 = time.perf_counter()
        sampler = WindowSampler(dataset, cfg.context_len, args.batch_size, seed=0)
        build_s = time.perf_counter() - t0

        torch.manual_seed(0)
        model = DecisionTransformer(cfg).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step() -> None:
            loss = model.loss(sampler.sample())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        sample_s: list[float] = []
        step_s: list[float] = []
        train_step()  # warm-up
        for _ in range(args.rounds):
            sample_s.append(time_calls(sampler.sample, args.samples))
            step_s.append(time_calls(train_step, args.steps))
        sample_ms = statistics.median(sample_s) * 1e3
        step_ms = statistics.median(step_s) * 1e3
        episodes = sampler.num_episodes

    source = args.data or f"synthetic {args.tasks} tasks x {args.episodes} episodes"
    print(f"data: {source} ({len(dataset.tasks)} tasks, {episodes} episodes); load_dataset {load_s:.2f} s, "
          f"WindowSampler build {build_s:.2f} s")
    print(f"tiny DT ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), batch {args.batch_size}, "
          f"context {cfg.context_len}, torch threads {torch.get_num_threads()}")
    print(f"sampler.sample(): {sample_ms:.3f} ms/batch (median of {args.rounds} rounds x {args.samples})")
    print(f"training step (fwd+bwd+AdamW, sampling included): {step_ms:.2f} ms (median of {args.rounds} x {args.steps})")
    print(f"sampler / step = {sample_ms / step_ms:.1%}  (target < 10 %)")


if __name__ == "__main__":
    main()
