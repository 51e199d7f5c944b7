"""Fine-tuning a pre-trained Decision Transformer on one task with FFT, LoRA-family adapters or AdaLoRA.

`run_finetune(cfg)`:
1. validates everything (method, task, the pre-training run and its weights, the task's dataset, its
   dimensions and scales, the rank against every target layer, the run directory), so that a bad
   call leaves nothing on disk;
2. for the EVA methods, runs EVA on the task's data (its own sampler);
3. claims the run directory (lock, marker, config; `eva/` written in one atomic step);
4. trains the method's `MethodModel` with the shared `Trainer`: checkpoints hold only what trains
   plus which base it belongs to (pre-training run, SHA-256 of its `model.pt`, its step);
5. writes `model.pt`, `adapters/`, the final evaluation, `merged_model.pt` (with `export_merged`)
   and `summary.json`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dt_eva.adapters import save_adapters
from dt_eva.config import config_to_dict
from dt_eva.data import WindowSampler
from dt_eva.envs import resolve_task
from dt_eva.eva import EvaConfig
from dt_eva.evaluation.offline import heldout_batches, heldout_loss
from dt_eva.experiments.common import (
    claim_run,
    distributed_session,
    holding,
    local_batch_size,
    make_eval_fn,
    on_main,
    plan_run,
)
from dt_eva.experiments.eva_init import load_eva_result, run_eva, save_eva_artifacts
from dt_eva.methods.model import MethodModel, check_rank_fits
from dt_eva.methods.registry import MethodSpec, resolve_method
from dt_eva.models import DT_ADAPTER_TARGETS
from dt_eva.runs.base import PretrainedBase, load_pretrained_base
from dt_eva.runs.configs import FinetuneConfig
from dt_eva.runs.evals import write_eval_record
from dt_eva.runs.guard import OpenRun
from dt_eva.runs.layout import RunPaths
from dt_eva.runs.policy import adalora_schedule, load_task_dataset, method_model_of, target_returns
from dt_eva.training import Trainer, TrainResult
from dt_eva.training.checkpoint import seed_everything
from dt_eva.training.distributed import DistContext, barrier, rank_seed
from dt_eva.utils.io import atomic_torch_save, atomic_write_json, load_json_object
from dt_eva.utils.precision import resolve_precision

KIND = "finetune"


@dataclass
class FinetuneSetup:
    """Everything `run_finetune` builds before training (exposed for tests and custom drivers)."""

    cfg: FinetuneConfig
    paths: RunPaths
    task: str
    spec: MethodSpec
    base: PretrainedBase
    dataset: Any
    method_model: MethodModel
    trainer: Trainer
    resume: bool
    run: OpenRun | None = None
    eva_result: Any = None
    eval_results: dict[int, dict] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.paths.root


def run_finetune(cfg: FinetuneConfig, resume: bool = False, force: bool = False) -> Path:
    """Fine-tune (or `resume` an interrupted run; `force` replaces an existing one); returns the run dir.

    Under torchrun every rank calls this; only rank 0 writes files.
    """
    with distributed_session(cfg.train.device) as dist:
        setup = prepare_finetune(cfg, resume=resume, force=force, dist=dist)  # validate, EVA, claim the run, build
        with holding(setup.run):  # the run's lock is released however training ends
            result = setup.trainer.fit(resume=setup.resume)
            finish_finetune(setup, result)
    return setup.run_dir


@dataclass
class Validated:
    spec: MethodSpec
    task: str
    base: PretrainedBase
    dataset: Any
    heldout: Any = None  # the held-out episodes' dataset, when `heldout_path` is set


def validate(cfg: FinetuneConfig) -> Validated:
    """Every check that needs no run directory: method, task, base, dataset, scales, ranks, AdaLoRA budget."""
    spec = resolve_method(cfg.method)
    task = resolve_task(cfg.task)
    base = load_pretrained_base(cfg.checkpoint)
    dataset = load_task_dataset(cfg.data.path, task)
    want = (base.model_cfg.state_dim, base.model_cfg.act_dim)
    if (int(dataset.state_dim), int(dataset.act_dim)) != want:
        raise ValueError(
            f"dataset {cfg.data.path} has state_dim={dataset.state_dim}, act_dim={dataset.act_dim} but the pre-trained "
            f"model in {base.run_dir} expects state_dim={want[0]}, act_dim={want[1]}; fine-tune on data of the same "
            "environment family as the pre-training data"
        )
    for key in ("rtg_scale", "reward_scale"):
        mine, theirs = getattr(cfg.data, key), getattr(base.data, key)
        if float(mine) != float(theirs):
            raise ValueError(
                f"data.{key}={mine:g} differs from the pre-training run's {theirs:g} ({base.run_dir}/config.yaml): the "
                f"model reads returns and rewards on the scale it was trained with; set data.{key}={theirs:g}"
            )
    if spec.uses_rank:
        rank, what = _largest_rank(cfg, spec)
        check_rank_fits(base.build(), DT_ADAPTER_TARGETS, rank, what=what)
    if spec.kind == "adalora":
        tinit, tfinal = int(cfg.adalora.tinit * cfg.train.steps), int(cfg.adalora.tfinal * cfg.train.steps)
        if cfg.train.steps <= tinit + tfinal:
            raise ValueError(
                f"AdaLoRA with train.steps={cfg.train.steps} leaves no pruning phase after tinit={tinit} and "
                f"tfinal={tfinal} steps; use more steps or smaller adalora.tinit / adalora.tfinal fractions"
            )
    heldout = load_task_dataset(cfg.heldout_path, task) if cfg.heldout_path else None
    return Validated(spec, task, base, dataset, heldout)


def _largest_rank(cfg: FinetuneConfig, spec: MethodSpec) -> tuple[int, str]:
    """The largest rank the method will ask of any single target layer, and how to name it."""
    if spec.eva:
        return (EvaConfig(rank=cfg.rank, rho=float(cfg.rho)).num_components,
                f"EVA's components per layer round(rho * rank) = round({cfg.rho:g} * {cfg.rank})")
    if spec.kind == "adalora":
        return adalora_schedule(cfg).init_r, "AdaLoRA's initial rank"
    return cfg.rank, "rank"


def prepare_finetune(cfg: FinetuneConfig, resume: bool = False, force: bool = False,
                     dist: DistContext | None = None) -> FinetuneSetup:
    """Validate, run EVA if needed, claim the run directory and build the `Trainer` (collective under DDP)."""
    dist = dist or DistContext(device=torch.device("cpu"))
    paths = RunPaths(cfg.resolved_run_dir)
    # 1. validate everything before the disk is touched
    batch = local_batch_size(cfg.train.batch_size, dist.world_size)
    # the run's precision, resolved once here: EVA, training and every evaluation receive this dtype
    autocast_dtype = resolve_precision(cfg.train.precision, dist.device)  # a bf16 the device lacks fails here
    v = validate(cfg)
    plan = plan_run(dist, cfg, paths, KIND, resume, force)
    # 2. EVA: a failure here leaves nothing behind
    eva_result = _eva_for_run(cfg, v, paths, dist, autocast_dtype, reuse=plan == "resume")
    # 3. the run directory
    meta = {"task": v.task, "method": v.spec.name, "base": v.base.identity(), "model": config_to_dict(v.base.model_cfg)}
    run, resuming = claim_run(dist, cfg, paths, KIND, resume, force, meta)
    if eva_result is not None and not paths.eva.is_dir():
        extra = {"task": v.task, "method": v.spec.name, "token_types": list(cfg.eva.token_types),
                 "batch_size": cfg.eva.batch_size}
        on_main(dist, lambda: str(save_eva_artifacts(eva_result, paths.eva, extra)))
    # 4. model, sampler, trainer
    seed_everything(cfg.seed)  # adapter init and dropout streams are reproducible
    method_model = method_model_of(cfg, v.spec, v.base, eva_result)
    trainer, eval_results = _build_trainer(cfg, v, method_model, paths, dist, batch, autocast_dtype)
    return FinetuneSetup(cfg, paths, v.task, v.spec, v.base, v.dataset, method_model, trainer, resuming, run,
                         eva_result, eval_results)


def _eva_for_run(cfg: FinetuneConfig, v: Validated, paths: RunPaths, dist: DistContext,
                 autocast_dtype: torch.dtype | None, reuse: bool) -> Any:
    """The EVA result of the run: computed now, or (resuming) the one the run started with."""
    if not v.spec.eva:
        return None
    if reuse and (paths.eva / "result.json").is_file():
        return load_eva_result(paths.eva)
    return run_eva(cfg, v.base, v.dataset, v.task, dist.device, data_seed=rank_seed(cfg.seed, dist.rank),
                   autocast_dtype=autocast_dtype)


def _build_trainer(cfg: FinetuneConfig, v: Validated, mm: MethodModel, paths: RunPaths, dist: DistContext,
                   batch: int, autocast_dtype: torch.dtype | None) -> tuple[Trainer, dict[int, dict]]:
    seed_everything(rank_seed(cfg.seed, dist.rank))
    model_cfg = v.base.model_cfg
    sampler = WindowSampler(v.dataset, model_cfg.context_len, batch, rtg_scale=model_cfg.rtg_scale,
                            reward_scale=model_cfg.reward_scale, seed=rank_seed(cfg.seed, dist.rank), tasks=[v.task])
    train_cfg = cfg.train
    if (train_cfg.eval_episodes > 0 or v.heldout is not None) and train_cfg.eval_every == 0:
        # evaluate once, at the last step, through the loop: metrics.jsonl and TensorBoard get it too
        train_cfg = dataclasses.replace(train_cfg, eval_every=train_cfg.steps)
    eval_results: dict[int, dict] = {}
    heldout_fn = _heldout_callback(cfg, v, autocast_dtype) if dist.is_main else None  # its batches built once
    eval_fn = _eval_callback(cfg, v, dist, eval_results, autocast_dtype, heldout_fn) \
        if train_cfg.eval_every > 0 and dist.is_main else None
    probe_fn = heldout_fn if train_cfg.probe_every > 0 else None
    trainer = Trainer(
        mm, sampler, cfg.optim, train_cfg, paths, dist=dist, eval_fn=eval_fn, probe_fn=probe_fn,
        autocast_dtype=autocast_dtype,
        tokens_per_sample=model_cfg.context_len * model_cfg.tokens_per_step,
        # frozen base weights do not require grad, so DDP ignores them; every trained tensor is in the loss
        find_unused_parameters=False,
    )
    return trainer, eval_results


def _eval_callback(cfg: FinetuneConfig, v: Validated, dist: DistContext, results: dict[int, dict],
                   autocast_dtype: torch.dtype | None, heldout_fn: Any) -> Any:
    """Online success on the task (`train.eval_episodes` > 0) and the held-out action MSE (`heldout_fn`,
    None without `heldout_path`), both at the run's precision."""
    parts = []
    if cfg.train.eval_episodes > 0:
        parts.append(make_eval_fn([v.task], target_returns(v.dataset, [v.task]), cfg.train.eval_episodes,
                                  cfg.seed, dist.device, results, autocast_dtype))
    if heldout_fn is not None:
        parts.append(heldout_fn)
    if not parts:
        return None
    return lambda model, step: {k: val for part in parts for k, val in part(model, step).items()}


def _heldout_callback(cfg: FinetuneConfig, v: Validated, autocast_dtype: torch.dtype | None) -> Any:
    """The held-out action MSE (`heldout_path`) at the run's precision as `{"heldout/loss": ...}`; None
    without held-out data."""
    if v.heldout is None:
        return None
    batches = heldout_batches(v.heldout, v.task, v.base.model_cfg)
    return lambda model, step: {"heldout/loss": heldout_loss(model, batches, autocast_dtype)}


def finish_finetune(setup: FinetuneSetup, result: TrainResult) -> dict:
    """Write `model.pt`, `adapters/`, the final evaluation, `merged_model.pt` (if asked) and `summary.json`."""
    trainer, cfg, paths, mm = setup.trainer, setup.cfg, setup.paths, setup.method_model
    finished_before = result.start_step == result.steps and paths.summary.is_file()
    summary: dict[str, Any] = {}
    if not finished_before:
        trainer.save_model(paths.model)  # collective: rank 0 writes, every rank meets at its barrier
    if trainer.dist.is_main:
        if not finished_before:
            if mm.spec.kind == "adapter":
                save_adapters(mm.model, paths.adapters)
        if cfg.export_merged and not paths.merged_model.is_file():
            atomic_torch_save(mm.merged_state_dict(), paths.merged_model)
        final_eval = setup.eval_results.get(result.steps)
        if final_eval is None and trainer.eval_fn is not None and not paths.eval.is_file():
            trainer.evaluate(result.steps)  # killed after its last checkpoint, before the evaluation
            final_eval = setup.eval_results.get(result.steps)
        if final_eval is not None:
            write_eval_record(paths.root, final_eval)
        if finished_before:
            summary = load_json_object(paths.summary) or {}  # a damaged file is a ValueError naming it
        else:
            summary = _summary(setup, result, final_eval)
        atomic_write_json(paths.summary, summary)
    barrier(trainer.dist)
    return summary


def _summary(setup: FinetuneSetup, result: TrainResult, final_eval: dict | None) -> dict[str, Any]:
    cfg, mm = setup.cfg, setup.method_model
    ranks = mm.ranks()
    return {
        "kind": KIND, "name": cfg.resolved_name, "steps": result.steps, "final_loss": result.final_loss,
        "seconds": result.seconds, "task": setup.task, "method": mm.spec.name, "rank": cfg.rank, "rho": cfg.rho,
        "alpha": cfg.alpha, "seed": cfg.seed, "trainable_params": mm.trainable_parameters(),
        "total_params": sum(p.numel() for p in mm.model.parameters()), "adapter_ranks": ranks,
        "total_rank": int(sum(ranks.values())),
        "eva_init_seconds": float(setup.eva_result.seconds) if setup.eva_result is not None else None,
        "lr": cfg.optim.lr, "tokens_per_s": result.tokens_per_s, "world_size": result.world_size,
        "device": str(setup.trainer.device), "precision": result.precision, "machines": result.machines,
        "pretrain": setup.base.identity(),
        "eval": (final_eval or {}).get("mean"), "resumed_from_step": result.start_step or None,
        "heldout_loss": result.last_eval.get("heldout/loss"),
    }
