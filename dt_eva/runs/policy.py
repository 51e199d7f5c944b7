"""Reading run directories: `load_run_model(run_dir)` rebuilds the policy of any run.

Pre-training runs: the `DTConfig` comes from `config.yaml`, the weights from `model.pt` (or, for a
run that has not finished, `checkpoints/last.pt`). Fine-tuning runs (`meta.json` kind "finetune")
are delegated to `dt_eva.training.finetune.load_finetune_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dt_eva.config import config_to_dict, load_config


def run_kind(run_dir: str | Path) -> str:
    """"pretrain" or "finetune" from `meta.json` (a run without one is taken as pre-training)."""
    meta_path = Path(run_dir) / "meta.json"
    if not meta_path.is_file():
        return "pretrain"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path} is not readable JSON ({e}); the run directory is damaged") from None
    kind = meta.get("kind", "pretrain")
    if kind not in ("pretrain", "finetune"):
        raise ValueError(f"{meta_path}: unknown run kind {kind!r} (expected 'pretrain' or 'finetune')")
    return kind


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The run's model in eval mode on `device`, and `info` about it.

    `info`: `kind`, `run_dir`, `config` (dict), `weights` (the file loaded), `step` (for a
    checkpoint), `tasks`, `rtg_scale`, `reward_scale`, `target_returns` (task -> best dataset return;
    empty when the dataset is not reachable, with the reason in `dataset_error`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if run_kind(run_dir) == "finetune":
        from dt_eva.training.finetune import load_finetune_model

        return load_finetune_model(run_dir, device)
    return _load_pretrain_model(run_dir, torch.device(device))


def _load_pretrain_model(run_dir: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    from dt_eva.models import DecisionTransformer
    from dt_eva.training.checkpoint import load_checkpoint, load_state_dict_file
    from dt_eva.training.pretrain import PretrainConfig

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing, so the model cannot be rebuilt; is {run_dir} a run directory?")
    cfg = load_config(PretrainConfig, config_path)
    weights_path = run_dir / "model.pt"
    step = None
    if weights_path.is_file():
        state = load_state_dict_file(weights_path)
    else:
        weights_path = run_dir / "checkpoints" / "last.pt"
        if not weights_path.is_file():
            raise FileNotFoundError(
                f"{run_dir} has neither model.pt nor checkpoints/last.pt: the run saved no weights yet"
            )
        checkpoint = load_checkpoint(weights_path)
        state, step = checkpoint["model"], int(checkpoint["step"])
    model = DecisionTransformer(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"weights in {weights_path} do not fit the model of {config_path}: {e}") from None
    model.to(device).eval()

    info: dict[str, Any] = {
        "kind": "pretrain",
        "run_dir": str(run_dir),
        "config": config_to_dict(cfg),
        "weights": str(weights_path),
        "step": step,
        "tasks": cfg.data.tasks,
        "rtg_scale": cfg.data.rtg_scale,
        "reward_scale": cfg.data.reward_scale,
        "target_returns": {},
    }
    try:
        from dt_eva.data import load_dataset

        dataset = load_dataset(cfg.data.path, tasks=cfg.data.tasks)
        info["tasks"] = list(dataset.tasks)
        info["target_returns"] = {t: dataset.max_return(t) for t in dataset.tasks}
    except (FileNotFoundError, ValueError) as e:
        info["dataset_error"] = str(e)
    return model, info
