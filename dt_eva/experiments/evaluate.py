"""`evaluate_run`: evaluate the policy of a run directory and store the result there.

The result is kept as one record among the run's evaluations (`dt_eva.runs.evals`: `evals/<key>.json`,
and `eval.json` when it is the largest); `videos/<task>.gif` with `video=True` when rendering works.
Finished rollouts are never lost: the run directory must be writable before they start, and if the
write fails anyway, the record goes to a fallback file that the error names.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

from dt_eva.envs import resolve_tasks
from dt_eva.evaluation.evaluate import evaluate_policy
from dt_eva.evaluation.rollout import model_device_dtype
from dt_eva.runs.evals import new_eval_record, write_eval_record
from dt_eva.runs.layout import RunPaths
from dt_eva.runs.policy import load_run_model
from dt_eva.runs.summary import read_summary
from dt_eva.utils.io import atomic_write_json, check_writable_dir
from dt_eva.utils.precision import PRECISIONS, resolve_model_precision, resolve_precision
from dt_eva.utils.safefs import refuse_link


class EvaluationNotSaved(OSError):
    """The rollouts finished but their result could not be written into the run directory."""


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
    precision: str = "run",
) -> dict[str, Any]:
    """Evaluate the model of `run_dir` online and keep the result in it; returns the result.

    `precision`: "run" (default) evaluates at the precision the run trained at (`summary.json`, else its
    `train.precision` setting), falling back to fp32 where this device has no native bf16; "auto", "bf16"
    or "fp32" as in `dt_eva.utils.precision.resolve_precision`. The record states both precisions.

    `tasks=None`: the run's own tasks (its fine-tuning task, or the pre-training run's
    `train.eval_tasks`, else its training tasks). Target returns: `target_return` for every task
    if given, else each task's maximum return in the run's training dataset.
    """
    run_dir = Path(run_dir)
    paths = _check_run_dir(run_dir)
    task_list = resolve_tasks(tasks) if tasks is not None else None  # bad names fail before loading
    _check_writable(run_dir)

    model, info = load_run_model(run_dir, device=device)
    if task_list is None:
        task_list = _run_tasks(info, run_dir)

    targets = _target_returns(info, task_list, target_return)
    trained_at = _trained_precision(paths, info)
    # the one place this evaluation's precision is resolved; evaluate_policy takes the dtype
    autocast_dtype = eval_autocast_dtype(precision, trained_at, device, model_device_dtype(model)[1])
    result = evaluate_policy(
        model,
        task_list,
        episodes=episodes,
        seed=seed,
        target_returns=targets,
        num_envs=num_envs,
        device=device,
        progress=progress,
        video_dir=paths.videos if video else None,
        asynchronous=asynchronous,
        autocast_dtype=autocast_dtype,
    )
    result["train_precision"] = trained_at if trained_at in ("fp32", "bf16") else None
    _save_result(run_dir, result, info)
    return result


def _check_run_dir(run_dir: Path) -> RunPaths:
    """The run's paths, once it is known to hold weights; else an error saying how to make them."""
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} does not exist; train a model first with `dt-eva pretrain` "
            "or `dt-eva finetune` (or check the --run path)"
        )
    paths = RunPaths(run_dir)
    if not paths.model.is_file() and not paths.last_checkpoint.is_file():
        raise FileNotFoundError(
            f"{run_dir} holds no weights (neither model.pt nor checkpoints/last.pt); run or resume its "
            "training first (`dt-eva pretrain` / `dt-eva finetune`)"
        )
    return paths


def _save_result(run_dir: Path, result: dict[str, Any], info: dict[str, Any]) -> None:
    """Keep `result` among the run's evaluation records; a failed write names the fallback file."""
    model_info = {"weights": os.path.relpath(info["weights"], run_dir) if info.get("weights") else None,
                  "step": info.get("step")}
    try:
        write_eval_record(run_dir, result, model=model_info)
    except OSError as e:
        raise EvaluationNotSaved(_not_saved_message(run_dir, new_eval_record(result, model_info), e)) from e


def _trained_precision(paths: RunPaths, info: dict[str, Any]) -> str:
    """What the run trained at: fp32 / bf16 from its summary, else its `train.precision` setting (auto for
    runs that predate the setting)."""
    summary = read_summary(paths.root)
    if summary is not None and summary.precision in ("fp32", "bf16"):
        return str(summary.precision)
    train = (info.get("config") or {}).get("train") or {}
    setting = train.get("precision") if isinstance(train, dict) else None
    return setting if setting in PRECISIONS else "auto"


def run_autocast_dtype(run_dir: str | Path, info: dict[str, Any], device: str = "cpu") -> Any:
    """The autocast dtype (or None: fp32) that evaluates the run of `run_dir` at its own precision."""
    return eval_autocast_dtype("run", _trained_precision(RunPaths(run_dir), info), device)


def eval_autocast_dtype(precision: str, trained_at: str, device: str,
                        weight_dtype: torch.dtype = torch.float32) -> torch.dtype | None:
    """The autocast dtype (None: fp32) an evaluation runs at: `precision` "run" is the run's own
    (`trained_at`, see `eval_precision_of_run`); "auto", "bf16" and "fp32" as in `resolve_model_precision`
    for a model whose weights are `weight_dtype`."""
    if precision == "run":
        precision = eval_precision_of_run(trained_at, device)
    return resolve_model_precision(precision, device, weight_dtype)


def eval_precision_of_run(trained_at: str, device: str) -> str:
    """The precision `precision="run"` evaluates at: the run's own, or fp32 where bf16 is not native here."""
    if trained_at == "bf16" and resolve_precision("auto", device) is None:
        return "fp32"
    return trained_at


def _target_returns(info: dict[str, Any], task_list: list[str], target_return: float | None) -> Any:
    """`target_return` for every task if given, else each task's best return in the run's training data."""
    if target_return is not None:
        return float(target_return)
    known = info.get("target_returns") or {}
    missing = [t for t in task_list if t not in known]
    if missing:
        reason = info.get("dataset_error") or f"the run's training data has no episodes of {missing}"
        raise ValueError(
            f"no target return for {missing}: {reason}. Pass one with --target-return X "
            "(the paper uses the best return in the task's training data)"
        )
    return {t: float(known[t]) for t in task_list}


def _check_writable(run_dir: Path) -> None:
    """Before any rollout: the result must be writable where it goes."""
    paths = RunPaths(run_dir)
    check_writable_dir(run_dir)
    refuse_link(paths.evals, "evaluation records")  # evals/ -> elsewhere would put them outside the run
    if paths.evals.exists():
        check_writable_dir(paths.evals)


def _not_saved_message(run_dir: Path, record: dict[str, Any], error: OSError) -> str:
    """Save the record where it can be saved and say where; as a last resort, print the result itself."""
    reason = f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    target = RunPaths(run_dir).evals / f"{record['key']}.json"
    for folder in (os.curdir, tempfile.gettempdir()):
        fallback = None
        try:
            fd, fallback = tempfile.mkstemp(prefix=f"dt-eva-eval-{run_dir.name}-{record['key']}.", suffix=".json",
                                            dir=folder)
            os.close(fd)
            atomic_write_json(fallback, record)
            fallback = os.path.abspath(fallback)
        except OSError:
            if fallback is not None:
                with contextlib.suppress(OSError):
                    os.unlink(fallback)
            continue
        return (f"the evaluation of {run_dir} finished but could not be written there ({reason}). "
                f"The finished rollouts are saved in {fallback}: move that file to {target} once the "
                "folder is writable (reports then use it)")
    return (f"the evaluation of {run_dir} finished but could not be written there ({reason}), nor to "
            f"the current folder or {tempfile.gettempdir()}. The record for {target}: {json.dumps(record)}")


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
