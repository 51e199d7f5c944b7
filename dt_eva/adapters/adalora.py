"""AdaLoRA (Zhang et al. 2023) through PEFT, applied to an arbitrary torch module (needs the `peft` extra).

PEFT's `AdaLoraModel` is a tuner that swaps the target layers of the module it is given in place,
so the caller keeps its own model object (its `forward`, `loss`, ...). Two things PEFT only does for
HF models are exposed here instead:
- the rank allocator: `step(global_step)` calls `update_and_allocate`; it reads the adapter
  gradients, so call it after `optimizer.step()` and **before** `optimizer.zero_grad()`, every step;
- the orthogonal regulariser PEFT adds to `outputs.loss`: add `orthogonal_regularization()` to
  the loss yourself (it is already weighted by `orth_reg_weight`).

Usage:
    ada = apply_adalora(model, ["attn.qkv", "mlp.fc"], init_r=12, target_r=8, total_steps=1000)
    opt = torch.optim.AdamW(ada.parameters(), lr=1e-4)
    for step in range(1000):
        loss = model.loss(batch) + ada.orthogonal_regularization()
        loss.backward(); opt.step(); ada.step(step); opt.zero_grad()
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from dt_eva.eva.matching import is_conv1d, match_modules

__all__ = ["AdaLoraAdapter", "apply_adalora"]

ADAPTER_NAME = "default"


class AdaLoraAdapter:
    """Handle on the PEFT AdaLoRA layers injected into a model (see `apply_adalora`)."""

    def __init__(self, model: nn.Module, tuner: Any, target_names: list[str]):
        self.model = model
        self.tuner = tuner  # peft AdaLoraModel; its `.model` is `model`
        self.target_names = target_names
        self.config = tuner.peft_config[ADAPTER_NAME]

    def parameters(self) -> list[nn.Parameter]:
        """The trainable AdaLoRA parameters (A, E, B of every target)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def step(self, global_step: int) -> None:
        """Update importance scores and mask ranks to the scheduled budget (PEFT `update_and_allocate`).

        Call after `optimizer.step()` and before `optimizer.zero_grad()`: it needs the gradients.
        """
        if global_step < self.config.total_step - self.config.tfinal:
            missing = [n for n, p in self._adapter_params() if p.grad is None]
            if missing:
                raise ValueError(
                    f"AdaLoRA step({global_step}): no gradient on {missing[0]}; call step() after "
                    "loss.backward() / optimizer.step() and before optimizer.zero_grad()"
                )
        self.tuner.update_and_allocate(global_step)

    def orthogonal_regularization(self) -> torch.Tensor:
        """`orth_reg_weight * mean ||P P^T - I||_F` over the A (rows) and B (columns) of every target,
        the regulariser PEFT adds to an HF model's loss."""
        terms = []
        for name, p in self._adapter_params():
            if ".lora_A." in name:
                cov = p @ p.T
            elif ".lora_B." in name:
                cov = p.T @ p
            else:
                continue
            eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
            terms.append(torch.linalg.norm(cov - eye, ord="fro"))
        if not terms:
            return torch.zeros(())
        return self.config.orth_reg_weight * torch.stack(terms).mean()

    def ranks(self) -> dict[str, int]:
        """Current rank of every target module (number of unmasked singular values)."""
        out = {}
        for name, module in self.model.named_modules():
            lora_e = getattr(module, "lora_E", None)
            if isinstance(lora_e, nn.ParameterDict) and ADAPTER_NAME in lora_e:
                out[name] = int((lora_e[ADAPTER_NAME].detach() != 0).sum().item())
        return out

    def budget(self) -> int:
        """Total rank budget at the end of allocation: `target_r * number of targets`."""
        return int(self.config.target_r) * len(self.target_names)

    def _adapter_params(self) -> list[tuple[str, nn.Parameter]]:
        return [
            (n, p)
            for n, p in self.model.named_parameters()
            if ("lora_A." in n or "lora_B." in n or "lora_E." in n) and ADAPTER_NAME in n
        ]


def apply_adalora(
    model: nn.Module,
    target_modules: Any,
    init_r: int = 12,
    target_r: int = 8,
    total_steps: int = 1000,
    tinit: int = 0,
    tfinal: int = 0,
    delta_t: int = 1,
    alpha: float = 1.0,
    dropout: float = 0.0,
    beta1: float = 0.85,
    beta2: float = 0.85,
    orth_reg_weight: float = 0.5,
) -> AdaLoraAdapter:
    """Inject PEFT AdaLoRA layers into `model` in place and freeze everything else.

    `target_modules` is matched exactly like `inject_adapters` / `compute_eva` (PEFT-style names or
    suffixes, a regex, or a predicate); the matched full names are handed to PEFT as one anchored regex.
    `alpha` is PEFT's AdaLoRA `lora_alpha` (the update is scaled by alpha / current rank).
    """
    try:
        from peft import AdaLoraConfig
        from peft.tuners.adalora import AdaLoraModel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("AdaLoRA needs PEFT: pip install 'dt-eva[peft]'") from err
    names = _checked_targets(model, target_modules, init_r, target_r, total_steps, tinit, tfinal)
    # PEFT wants fan_in_fan_out for Conv1D (it flips the flag per layer and warns otherwise)
    all_conv1d = all(is_conv1d(model.get_submodule(n)) for n in names)
    pattern = "^(?:" + "|".join(re.escape(n) for n in names) + ")$"
    config = AdaLoraConfig(
        target_modules=pattern,
        init_r=init_r,
        target_r=target_r,
        total_step=total_steps,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=delta_t,
        lora_alpha=alpha,
        lora_dropout=dropout,
        fan_in_fan_out=all_conv1d,
        beta1=beta1,
        beta2=beta2,
        orth_reg_weight=orth_reg_weight,
    )
    tuner = AdaLoraModel(model, config, ADAPTER_NAME)
    return AdaLoraAdapter(model, tuner, names)


def _checked_targets(model: nn.Module, target_modules: Any, init_r: int, target_r: int, total_steps: int,
                     tinit: int, tfinal: int) -> list[str]:
    """The full names of the target layers, once the ranks and the schedule are known to fit them."""
    if not (1 <= target_r <= init_r):
        raise ValueError(f"AdaLoRA needs 1 <= target_r <= init_r, got target_r={target_r}, init_r={init_r}")
    if total_steps <= tinit + tfinal:
        raise ValueError(
            f"AdaLoRA total_steps={total_steps} leaves no budgeting phase after tinit={tinit} and "
            f"tfinal={tfinal}; increase total_steps or lower tinit / tfinal"
        )
    names = [name for name, _ in match_modules(model, target_modules)]
    for name in names:
        width = min(model.get_submodule(name).weight.shape)
        if init_r > width:
            raise ValueError(f"AdaLoRA init_r={init_r} exceeds min(in, out) = {width} of layer {name!r}")
    return names
