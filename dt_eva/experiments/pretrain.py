"""Pre-training a Decision Transformer on an offline multi-task dataset (MT40 by default).

`run_pretrain(cfg)`: validate (dataset, dimensions, evaluation tasks, the run directory) -> claim
the run directory -> build model, sampler and `Trainer` -> train -> write `model.pt`, `summary.json`
and the final evaluation. Under `torchrun` it trains with DistributedDataParallel: the global batch
is split over the ranks, each rank samples with its own seed, rank 0 alone writes files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dt_eva.data import WindowSampler, load_dataset
from dt_eva.envs import resolve_tasks
from dt_eva.experiments.common import (
    claim_run,
    distributed_session,
    holding,
    local_batch_size,
    make_eval_fn,
    plan_run,
)
from dt_eva.models import DecisionTransformer
from dt_eva.runs.configs import PretrainConfig
from dt_eva.runs.evals import write_eval_record
from dt_eva.runs.guard import OpenRun
from dt_eva.runs.layout import RunPaths
from dt_eva.runs.policy import target_returns
from dt_eva.training import Trainer, TrainResult, WholeModel
from dt_eva.training.checkpoint import seed_everything
from dt_eva.training.distributed import DistContext, barrier, rank_seed
from dt_eva.utils.io import atomic_write_json, load_json_object
from dt_eva.utils.precision import resolve_precision

KIND = "pretrain"


@dataclass
class PretrainSetup:
    """Everything `run_pretrain` builds before training (exposed for tests and custom drivers)."""

    cfg: PretrainConfig
    paths: RunPaths
    trainer: Trainer
    dataset: Any
    resume: bool  # a checkpoint is there and will be loaded by `trainer.fit(resume=True)`
    run: OpenRun | None = None  # rank 0: the locked run directory
    eval_results: dict[int, dict] = field(default_factory=dict)  # step -> full evaluate_policy result

    @property
    def run_dir(self) -> Path:
        return self.paths.root


def run_pretrain(cfg: PretrainConfig, resume: bool = False, force: bool = False) -> Path:
    """Pre-train (or `resume` an interrupted run; `force` replaces an existing one); returns the run dir.

    Under torchrun every rank calls this; only rank 0 writes files.
    """
    with distributed_session(cfg.train.device) as dist:
        setup = prepare_pretrain(cfg, resume=resume, force=force, dist=dist)  # validate, claim the run, build
        with holding(setup.run):  # the run's lock is released however training ends
            result = setup.trainer.fit(resume=setup.resume)
            finish_pretrain(setup, result)
    return setup.run_dir


def load_pretrain_dataset(cfg: PretrainConfig) -> Any:
    """The training data, checked against the model's state / action sizes."""
    dataset = load_dataset(cfg.data.path, tasks=cfg.data.tasks)
    if (dataset.state_dim, dataset.act_dim) != (cfg.model.state_dim, cfg.model.act_dim):
        raise ValueError(
            f"dataset {cfg.data.path} has state_dim={dataset.state_dim}, act_dim={dataset.act_dim} but the model "
            f"expects {cfg.model.state_dim}, {cfg.model.act_dim}; set model.state_dim / model.act_dim to match"
        )
    return dataset


def eval_targets(cfg: PretrainConfig, dataset: Any) -> dict[str, float]:
    """Target returns of `train.eval_tasks` (when the run evaluates), which must be tasks of the training data.

    The names are checked even when `train.eval_every=0` (a typo should not wait for the run that
    evaluates); that they are in the dataset only when the run evaluates (the default list is CW10's)."""
    tasks = resolve_tasks(cfg.train.eval_tasks) if cfg.train.eval_tasks else []
    if cfg.train.eval_every <= 0:
        return {}
    missing = [t for t in tasks if t not in dataset.tasks]
    if missing:
        raise ValueError(
            f"train.eval_tasks {missing} are not in dataset {cfg.data.path}, so there is no target return "
            f"for them; evaluate on tasks the model was trained on ({', '.join(dataset.tasks)})"
        )
    return target_returns(dataset, tasks)


def prepare_pretrain(cfg: PretrainConfig, resume: bool = False, force: bool = False,
                     dist: DistContext | None = None) -> PretrainSetup:
    """Validate everything, then claim the run directory and build the `Trainer` (collective under DDP)."""
    dist = dist or DistContext(device=torch.device("cpu"))
    paths = RunPaths(cfg.resolved_run_dir)
    # 1. validate: nothing is created or deleted before every check has passed
    batch = local_batch_size(cfg.train.batch_size, dist.world_size)
    # the run's precision, resolved once here: training and every evaluation receive this dtype
    autocast_dtype = resolve_precision(cfg.train.precision, dist.device)  # a bf16 the device lacks fails here
    dataset = load_pretrain_dataset(cfg)
    targets = eval_targets(cfg, dataset)
    plan_run(dist, cfg, paths, KIND, resume, force)
    # 2. the run directory
    run, resuming = claim_run(dist, cfg, paths, KIND, resume, force)
    # 3. model, sampler, trainer
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = DecisionTransformer(cfg.model)
    seed_everything(rank_seed(cfg.seed, dist.rank))  # per-rank dropout stream
    sampler = WindowSampler(dataset, cfg.model.context_len, batch, rtg_scale=cfg.model.rtg_scale,
                            reward_scale=cfg.model.reward_scale, seed=rank_seed(cfg.seed, dist.rank))
    eval_results: dict[int, dict] = {}
    eval_fn = None
    if cfg.train.eval_every > 0 and targets and dist.is_main:
        eval_fn = make_eval_fn(list(targets), targets, cfg.train.eval_episodes, cfg.seed, dist.device,
                               eval_results, autocast_dtype)
    trainer = Trainer(
        WholeModel(model), sampler, cfg.optim, cfg.train, paths, dist=dist, eval_fn=eval_fn,
        autocast_dtype=autocast_dtype,
        tokens_per_sample=cfg.model.context_len * cfg.model.tokens_per_step,
        # every parameter takes part in the loss (the DT has no embedding for a modality its layout
        # lacks), so DDP need not search the graph for unused ones
        find_unused_parameters=False,
    )
    return PretrainSetup(cfg, paths, trainer, dataset, resuming, run, eval_results)


def finish_pretrain(setup: PretrainSetup, result: TrainResult) -> dict:
    """Write `model.pt`, the final evaluation and `summary.json`; returns the summary."""
    trainer, cfg, paths = setup.trainer, setup.cfg, setup.paths
    if result.start_step == result.steps and paths.summary.is_file():  # resumed a finished run
        return load_json_object(paths.summary) or {}  # a damaged file is a ValueError naming it
    trainer.save_model(paths.model)
    final_eval = setup.eval_results.get(result.steps)
    summary = {
        "kind": KIND,
        "name": cfg.name,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "seconds": result.seconds,
        "tokens_per_s": result.tokens_per_s,
        "world_size": result.world_size,
        "device": str(trainer.device),
        "precision": result.precision,
        "machines": result.machines,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "tasks": list(setup.dataset.tasks),
        "eval": (final_eval or {}).get("mean"),
        "resumed_from_step": result.start_step or None,
    }
    if trainer.dist.is_main:
        if final_eval is not None:
            write_eval_record(paths.root, final_eval)
        atomic_write_json(paths.summary, summary)
    barrier(trainer.dist)
    return summary
