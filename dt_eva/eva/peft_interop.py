"""Hand an `EvaResult` to PEFT users (optional: needs the `peft` extra).

    from peft.tuners.lora.eva import initialize_lora_eva_weights
    eva_sd = to_peft_eva_state_dict(result, peft_model)
    initialize_lora_eva_weights(peft_model, eva_state_dict=eva_sd)

PEFT looks layers up by their name inside the PeftModel ("base_model.model.<name>") and takes each
tensor's row count as the layer's new rank (0 rows removes the adapter from that layer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dt_eva.eva.matching import weight_shape
from dt_eva.eva.result import EvaResult

_PEFT_PREFIX = "base_model.model."


def to_peft_eva_state_dict(result: EvaResult, peft_model: nn.Module, whiten: bool = False) -> dict[str, Tensor]:
    """The `eva_state_dict` that `peft.tuners.lora.eva.initialize_lora_eva_weights` loads.

    Keys are the names of `peft_model`'s LoRA layers; values are the layer's EVA components
    ((rank, in_features), float32, on the layer's device). `whiten=True` hands out what PEFT's own
    `EvaConfig(whiten=True)` produces, `v_j / sqrt(sigma_j)` (see `_peft_whitened`); that is PEFT's
    definition, not the paper's EVA-whiten ablation (the adapter init "eva_whiten" of
    `dt_eva.adapters`). The result may have been computed on the bare base model or on the
    PeftModel itself. Raises ValueError when a LoRA layer of the model has no entry in the result or
    a result layer has no LoRA layer, naming them.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("to_peft_eva_state_dict needs peft: pip install 'dt-eva[peft]'") from err
    if not hasattr(peft_model, "peft_config"):
        raise ValueError(f"peft_model must be a PeftModel (from peft.get_peft_model), got {type(peft_model).__name__}")

    state: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base_name = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
        key = name if name in result.ranks else base_name if base_name in result.ranks else None
        if key is None:
            missing.append(base_name)
            continue
        weight = module.get_base_layer().weight
        a = result.components[key]
        if whiten:
            a = _peft_whitened(key, a, result.singular_values[key])
        if a.shape[1] != _in_features(module):
            raise ValueError(
                f"EVA components of {key!r} have {a.shape[1]} input features but the PEFT layer {name!r} has "
                f"{_in_features(module)}; the result was computed on a different model"
            )
        state[name] = a.to(device=weight.device, dtype=torch.float32).contiguous()
        used.add(key)
    if missing:
        raise ValueError(
            f"the EVA result has no components for LoRA layers {missing}; compute it with the same target_modules "
            "as the LoraConfig"
        )
    extra = [n for n in result.ranks if n not in used]
    if extra:
        raise ValueError(f"EVA result layers {extra} are not LoRA layers of the PEFT model; check target_modules")
    return state


def _in_features(module: nn.Module) -> int:
    return weight_shape(module.get_base_layer())[0]


def _peft_whitened(name: str, components: Tensor, singular_values: Tensor) -> Tensor:
    """PEFT's whitening (`peft.tuners.lora.eva`, `EvaConfig(whiten=True)`): row j divided by
    `sqrt(sigma_j)`, sigma_j the j-th singular value of the layer's activation matrix (centred, as
    PEFT's is, unless `EvaConfig.center=False`)."""
    sv = singular_values[: components.shape[0]].to(torch.float32)
    if sv.numel() < components.shape[0] or not torch.all(sv > 0):
        raise ValueError(
            f"PEFT whitening of {name!r} needs a positive singular value per component; got "
            f"{sv.tolist()} for {components.shape[0]} components (degenerate activations?)"
        )
    return components.to(torch.float32) / sv.sqrt()[:, None]
