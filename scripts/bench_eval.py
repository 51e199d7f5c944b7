"""Benchmark of batched online evaluation (`dt_eva.evaluation.evaluate_policy`) against the bare simulator.

Prints env-steps/s of, in the same process and on the same goal layouts:
  sim          the bare simulator on ONE core: the same lock-step envs stepped by Meta-World's
               scripted policies (no model, no vector-env wrapper), pinned to one core;
  eval 1 core  `evaluate_policy` pinned to one core (env_workers=0, one torch thread);
  eval N cores `evaluate_policy` on N cores (the model in this process, the envs' physics in
               worker processes; `env_workers`, default: what `evaluate_policy` picks for N cores);
  reference    (optional, --ref-episodes) one env, one episode at a time, full forward per step,
and the ratios to the one-core simulator (issue 9 targets: >= 0.6 on one core, >= 1.0 on two).
Env construction is excluded everywhere. The model has random weights (speed does not depend on them).

    python scripts/bench_eval.py                       # the tiny preset as configured: K 10, 20 envs
    python scripts/bench_eval.py --cores 1,2 --precision fp32 --rounds 3
    python scripts/bench_eval.py --model paper --tasks hammer --episodes 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def load_model(name: str):
    from dt_eva.models import DecisionTransformer, DTConfig

    if name == "tiny-preset":  # the model section of configs/pretrain/tiny.yaml (K 10)
        import yaml

        cfg = DTConfig.from_dict(yaml.safe_load((REPO / "configs/pretrain/tiny.yaml").read_text())["model"])
    else:
        cfg = DTConfig.tiny() if name == "tiny" else DTConfig.paper()
    torch.manual_seed(0)
    return DecisionTransformer(cfg)


def pin_to_cores(n: int) -> set[int]:
    """Restrict this process (and the workers it starts) to its first `n` allowed cores; returns the old set."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(old)[:n])
    return old


def bare_sim_steps_per_s(tasks: list[str], episodes: int, seed: int) -> float:
    """Scripted policies stepping the same layouts in lock-step (what the evaluation envs cost)."""
    from metaworld.policies import ENV_POLICY_MAP

    from dt_eva.envs import EPISODE_LENGTH
    from dt_eva.evaluation import SlotPool, episode_layout

    jobs = [(t, j) for j in range(episodes) for t in tasks]
    pool = SlotPool()
    envs = pool.take([t for t, _ in jobs])
    policies = [ENV_POLICY_MAP[t]() for t, _ in jobs]
    for env, (_, j) in zip(envs, jobs):
        env.layout = episode_layout(seed, j)
        env.reset()  # builds the layouts outside the timed part
    start = time.perf_counter()
    obs = [env.reset()[0] for env in envs]
    for _ in range(EPISODE_LENGTH):
        for i, env in enumerate(envs):
            obs[i] = env.step(policies[i].get_action(obs[i]))[0]
    seconds = time.perf_counter() - start
    pool.close()
    return len(jobs) * EPISODE_LENGTH / seconds


def reference_steps_per_s(model, tasks: list[str], episodes: int, seed: int, target: float) -> float:
    from dt_eva.envs import EPISODE_LENGTH, fix_goal, make_env
    from dt_eva.evaluation import episode_layout, eval_mode, rollout_reference_episode

    seconds, steps = 0.0, 0
    with eval_mode(model):
        for task in tasks:
            env = make_env(task, episode_layout(seed, 0)[0])
            for j in range(episodes):
                fix_goal(env, episode_layout(seed, j)[1])
                start = time.perf_counter()
                rollout_reference_episode(model, env, target)
                seconds += time.perf_counter() - start
                steps += EPISODE_LENGTH
            env.close()
    return steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny-preset", "tiny", "paper"], default="tiny-preset",
                        help="tiny-preset: configs/pretrain/tiny.yaml's model (K 10); tiny: DTConfig.tiny() (K 20)")
    parser.add_argument("--tasks", default="hammer,push-wall,faucet-close,push,window-close")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task (all in lock-step)")
    parser.add_argument("--cores", default="1,2", help="core counts to evaluate on (comma list)")
    parser.add_argument("--env-workers", type=int, default=None,
                        help="worker processes for multi-core runs (default: evaluate_policy's choice)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=2, help="sim / eval measurements, interleaved; medians")
    parser.add_argument("--ref-episodes", type=int, default=0, help="episodes per task for the reference (0: skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from dt_eva.utils.precision import cpu_model, resolve_model_precision

    # every figure names its CPU and date (docs/benchmarks.md)
    print(f"machine: {cpu_model()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {os.getloadavg()[0]:.1f}")

    from dt_eva.envs import filter_third_party_warnings, resolve_tasks
    from dt_eva.evaluation import evaluate_policy
    from dt_eva.evaluation.env_workers import default_env_workers, usable_cores

    filter_third_party_warnings()
    torch.set_num_threads(1)
    tasks = resolve_tasks(args.tasks)
    model = load_model(args.model).to(args.device)
    cfg = model.cfg
    n_envs = len(tasks) * args.episodes
    cores = [int(c) for c in args.cores.split(",")]
    available = usable_cores()
    if max(cores) > available:
        raise SystemExit(f"--cores asks for {max(cores)} cores but this process may use {available}")
    print(f"model {args.model} ({model.num_parameters() / 1e6:.2f}M params, hidden {cfg.hidden_size}, "
          f"context {cfg.context_len}, layout {cfg.token_layout}), device {args.device}, precision {args.precision}, "
          f"{len(tasks)} tasks x {args.episodes} episodes = {n_envs} lock-step envs, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    target = 1000.0
    autocast_dtype = resolve_model_precision(args.precision, args.device, next(model.parameters()).dtype)
    sims: list[float] = []
    evals: dict[int, list[float]] = {c: [] for c in cores}
    workers_used: dict[int, int] = {}
    for _ in range(args.rounds):
        old = pin_to_cores(1)
        try:
            sims.append(bare_sim_steps_per_s(tasks, args.episodes, args.seed))
        finally:
            os.sched_setaffinity(0, old)
        for c in cores:
            old = pin_to_cores(c)
            try:
                workers = 0 if c == 1 else (args.env_workers if args.env_workers is not None else default_env_workers(c))
                result = evaluate_policy(model, tasks, episodes=args.episodes, seed=args.seed, target_returns=target,
                                         device=args.device, num_envs=n_envs, progress=False,
                                         autocast_dtype=autocast_dtype, env_workers=workers)
            finally:
                os.sched_setaffinity(0, old)
            evals[c].append(result["env_steps_per_s"])
            workers_used[c] = result["env_workers"]
            precision = result["precision"]
    sim = statistics.median(sims)
    print(f"sim (1 core)        {sim:9.1f} env-steps/s  (scripted policies, same envs and layouts; "
          f"rounds: {', '.join(f'{s:.0f}' for s in sims)})")
    for c in cores:
        rate = statistics.median(evals[c])
        print(f"eval ({c} core{'s' if c > 1 else ''})       {rate:9.1f} env-steps/s  (evaluate_policy, "
              f"{workers_used[c]} env workers, {precision}; rounds: {', '.join(f'{r:.0f}' for r in evals[c])})")
    if args.ref_episodes:
        old = pin_to_cores(1)
        try:
            ref = reference_steps_per_s(model, tasks, args.ref_episodes, args.seed, target)
        finally:
            os.sched_setaffinity(0, old)
        print(f"reference (1 core)  {ref:9.1f} env-steps/s  (one env, one episode at a time)")
    targets = {1: 0.6, 2: 1.0}
    summary = "; ".join(
        f"eval {c} core{'s' if c > 1 else ''} / sim 1 core = {statistics.median(evals[c]) / sim:.2f}"
        + (f" (target >= {targets[c]})" if c in targets else "")
        for c in cores
    )
    print(f"SUMMARY bench_eval {args.model} K={cfg.context_len} envs={n_envs} {precision}: {summary}")


if __name__ == "__main__":
    main()
