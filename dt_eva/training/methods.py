"""The fine-tuning methods of the paper's Meta-World table, and the EVA glue for the Decision Transformer.

`METHODS` maps a method name to a `MethodSpec`: what is trained (the whole model, our LoRA/DoRA
adapters, or PEFT's AdaLoRA), which adapter layer and which initialiser, and whether EVA must run
first. `build_method_model` applies a method to the pre-trained DT and returns a `MethodModel`,
which knows what a checkpoint of it holds (only the tensors that train) and how to fold the
adapters into a plain DT (`merged_state_dict`). `compute_dt_eva` runs EVA on a DT with the fine-tuning task's data: the token types that
feed each layer's SVD are chosen through the model's `token_mask`, and the batches come from a
sampler of their own, so the training batch stream is the same with and without EVA.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from dt_eva.methods.registry import METHODS, MethodSpec, resolve_method  # noqa: F401  (re-exported)

# Offset added to the run seed for the EVA sampler; any constant works as long as it differs from
# the training sampler's seed, so the two streams are independent.
EVA_SEED_OFFSET = 7919


def check_rank_fits(model: nn.Module, target_modules: Sequence[str], rank: int, what: str = "rank") -> None:
    """Raise a `ValueError` naming the first target layer whose shape cannot hold `rank`.

    A LoRA factor of rank r needs r <= min(in_features, out_features); checking before any adapter
    is injected (or EVA runs) keeps a bad `--rank` from failing half-way with an anonymous layer.
    """
    from dt_eva.eva import match_modules

    for name, module in match_modules(model, list(target_modules)):
        weight = module.weight
        # nn.Linear stores (out, in); the DT only has nn.Linear targets, but be general
        out_f, in_f = (weight.shape[0], weight.shape[1]) if isinstance(module, nn.Linear) else weight.shape[::-1]
        limit = min(int(in_f), int(out_f))
        if rank > limit:
            raise ValueError(
                f"{what} = {rank} is too large for layer {name!r} ({int(in_f)} -> {int(out_f)} features): "
                f"a LoRA factor there can have rank at most {limit}; lower --rank (or --rho for EVA)"
            )


# --- EVA on the Decision Transformer -------------------------------------------------------------


def dt_forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """EVA's `forward_fn` for a DT: a plain forward pass on a `WindowSampler` batch."""
    return model(
        batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch.get("rewards")
    )


def eva_batches(sampler: Any, num_batches: int, device: torch.device | str) -> Iterator[dict[str, torch.Tensor]]:
    """Yield `num_batches` batches from `sampler`, moved to `device` (lazily: no batch is kept)."""
    for _ in range(num_batches):
        yield {key: value.to(device) for key, value in sampler.sample().items()}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run with dropout off (EVA must see the deterministic activations), then restore the mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def compute_dt_eva(
    model: nn.Module,
    dataset: Any,
    task: str,
    *,
    rank: int,
    rho: float,
    token_types: Sequence[str],
    batch_size: int,
    tau: float,
    max_batches: int,
    seed: int,
    whiten: bool = False,
    target_modules: Sequence[str] | None = None,
    rtg_scale: float = 200.0,
    reward_scale: float = 200.0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Any:
    """Run EVA on a Decision Transformer with windows of `task` from `dataset`; returns an `EvaResult`.

    Only the tokens of `token_types` (`"state"`, `"rtg"`, `"action"`, `"reward"`) enter each
    layer's SVD. Batches come from a `WindowSampler` seeded with `seed + EVA_SEED_OFFSET`, separate
    from the training sampler.
    """
    from dt_eva.data import WindowSampler
    from dt_eva.eva import EvaConfig, compute_eva
    from dt_eva.models import DT_ADAPTER_TARGETS

    types = [str(t) for t in token_types]
    if not types:
        raise ValueError("eva.token_types is empty; choose some of state, rtg, action, reward")
    targets = list(target_modules if target_modules is not None else DT_ADAPTER_TARGETS)
    config = EvaConfig(
        rank=rank, rho=float(rho), tau=float(tau), max_batches=max_batches, seed=seed,
        progress=progress,
    )
    # token_mask validates the types against the model's layout up front, before any forward pass
    probe = {"states": torch.zeros(1, 1, model.cfg.state_dim)}
    model.token_mask(probe, types)
    sampler = WindowSampler(
        dataset, context_len=model.cfg.context_len, batch_size=batch_size, rtg_scale=rtg_scale,
        reward_scale=reward_scale, seed=seed + EVA_SEED_OFFSET, tasks=[task],
    )
    with eval_mode(model):
        return compute_eva(
            model,
            eva_batches(sampler, max_batches, device),
            config,
            target_modules=targets,
            forward_fn=dt_forward,
            token_mask_fn=lambda batch: model.token_mask(batch, types),
        )


def eva_summary(result: Any, target_modules: Sequence[str] | None = None) -> dict[str, Any]:
    """JSON-ready summary of an `EvaResult`: ranks per module and as a layer x module table,
    explained variance, convergence, batches and seconds."""
    from dt_eva.reporting.rank_heatmap import rank_grid

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


# --- the model of a method ------------------------------------------------------------------------


@dataclass
class MethodModel:
    """The fine-tuning model of one method plus what the training loop needs to train and checkpoint it."""

    model: nn.Module
    spec: MethodSpec
    wrapped: dict[str, int]  # adapted module -> rank (empty for FFT)
    adalora: Any = None  # dt_eva.adapters.adalora.AdaLoraAdapter for AdaLoRA

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What checkpoints and `model.pt` hold: only the tensors fine-tuning changes."""
        if self.spec.kind == "full":
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.spec.kind == "adapter":
            from dt_eva.adapters import adapter_state_dict

            return adapter_state_dict(self.model)
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if _is_adalora_key(k)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.spec.kind == "full":
            self.model.load_state_dict(state)
        elif self.spec.kind == "adapter":
            from dt_eva.adapters import load_adapter_state_dict

            load_adapter_state_dict(self.model, state)
        else:
            expected = {k for k in self.model.state_dict() if _is_adalora_key(k)}
            if set(state) != expected:
                raise ValueError(
                    f"AdaLoRA weights do not fit the model: missing {sorted(expected - set(state))[:5]}, "
                    f"unexpected {sorted(set(state) - expected)[:5]}"
                )
            self.model.load_state_dict(state, strict=False)

    def ranks(self) -> dict[str, int]:
        """Current rank of every adapted module (AdaLoRA: after pruning)."""
        if self.adalora is not None:
            return self.adalora.ranks()
        return dict(self.wrapped)

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """A plain DT state dict (base module names) with the adapters folded into the weights.

        Works on a copy, so the adapter model itself is left unmerged.
        """
        import copy

        model = copy.deepcopy(self.model).cpu()
        if self.spec.kind == "adapter":
            from dt_eva.adapters import adapter_layers, merge_adapters

            merge_adapters(model)
            for name, layer in adapter_layers(model).items():
                _replace_module(model, name, layer.base_layer)
        elif self.spec.kind == "adalora":
            _fold_adalora(model)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _is_adalora_key(key: str) -> bool:
    return "lora_" in key or "ranknum" in key


def _fold_adalora(model: nn.Module) -> None:
    """Merge every PEFT AdaLoRA layer of `model` into its base layer and put the base layer back."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "lora_E") and hasattr(module, "base_layer") and hasattr(module, "merge"):
            module.merge()
            _replace_module(model, name, module.get_base_layer())


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def adalora_ranks(cfg: Any) -> tuple[int, int]:
    """(init_r, target_r) of AdaLoRA for this config."""
    init_r = cfg.adalora.init_rank or math.ceil(1.5 * cfg.rank)
    return max(init_r, cfg.rank), cfg.rank


def build_method_model(
    cfg: Any,
    spec: MethodSpec,
    base: Any,
    eva_result: Any = None,
    total_steps: int | None = None,
) -> MethodModel:
    """The pre-trained DT with the method applied (adapters injected, base frozen; FFT: all trainable)."""
    from dt_eva.models import DT_ADAPTER_TARGETS

    model = base.build(cfg.dropout)
    if spec.kind == "full":
        model.requires_grad_(True)
        return MethodModel(model, spec, {})
    if spec.kind == "adapter":
        from dt_eva.adapters import inject_adapters

        kwargs: dict[str, Any] = dict(
            method=spec.adapter, alpha=cfg.alpha, init=spec.init, dropout=cfg.adapter_dropout
        )
        if spec.eva:
            if eva_result is None:
                raise ValueError(f"method {spec.name!r} needs an EVA result")
            kwargs.update(eva=eva_result, adjust_alpha=cfg.eva.adjust_alpha)
        else:
            kwargs.update(rank=cfg.rank)
        wrapped = inject_adapters(model, list(DT_ADAPTER_TARGETS), **kwargs)
        return MethodModel(model, spec, wrapped)
    from dt_eva.adapters.adalora import apply_adalora

    steps = int(total_steps or cfg.train.steps)
    init_r, target_r = adalora_ranks(cfg)
    ada = apply_adalora(
        model,
        list(DT_ADAPTER_TARGETS),
        init_r=init_r,
        target_r=target_r,
        total_steps=steps,
        tinit=int(cfg.adalora.tinit * steps),
        tfinal=int(cfg.adalora.tfinal * steps),
        delta_t=cfg.adalora.delta_t,
        alpha=cfg.alpha,
        dropout=cfg.adapter_dropout,
        orth_reg_weight=cfg.adalora.orth_reg_weight,
    )
    return MethodModel(model, spec, {name: init_r for name in ada.target_names}, adalora=ada)


def adalora_allocator_state(ada: Any) -> dict[str, Any]:
    alloc = ada.tuner.rankallocator
    copy = lambda d: {k: v.detach().cpu().clone() for k, v in d.items()}  # noqa: E731
    return {
        "ipt": copy(alloc.ipt),
        "exp_avg_ipt": copy(alloc.exp_avg_ipt),
        "exp_avg_unc": copy(alloc.exp_avg_unc),
        "rank_pattern": ada.config.rank_pattern,
    }


def load_adalora_allocator_state(ada: Any, state: dict[str, Any]) -> None:
    alloc = ada.tuner.rankallocator
    device = next(ada.model.parameters()).device
    for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        setattr(alloc, key, {k: v.to(device) for k, v in state[key].items()})
    ada.config.rank_pattern = state.get("rank_pattern")
