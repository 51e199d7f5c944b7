"""Benchmark of batched online evaluation (`dt_eva.evaluation.evaluate_policy`).

Prints env-steps/s of, in the same process and on the same goal layouts:
  sim        the bare simulator: the same lock-step envs stepped by Meta-World's scripted policies
             (no model, no vector-env wrapper);
  batched    `evaluate_policy` rollouts (one model forward per step for all envs; env construction
             excluded, as for `sim`);
  reference  one env, one episode at a time, full forward per step (`rollout_reference_episode`),
and the ratios batched / sim (target >= 0.5) and batched / reference (target >= 5).

    python scripts/bench_eval.py                       # tiny DT, 5 CW10 tasks x 4 episodes
    python scripts/bench_eval.py --model paper --tasks hammer --episodes 4 --ref-episodes 1
"""

from __future__ import annotations

import argparse
import time

import torch


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
    parser.add_argument("--model", choices=["tiny", "paper"], default="tiny")
    parser.add_argument("--tasks", default="hammer,push-wall,faucet-close,push,window-close")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task (batched and sim)")
    parser.add_argument("--ref-episodes", type=int, default=1, help="episodes per task for the reference")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from dt_eva.envs import filter_third_party_warnings, resolve_tasks
    from dt_eva.evaluation import evaluate_policy
    from dt_eva.models import DecisionTransformer, DTConfig

    filter_third_party_warnings()
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = resolve_tasks(args.tasks)
    torch.manual_seed(0)
    cfg = DTConfig.tiny() if args.model == "tiny" else DTConfig.paper()
    model = DecisionTransformer(cfg).to(args.device)
    target = 1000.0
    n_envs = len(tasks) * args.episodes
    print(f"model {args.model} ({model.num_parameters() / 1e6:.2f}M params, context {cfg.context_len}), "
          f"device {args.device}, torch threads {torch.get_num_threads()}, {len(tasks)} tasks x "
          f"{args.episodes} episodes = {n_envs} lock-step envs")

    sim = bare_sim_steps_per_s(tasks, args.episodes, args.seed)
    print(f"sim        {sim:9.1f} env-steps/s  (scripted policies, same envs and layouts)")
    result = evaluate_policy(model, tasks, episodes=args.episodes, seed=args.seed, target_returns=target,
                             device=args.device, num_envs=n_envs, progress=False)
    batched = result["env_steps_per_s"]
    print(f"batched    {batched:9.1f} env-steps/s  (evaluate_policy; whole call {result['seconds']:.1f} s)")
    ref = reference_steps_per_s(model, tasks, args.ref_episodes, args.seed, target)
    print(f"reference  {ref:9.1f} env-steps/s  (one env, one episode at a time, {args.ref_episodes} episode(s)/task)")
    print(f"batched / sim       = {batched / sim:.2f}  (target >= 0.5)")
    print(f"batched / reference = {batched / ref:.1f}  (target >= 5)")


if __name__ == "__main__":
    main()
