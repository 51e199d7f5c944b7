"""Loading the policy of any run directory, and the target returns it is conditioned on.

`load_run_model(run_dir)` rebuilds a pre-training run from `config.yaml` + `model.pt` (or, for a run
that has not finished, `checkpoints/last.pt`), and a fine-tuning run from its pre-trained base
(checked by SHA-256) plus the trained tensors. Every file goes through `weights_only` loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from dt_eva.config import config_to_dict, load_config
from dt_eva.data import load_dataset
from dt_eva.data.format import METADATA_FILE
from dt_eva.eva import EvaResult
from dt_eva.methods import resolve_method
from dt_eva.methods.model import AdaLoraSchedule, MethodModel, build_method_model, check_same_base
from dt_eva.methods.registry import MethodSpec
from dt_eva.runs.base import PretrainedBase, build_model, load_pretrained_base
from dt_eva.runs.configs import FinetuneConfig, PretrainConfig
from dt_eva.runs.layout import RunPaths
from dt_eva.runs.marker import read_meta, run_kind
from dt_eva.utils.io import read_json
from dt_eva.utils.torchfiles import load_checkpoint, load_state_dict_file


def target_returns(dataset: Any, tasks: Iterable[str]) -> dict[str, float]:
    """The return each task's episodes are conditioned on: the best return in its training data
    (the paper's choice). One function, so every command conditions the same way."""
    return {task: float(dataset.max_return(task)) for task in tasks}


def collect_hint(data_path: str | Path, task: str) -> str:
    """A `dt-eva collect` command that adds `task` to the dataset at `data_path` (with the dataset's own
    episodes, noise levels, random prefixes and seed, which `collect` requires) or creates it."""
    from dt_eva.envs import short_name  # lazy: dt_eva.envs loads gymnasium (0.7 s)

    command = f"dt-eva collect --tasks {short_name(task)} --out {data_path}"
    try:
        meta = read_json(Path(data_path) / METADATA_FILE)
        if "source" in meta:  # an imported dataset: `collect` cannot add to it, a new import can hold the task
            return f"dt-eva import --from {meta['source']['kind']} {meta['source']['path']} --out <new dataset>"
        noise = ",".join(f"{float(x):g}" for x in meta["noise_levels"])
        prefixes = ",".join(str(int(x)) for x in meta.get("random_prefixes", [0]))
        return f"{command} --episodes {int(meta['episodes'])} --noise {noise} --random-prefix {prefixes} --seed {int(meta['seed'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{command} --episodes 48"


def load_task_dataset(data_path: str | Path, task: str) -> Any:
    """The fine-tuning task's data; a missing dataset or task says which `dt-eva collect` to run."""
    path = Path(data_path)
    if not path.is_dir():
        raise FileNotFoundError(f"fine-tuning dataset {path} does not exist; create it with `{collect_hint(path, task)}`")
    try:
        return load_dataset(path, tasks=[task])
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. Create the fine-tuning data with `{collect_hint(path, task)}`") from None
    except ValueError as e:
        if task in str(e) and "no data for" in str(e):
            raise ValueError(f"{e}. Collect it with `{collect_hint(path, task)}` (or set data.path to a dataset "
                             f"holding {task})") from None
        raise


def adalora_schedule(cfg: FinetuneConfig) -> AdaLoraSchedule:
    """AdaLoRA's schedule of a fine-tuning config: from `adalora.init_rank` (0: rank + 4, the paper's
    appendix B start) down to `rank` on average; `tinit` / `tfinal` are fractions of `train.steps`."""
    steps, settings = int(cfg.train.steps), cfg.adalora
    init_r = settings.init_rank or cfg.rank + 4
    return AdaLoraSchedule(init_r=max(init_r, cfg.rank), target_r=cfg.rank, total_steps=steps,
                           tinit=int(settings.tinit * steps), tfinal=int(settings.tfinal * steps),
                           delta_t=settings.delta_t, orth_reg_weight=settings.orth_reg_weight)


def method_model_of(cfg: FinetuneConfig, spec: MethodSpec, base: PretrainedBase, eva_result: Any = None) -> MethodModel:
    """The method model a fine-tuning config describes, on `base` (EVA methods: with `eva_result`)."""
    return build_method_model(
        spec, base, rank=cfg.rank, alpha=cfg.alpha, adapter_dropout=cfg.adapter_dropout, dropout=cfg.dropout,
        eva_result=eva_result, adjust_alpha=cfg.eva.adjust_alpha,
        adalora=adalora_schedule(cfg) if spec.kind == "adalora" else None,
    )


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The run's model in eval mode on `device`, and `info` about it.

    `info`: `kind`, `run_dir`, `config` (dict), `weights` (the file loaded), `step` (for a
    checkpoint), `tasks`, `rtg_scale`, `reward_scale` (the model's, also `model.cfg.*`: the
    pre-training run's `data.*`), `target_returns` (task -> best dataset return;
    empty when the dataset is not reachable, with the reason in `dataset_error`); fine-tuning runs
    add `task`, `method` and `ranks`.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if run_kind(run_dir) == "finetune":
        return load_finetune_model(run_dir, device)
    return _load_pretrain_model(RunPaths(run_dir), torch.device(device))


def _weights(paths: RunPaths) -> tuple[dict[str, Any], Path, int | None]:
    """`model.pt`, else the model part of `checkpoints/last.pt` (a run that has not finished)."""
    if paths.model.is_file():
        return load_state_dict_file(paths.model), paths.model, None
    if not paths.last_checkpoint.is_file():
        raise FileNotFoundError(f"{paths.root} has neither model.pt nor checkpoints/last.pt: the run saved no weights yet")
    checkpoint = load_checkpoint(paths.last_checkpoint)
    return checkpoint["model"], paths.last_checkpoint, int(checkpoint["step"])


def _load_pretrain_model(paths: RunPaths, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    if not paths.config.is_file():
        raise FileNotFoundError(f"{paths.config} is missing, so the model cannot be rebuilt")
    cfg = load_config(PretrainConfig, paths.config)
    state, weights_path, step = _weights(paths)
    model = build_model(cfg.model, state, weights_path, paths.config)
    model.to(device).eval()
    info: dict[str, Any] = {
        "kind": "pretrain", "run_dir": str(paths.root), "config": config_to_dict(cfg), "weights": str(weights_path),
        "step": step, "tasks": cfg.data.tasks, "rtg_scale": cfg.model.rtg_scale,
        "reward_scale": cfg.model.reward_scale, "target_returns": {},
    }
    try:
        dataset = load_dataset(cfg.data.path, tasks=cfg.data.tasks)
        info["tasks"] = list(dataset.tasks)
        info["target_returns"] = target_returns(dataset, dataset.tasks)
    except (FileNotFoundError, ValueError) as e:
        info["dataset_error"] = str(e)
    return model, info


def load_finetune_model(run_dir: str | Path, device: str | torch.device = "cpu",
                        merged: bool | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuning run's policy in eval mode on `device`, and `info` about it.

    The base comes from the pre-training run recorded in `meta.json` (its `model.pt` must be the one
    the run was fine-tuned from: checked by SHA-256); the trained tensors from `model.pt` (or, for a run
    that has not finished, `checkpoints/last.pt`). `merged=True` loads `merged_model.pt` into a plain
    `DecisionTransformer`; `None` does so when the file exists.
    """
    from dt_eva.envs import resolve_task  # lazy: dt_eva.envs loads gymnasium (0.7 s)

    paths = RunPaths(run_dir)
    for path in (paths.config, paths.meta):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {paths.root} is not a complete `dt-eva finetune` run")
    cfg = load_config(FinetuneConfig, paths.config)
    recorded = (read_meta(paths.root) or {}).get("base", {})
    base = load_pretrained_base(recorded.get("path") or cfg.checkpoint)
    check_same_base(recorded, base.identity(), str(paths.root))
    use_merged = paths.merged_model.is_file() if merged is None else merged
    if use_merged:
        model, weights_path, step, ranks = _load_merged(paths, base)
    else:
        model, weights_path, step, ranks = _load_method_model(paths, cfg, base)
    model.to(device).eval()
    task = resolve_task(cfg.task)
    info: dict[str, Any] = {
        "kind": "finetune", "run_dir": str(paths.root),
        "config": {**config_to_dict(cfg), "model": config_to_dict(base.model_cfg)},
        "weights": str(weights_path), "step": step, "tasks": [task], "task": task,
        "method": resolve_method(cfg.method).name,
        "ranks": ranks, "rtg_scale": base.model_cfg.rtg_scale, "reward_scale": base.model_cfg.reward_scale,
        "target_returns": {},
    }
    try:
        info["target_returns"] = target_returns(load_task_dataset(cfg.data.path, task), [task])
    except (FileNotFoundError, ValueError) as e:
        info["dataset_error"] = str(e)
    return model, info


def _load_merged(paths: RunPaths, base: PretrainedBase) -> tuple[nn.Module, Path, None, dict]:
    if not paths.merged_model.is_file():
        raise FileNotFoundError(f"{paths.merged_model} does not exist; run the fine-tuning with --export-merged")
    model = build_model(base.model_cfg, load_state_dict_file(paths.merged_model), paths.merged_model,
                        RunPaths(base.run_dir).config)
    return model, paths.merged_model, None, {}


def _load_method_model(paths: RunPaths, cfg: FinetuneConfig, base: PretrainedBase) -> tuple[nn.Module, Path, Any, dict]:
    spec = resolve_method(cfg.method)
    state, weights_path, step = _weights(paths)
    eva_result = None
    if spec.eva:
        eva_result = EvaResult.load(paths.eva)
    mm = method_model_of(cfg, spec, base, eva_result)
    try:
        mm.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"weights in {weights_path} do not fit the {spec.name} model: {e}") from None
    return mm.model, weights_path, step, mm.ranks()
