"""EVA on a Decision Transformer: which tokens feed each layer's SVD, and where the batches come from.

`compute_dt_eva` runs `dt_eva.eva.compute_eva` on a DT with windows of the fine-tuning task. The
token types that enter the SVD are chosen through the model's `token_mask`; the batches come from a
sampler of their own, so the training batch stream is the same with and without EVA. Two seeds:
`seed` is EVA's own (its random projections; equal on every process), `data_seed` picks the windows
(different per process under DDP, so every rank contributes different data).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from dt_eva.data import WindowSampler
from dt_eva.eva import EvaConfig, compute_eva
from dt_eva.methods.ranks import rank_grid
from dt_eva.models import DT_ADAPTER_TARGETS, TOKEN_TYPES

# Offset added to the data seed for the EVA sampler; any constant works as long as it differs from
# the training sampler's seed, so the two streams are independent.
EVA_SEED_OFFSET = 7919


def dt_forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """EVA's `forward_fn` for a DT: a plain forward pass on a `WindowSampler` batch."""
    return model(
        batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch.get("rewards")
    )


def eva_batches(sampler: Any, num_batches: int, device: torch.device | str) -> Iterator[dict[str, torch.Tensor]]:
    """Yield `num_batches` batches from `sampler`, moved to `device` (lazily: no batch is kept)."""
    for _ in range(num_batches):
        yield {key: value.to(device) for key, value in sampler.sample().items()}


def compute_dt_eva(
    model: nn.Module,
    dataset: Any,
    task: str,
    config: EvaConfig,
    *,
    token_types: Sequence[str],
    batch_size: int,
    data_seed: int | None = None,
    target_modules: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> Any:
    """Run EVA (`config`: rank, rho, tau, max_batches, seed, ...) on a Decision Transformer with windows
    of `task` from `dataset`; returns an `EvaResult`.

    Only the tokens of `token_types` (`"state"`, `"rtg"`, `"action"`, `"reward"`) enter each
    layer's SVD. `config.max_batches` batches of `batch_size` windows come from a `WindowSampler`
    seeded with `data_seed + EVA_SEED_OFFSET` (`data_seed` defaults to `config.seed`), separate from
    the training sampler, scaled by the model's own `cfg.rtg_scale` / `cfg.reward_scale`.
    `autocast_dtype` (e.g. `torch.bfloat16`) runs the forward passes under autocast; the SVD itself
    stays fp32.
    """
    types = [str(t) for t in token_types]
    if not types:
        raise ValueError(f"eva.token_types is empty; choose some of {', '.join(TOKEN_TYPES)}")
    targets = list(target_modules if target_modules is not None else DT_ADAPTER_TARGETS)
    # token_mask validates the types against the model's layout up front, before any forward pass
    probe = {"states": torch.zeros(1, 1, model.cfg.state_dim)}
    model.token_mask(probe, types)
    sampler = WindowSampler(
        dataset, context_len=model.cfg.context_len, batch_size=batch_size, rtg_scale=model.cfg.rtg_scale,
        reward_scale=model.cfg.reward_scale, seed=(config.seed if data_seed is None else data_seed) + EVA_SEED_OFFSET,
        tasks=[task],
    )
    # compute_eva runs the model in eval mode under no_grad (dropout off: deterministic activations)
    return compute_eva(
        model,
        eva_batches(sampler, config.max_batches, device),
        config,
        target_modules=targets,
        forward_fn=dt_forward if autocast_dtype is None else _autocast_forward(autocast_dtype),
        token_mask_fn=lambda batch: model.token_mask(batch, types),
    )


def eva_summary(result: Any, target_modules: Sequence[str] | None = None) -> dict[str, Any]:
    """JSON-ready summary of an `EvaResult`: ranks per module and as a layer x module table,
    explained variance, convergence, batches and seconds."""
    layers, modules, grid = rank_grid(result.ranks)
    evr = {name: [float(v) for v in torch.as_tensor(t).flatten()] for name, t in result.explained_variance_ratio.items()}
    return {
        "ranks": {name: int(r) for name, r in result.ranks.items()},
        "total_rank": int(sum(result.ranks.values())),
        "rank_table": {"layers": layers, "modules": modules, "ranks": grid},
        "explained_variance_ratio": evr,
        "explained_variance_kept": {
            name: float(sum(evr[name][: int(result.ranks[name])])) for name in result.ranks if name in evr
        },
        "converged": {name: bool(c) for name, c in result.converged.items()},
        "num_batches": int(result.num_batches),
        "init_seconds": float(result.seconds),
    }


def _autocast_forward(dtype: torch.dtype):
    def forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        device_type = next(model.parameters()).device.type
        with torch.autocast(device_type, dtype=dtype):
            return dt_forward(model, batch)

    return forward
