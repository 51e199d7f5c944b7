"""Pre-training a Decision Transformer on an offline multi-task dataset (MT40 by default).

`run_pretrain(cfg)` = prepare the run directory, build dataset / sampler / model, run the shared
`Trainer`, then write `model.pt`, `summary.json` and (when the run evaluated at its last step)
`eval.json`. Under `torchrun` it trains with DistributedDataParallel: the global batch is split
over the ranks, each rank samples with its own seed, rank 0 alone logs and writes files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dt_eva.config import config_diff, load_config, save_config
from dt_eva.models import DecisionTransformer, DTConfig
from dt_eva.utils.io import atomic_write_json

from .checkpoint import seed_everything
from .configs import DataConfig, OptimConfig, TrainConfig
from .distributed import DistContext, barrier, broadcast_object, init_distributed, rank_seed, shutdown_distributed
from .loop import Trainer, TrainResult
from .rundir import default_run_dir, prepare_run_dir, write_meta

# Keys a resumed run may change without breaking the run (cadence of logs / checkpoints / evaluation,
# the device). Anything else would make the continued run a different experiment.
RESUME_MUTABLE_KEYS = (
    "train.log_every",
    "train.ckpt_every",
    "train.eval_every",
    "train.eval_tasks",
    "train.eval_episodes",
    "train.device",
    "train.precision",
    "train.progress",
)


@dataclass
class PretrainConfig:
    """A pre-training run; the YAML presets are `configs/pretrain/{tiny,paper}.yaml`."""

    name: str = "pretrain"
    run_dir: str = ""  # the run directory; "" = runs/<name>
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: DTConfig = field(default_factory=DTConfig.paper)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def resolved_run_dir(self) -> Path:
        return default_run_dir(self.name, self.run_dir)


@dataclass
class PretrainSetup:
    """Everything `run_pretrain` builds before training (exposed for tests and custom drivers)."""

    cfg: PretrainConfig
    run_dir: Path
    trainer: Trainer
    dataset: Any
    resume: bool  # a checkpoint is there and will be loaded by `trainer.fit(resume=True)`
    eval_results: dict[int, dict] = field(default_factory=dict)  # step -> full evaluate_policy result


def local_batch_size(global_batch: int, world_size: int) -> int:
    """This rank's share of the global batch; it must divide evenly."""
    if global_batch % world_size:
        raise ValueError(
            f"train.batch_size={global_batch} is the global batch and must be divisible by the number of "
            f"processes ({world_size}); use e.g. train.batch_size={global_batch - global_batch % world_size or world_size}"
        )
    return global_batch // world_size


def prepare_pretrain(
    cfg: PretrainConfig, resume: bool = False, force: bool = False, dist: DistContext | None = None
) -> PretrainSetup:
    """Prepare the run directory and build the `Trainer` (collective under DDP)."""
    from dt_eva.data import WindowSampler, load_dataset

    dist = dist or DistContext(device=torch.device("cpu"))
    batch = local_batch_size(cfg.train.batch_size, dist.world_size)
    run_dir = cfg.resolved_run_dir
    error = None
    resuming = False
    if dist.is_main:
        try:
            resuming = _prepare_dir_and_config(cfg, run_dir, resume, force)
        except Exception as e:  # hand it to the other ranks too, so none waits for rank 0 forever
            error = e
    error, resuming = broadcast_object(dist, (error, resuming))
    if error is not None:
        raise error

    dataset = load_dataset(cfg.data.path, tasks=cfg.data.tasks)
    if (dataset.state_dim, dataset.act_dim) != (cfg.model.state_dim, cfg.model.act_dim):
        raise ValueError(
            f"dataset {cfg.data.path} has state_dim={dataset.state_dim}, act_dim={dataset.act_dim} but the model "
            f"expects {cfg.model.state_dim}, {cfg.model.act_dim}; set model.state_dim / model.act_dim to match"
        )
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = DecisionTransformer(cfg.model)
    seed_everything(rank_seed(cfg.seed, dist.rank))  # per-rank dropout stream
    sampler = WindowSampler(
        dataset,
        cfg.model.context_len,
        batch,
        rtg_scale=cfg.data.rtg_scale,
        reward_scale=cfg.data.reward_scale,
        seed=rank_seed(cfg.seed, dist.rank),
    )
    eval_results: dict[int, dict] = {}
    eval_fn = None
    if cfg.train.eval_every > 0 and cfg.train.eval_tasks and dist.is_main:
        eval_fn = make_eval_fn(cfg, dataset, dist.device, eval_results)
    trainer = Trainer(
        model,
        sampler,
        cfg.optim,
        cfg.train,
        run_dir,
        dist=dist,
        eval_fn=eval_fn,
        tokens_per_sample=cfg.model.context_len * cfg.model.tokens_per_step,
        find_unused_parameters="r" not in cfg.model.layout_symbols,
    )
    return PretrainSetup(cfg, run_dir, trainer, dataset, resuming, eval_results)


def _prepare_dir_and_config(cfg: PretrainConfig, run_dir: Path, resume: bool, force: bool) -> bool:
    saved_config = run_dir / "config.yaml"
    if resume and saved_config.is_file() and (run_dir / "checkpoints" / "last.pt").is_file():
        saved = load_config(PretrainConfig, saved_config)
        changed = {k: v for k, v in config_diff(saved, cfg).items() if k not in RESUME_MUTABLE_KEYS}
        if changed:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"cannot resume {run_dir}: the config differs from the run's saved config.yaml in {lines}. "
                "Resume with the same config, or start a new run (another name=, or --force)"
            )
    resuming = prepare_run_dir(run_dir, resume=resume, force=force)
    save_config(cfg, saved_config)
    write_meta(run_dir, "pretrain")
    return resuming


def make_eval_fn(
    cfg: PretrainConfig, dataset: Any, device: torch.device, results: dict[int, dict]
) -> Callable[[torch.nn.Module, int], dict[str, float]]:
    """Online evaluation on `train.eval_tasks`, conditioned on each task's best dataset return.

    Returns flat scalars (`eval/<task>/success_any`, ..., `eval/success_any`) for the metrics and
    keeps each full `evaluate_policy` result in `results[step]`.
    """
    from dt_eva.envs import resolve_tasks

    tasks = resolve_tasks(cfg.train.eval_tasks)
    targets = {t: float(dataset.max_return(t)) for t in tasks if t in dataset.tasks}
    missing = [t for t in tasks if t not in targets]
    if missing:
        raise ValueError(
            f"train.eval_tasks {missing} are not in dataset {cfg.data.path}, so there is no target return "
            f"for them; evaluate on tasks the model was trained on ({', '.join(dataset.tasks)})"
        )

    def eval_fn(model: torch.nn.Module, step: int) -> dict[str, float]:
        from dt_eva.evaluation import evaluate_policy

        result = evaluate_policy(
            model,
            tasks,
            episodes=cfg.train.eval_episodes,
            seed=cfg.seed,
            target_returns=targets,
            rtg_scale=cfg.data.rtg_scale,
            reward_scale=cfg.data.reward_scale,
            device=str(device),
            progress=False,
        )
        results[step] = result
        return flatten_eval(result)

    return eval_fn


def flatten_eval(result: dict) -> dict[str, float]:
    """`evaluate_policy` result -> `{"eval/<task>/success_any": ..., "eval/success_any": ...}`."""
    out: dict[str, float] = {}
    for task, stats in result.get("tasks", {}).items():
        for key in ("success_any", "success_final", "return_mean"):
            if key in stats:
                out[f"eval/{task}/{key}"] = float(stats[key])
    for key, value in result.get("mean", {}).items():
        out[f"eval/{key}"] = float(value)
    return out


def run_pretrain(cfg: PretrainConfig, resume: bool = False, force: bool = False) -> Path:
    """Pre-train (or `resume` an interrupted run; `force` overwrites an existing one); returns the run dir.

    Under torchrun every rank calls this; only rank 0 writes files.
    """
    dist = init_distributed(cfg.train.device)
    try:
        setup = prepare_pretrain(cfg, resume=resume, force=force, dist=dist)
        result = setup.trainer.fit(resume=setup.resume)
        finish_pretrain(setup, result)
        return setup.run_dir
    finally:
        shutdown_distributed(dist)


def finish_pretrain(setup: PretrainSetup, result: TrainResult) -> dict:
    """Write `model.pt`, `summary.json` and `eval.json` (final-step evaluation); returns the summary."""
    trainer, cfg, run_dir = setup.trainer, setup.cfg, setup.run_dir
    if result.start_step == result.steps and (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))  # resumed a finished run
    trainer.save_model(run_dir / "model.pt")
    final_eval = setup.eval_results.get(result.steps)
    summary = {
        "kind": "pretrain",
        "name": cfg.name,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "seconds": result.seconds,
        "tokens_per_s": result.tokens_per_s,
        "world_size": result.world_size,
        "device": str(trainer.device),
        "precision": result.precision,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "tasks": list(setup.dataset.tasks),
        "eval": (final_eval or {}).get("mean") or (_eval_means(result.last_eval) or None),
        "resumed_from_step": result.start_step or None,
    }
    if trainer.dist.is_main:
        if final_eval is not None:
            atomic_write_json(run_dir / "eval.json", final_eval)
        atomic_write_json(run_dir / "summary.json", summary)
    barrier(trainer.dist)
    return summary


def _eval_means(flat: dict[str, float]) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in flat.items() if k.count("/") == 1}
