"""`MethodModel`: one fine-tuning method applied to a pre-trained Decision Transformer.

`build_method_model` applies a method (`dt_eva.methods.registry`) to the pre-trained DT: FFT trains
every parameter, the adapter methods inject our LoRA/DoRA layers into the frozen base, AdaLoRA goes
through PEFT. The resulting `MethodModel` is what `dt_eva.training.Trainer` trains (its `Trainable`
protocol): the loss (plus AdaLoRA's orthogonal regulariser), what a checkpoint holds (only the
tensors that train), the after-step hook (AdaLoRA's rank allocation), the extra checkpoint state
(which base it belongs to; AdaLoRA's allocator), and `merged_state_dict` to fold adapters into a plain DT.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from dt_eva.adapters import adapter_state_dict, inject_adapters, load_adapter_state_dict, unload_adapters
from dt_eva.eva import match_modules
from dt_eva.eva.matching import weight_shape
from dt_eva.methods.registry import MethodSpec
from dt_eva.models import DT_ADAPTER_TARGETS


@dataclass
class MethodModel:
    """The fine-tuning model of one method plus what the training loop needs to train and checkpoint it."""

    model: nn.Module
    spec: MethodSpec
    wrapped: dict[str, int]  # adapted module -> rank (empty for FFT)
    adalora: Any = None  # dt_eva.adapters.adalora.AdaLoraAdapter for AdaLoRA
    base_identity: dict[str, Any] = field(default_factory=dict)  # {"path", "sha256", "step"} of the base

    # --- the Trainer's `Trainable` protocol ---------------------------------------------------------
    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        loss = model.loss(batch)  # type: ignore[operator]
        if self.adalora is None:
            return loss
        # PEFT's orthogonal regulariser enters the gradient, while the logged value stays the action
        # MSE so that AdaLoRA's learning curve is comparable with the other methods'.
        reg = self.adalora.orthogonal_regularization()
        return loss + (reg - reg.detach())

    def after_step(self, step: int) -> None:
        if self.adalora is not None:
            self.adalora.step(step)

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"base": dict(self.base_identity), "method": self.spec.name}
        if self.adalora is not None:
            state["adalora"] = adalora_allocator_state(self.adalora)
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        check_same_base(state.get("base", {}), self.base_identity, "the checkpoint")
        if self.adalora is not None and "adalora" in state:
            load_adalora_allocator_state(self.adalora, state["adalora"])

    # --- what fine-tuning changes -------------------------------------------------------------------
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What checkpoints and `model.pt` hold: only the tensors fine-tuning changes."""
        if self.spec.kind == "full":
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.spec.kind == "adapter":
            return adapter_state_dict(self.model)
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if _is_adalora_key(k)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.spec.kind == "full":
            self.model.load_state_dict(state)
        elif self.spec.kind == "adapter":
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
        model = copy.deepcopy(self.model).cpu()
        if self.spec.kind == "adapter":
            unload_adapters(model, merge=True)
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


@dataclass(frozen=True)
class AdaLoraSchedule:
    """AdaLoRA's rank budget (through PEFT), in steps: every target starts at rank `init_r`; after
    `tinit` steps the budget is pruned every `delta_t` steps until, `tfinal` steps before
    `total_steps`, it averages `target_r`. `orth_reg_weight` weighs PEFT's orthogonal regulariser."""

    init_r: int
    target_r: int
    total_steps: int
    tinit: int
    tfinal: int
    delta_t: int
    orth_reg_weight: float


def build_method_model(
    spec: MethodSpec,
    base: Any,
    *,
    rank: int,
    alpha: float,
    adapter_dropout: float = 0.0,
    dropout: float | None = None,
    eva_result: Any = None,
    adjust_alpha: bool = False,
    adalora: AdaLoraSchedule | None = None,
) -> MethodModel:
    """The pre-trained DT with the method applied (adapters injected, base frozen; FFT: all trainable).

    `base` is a `dt_eva.runs.PretrainedBase` (`.build(dropout)`, `.identity()`); `dropout` replaces
    the DT's own (None keeps it). Adapter methods take `rank` (EVA methods: `eva_result`'s ranks, with
    `adjust_alpha`), `alpha` and `adapter_dropout`; AdaLoRA needs its `adalora` schedule.
    """
    model = base.build(dropout)
    if spec.kind == "full":
        model.requires_grad_(True)
        return MethodModel(model, spec, {}, base_identity=base.identity())
    if spec.kind == "adapter":
        kwargs: dict[str, Any] = dict(method=spec.adapter, alpha=alpha, init=spec.init, dropout=adapter_dropout)
        if spec.eva:
            if eva_result is None:
                raise ValueError(f"method {spec.name!r} needs an EVA result")
            kwargs.update(eva=eva_result, adjust_alpha=adjust_alpha)
        else:
            kwargs.update(rank=rank)
        wrapped = inject_adapters(model, list(DT_ADAPTER_TARGETS), **kwargs)
        return MethodModel(model, spec, wrapped, base_identity=base.identity())
    from dt_eva.adapters.adalora import apply_adalora  # lazy: PEFT is an optional extra

    if adalora is None:
        raise ValueError(f"method {spec.name!r} needs an AdaLoraSchedule")
    ada = apply_adalora(
        model, list(DT_ADAPTER_TARGETS), init_r=adalora.init_r, target_r=adalora.target_r,
        total_steps=adalora.total_steps, tinit=adalora.tinit, tfinal=adalora.tfinal, delta_t=adalora.delta_t,
        alpha=alpha, dropout=adapter_dropout, orth_reg_weight=adalora.orth_reg_weight,
    )
    return MethodModel(model, spec, {name: adalora.init_r for name in ada.target_names}, adalora=ada,
                       base_identity=base.identity())


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


def check_same_base(recorded: Mapping[str, Any], base: Mapping[str, Any], where: str) -> None:
    """Adapters belong to the exact base they were trained on (same SHA-256 of its `model.pt`)."""
    if recorded.get("sha256") and base.get("sha256") and recorded["sha256"] != base["sha256"]:
        raise ValueError(
            f"{where} was fine-tuned from {recorded.get('path')} (model.pt SHA-256 {recorded['sha256'][:12]}..., "
            f"step {recorded.get('step')}), but {base.get('path')}/model.pt now has SHA-256 {base['sha256'][:12]}... "
            f"(step {base.get('step')}): the pre-trained base changed, so the saved adapters do not belong to it. "
            "Restore that base model, or start a new fine-tuning run (--force)"
        )


def check_rank_fits(model: nn.Module, target_modules: Sequence[str], rank: int, what: str = "rank") -> None:
    """Raise a `ValueError` naming the first target layer whose shape cannot hold `rank`.

    A LoRA factor of rank r needs r <= min(in_features, out_features); checking before any adapter
    is injected (or EVA runs) keeps a bad `--rank` from failing half-way with an anonymous layer.
    """
    for name, module in match_modules(model, list(target_modules)):
        in_f, out_f = weight_shape(module)
        limit = min(int(in_f), int(out_f))
        if rank > limit:
            raise ValueError(
                f"{what} = {rank} is too large for layer {name!r} ({int(in_f)} -> {int(out_f)} features): "
                f"a LoRA factor there can have rank at most {limit}; lower --rank (or --rho for EVA)"
            )


