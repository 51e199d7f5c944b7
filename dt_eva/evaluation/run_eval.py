"""`evaluate_run`: evaluate the policy of a run directory and store the result there.

Writes (atomically) `eval.json` (the `evaluate_policy` dict) and `eval/<task>.json` (that task's
entry plus the evaluation settings), and `videos/<task>.gif` with `video=True` when rendering works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from dt_eva.envs import resolve_tasks
from dt_eva.evaluation.evaluate import evaluate_policy
from dt_eva.utils.io import atomic_write_json


def evaluate_run(
    run_dir: str | Path,
    tasks: str | Iterable[str] | None = None,
    episodes: int = 30,
    seed: int = 0,
    target_return: float | None = None,
    num_envs: int | None = None,
    device: str = "cpu",
    video: bool = False,
    progress: bool = True,
    *,
    asynchronous: bool = False,
) -> dict[str, Any]:
    """Evaluate the model of `run_dir` online and write `eval.json` into it; returns the result.

    `tasks=None`: the run's own tasks (its fine-tuning task, or the pre-training run's
    `train.eval_tasks`, else its training tasks). Target returns: `target_return` for every task
    if given, else each task's maximum return in the run's training dataset.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} does not exist; train a model first with `dt-eva pretrain` "
            "or `dt-eva finetune` (or check the --run path)"
        )
    if not (run_dir / "model.pt").is_file() and not (run_dir / "checkpoints" / "last.pt").is_file():
        raise FileNotFoundError(
            f"{run_dir} holds no weights (neither model.pt nor checkpoints/last.pt); run or resume its "
            "training first (`dt-eva pretrain` / `dt-eva finetune`)"
        )
    task_list = resolve_tasks(tasks) if tasks is not None else None  # bad names fail before loading

    from dt_eva.runs import load_run_model

    model, info = load_run_model(run_dir, device=device)
    if task_list is None:
        task_list = _run_tasks(info, run_dir)

    if target_return is not None:
        targets: Any = float(target_return)
    else:
        known = info.get("target_returns") or {}
        missing = [t for t in task_list if t not in known]
        if missing:
            reason = info.get("dataset_error") or f"the run's training data has no episodes of {missing}"
            raise ValueError(
                f"no target return for {missing}: {reason}. Pass one with --target-return X "
                "(the paper uses the best return in the task's training data)"
            )
        targets = {t: float(known[t]) for t in task_list}

    result = evaluate_policy(
        model,
        task_list,
        episodes=episodes,
        seed=seed,
        target_returns=targets,
        rtg_scale=float(info.get("rtg_scale", 200.0)),
        reward_scale=float(info.get("reward_scale", 200.0)),
        num_envs=num_envs,
        device=device,
        progress=progress,
        video_dir=run_dir / "videos" if video else None,
        asynchronous=asynchronous,
    )
    settings = {k: result[k] for k in ("episodes", "seed", "rtg_scale", "reward_scale")}
    for task, entry in result["tasks"].items():
        atomic_write_json(run_dir / "eval" / f"{task}.json", {"task": task, **entry, **settings})
    atomic_write_json(run_dir / "eval.json", result)
    return result


def _run_tasks(info: dict[str, Any], run_dir: Path) -> list[str]:
    config = info.get("config") or {}
    if info.get("kind") == "finetune":
        task = config.get("task") or info.get("task")
        candidates: Any = [task] if task else info.get("tasks")
    else:
        candidates = (config.get("train") or {}).get("eval_tasks") or info.get("tasks")
    if not candidates:
        raise ValueError(f"cannot tell which tasks {run_dir} was trained on; pass them (--tasks hammer,push or cw10)")
    return resolve_tasks(candidates)
