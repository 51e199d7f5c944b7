"""EVA before fine-tuning: run it on the pre-trained DT with the task's data, and write `eva/`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dt_eva.eva import EvaConfig, EvaResult
from dt_eva.methods.eva_dt import compute_dt_eva, eva_summary
from dt_eva.runs.base import PretrainedBase
from dt_eva.runs.configs import FinetuneConfig
from dt_eva.runs.layout import EVA_RANKS_PLOT, EVA_SUMMARY
from dt_eva.utils.io import atomic_dir


def run_eva(cfg: FinetuneConfig, base: PretrainedBase, dataset: Any, task: str,
            device: torch.device, data_seed: int, autocast_dtype: torch.dtype | None = None) -> Any:
    """EVA on a throw-away copy of the pre-trained DT. `cfg.seed` is EVA's own seed (equal on every
    rank); `data_seed` picks the windows (per rank under DDP)."""
    model = base.build(cfg.dropout).to(device)
    return compute_dt_eva(
        model, dataset, task, eva_config_of(cfg), token_types=cfg.eva.token_types, batch_size=cfg.eva.batch_size,
        data_seed=data_seed, device=device, autocast_dtype=autocast_dtype,
    )


def eva_config_of(cfg: FinetuneConfig) -> EvaConfig:
    """The `EvaConfig` a fine-tuning run hands to the SVD: its `eva:` section with the run's rank, rho and
    seed (EVA's own seed, equal on every rank) and its progress setting."""
    return cfg.eva.eva_config(rank=cfg.rank, rho=cfg.rho, seed=cfg.seed, progress=cfg.train.progress)


def save_eva_artifacts(result: Any, eva_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `eva_dir/` in one atomic step: `result.safetensors` + `result.json` (the `EvaResult`),
    `eva.json` (ranks per layer and module, explained variance, init seconds) and `ranks.png`."""
    from dt_eva.reporting.common.heatmap import plot_rank_heatmap  # lazy: matplotlib loads in ~1 s

    summary = {**eva_summary(result), **(extra or {})}
    with atomic_dir(eva_dir) as tmp:
        result.save(tmp)
        (tmp / Path(EVA_SUMMARY).name).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        task = (extra or {}).get("task")
        title = f"EVA ranks{' on ' + task if task else ''} (total {summary['total_rank']})"
        plot_rank_heatmap(result.ranks, tmp / Path(EVA_RANKS_PLOT).name, title=title)
    return eva_dir


def load_eva_result(eva_dir: Path) -> Any:
    return EvaResult.load(eva_dir)
