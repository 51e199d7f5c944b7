"""Save adapters (weights + config) and load them onto a fresh copy of the base model.

On disk, a directory written atomically:
    adapter_config.json         {"format", "version", "modules": {name: {method, init, rank, alpha, ...}}}
    adapter_model.safetensors   "<name>.lora_A", "<name>.lora_B", "<name>.magnitude" (DoRA) and,
                                for PiSSA / OLoRA, "<name>.base_weight": the residual base weight
                                those inits leave in the frozen layer (stored in the layer's own
                                layout), without which the fresh base model would not reproduce
                                the adapted one.
Adapters are always saved unmerged, whatever their state in memory; they load unmerged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dt_eva.adapters.inject import (RESIDUAL_INITS, _freeze_all_but_adapters, _set_submodule, adapter_layers,
                                    unload_adapters)
from dt_eva.adapters.layers import ADAPTER_CLASSES, weight_shape

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "adapter_config",
    "adapter_state_dict",
    "load_adapter_state_dict",
    "inject_from_config",
    "save_adapters",
    "load_adapters",
]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "dt_eva.adapters"
VERSION = 1


def adapter_config(model: nn.Module) -> dict[str, Any]:
    """The JSON-able description of every adapter in `model` (enough to re-inject them)."""
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no adapters; call inject_adapters() first")
    modules = {}
    for name, layer in layers.items():
        init = getattr(layer, "init_name", "random")
        modules[name] = {
            "method": layer.method,
            "init": init,
            "rank": layer.rank,
            "alpha": layer.alpha,
            "dropout": layer.dropout_p,
            "kind": layer.kind,
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "residual_base_weight": init in RESIDUAL_INITS,
        }
    return {"format": FORMAT, "version": VERSION, "modules": modules}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors keyed `<module>.<tensor>` (detached CPU copies), unmerged; includes the residual
    base weight of PiSSA / OLoRA layers as `<module>.base_weight`."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model).items():
        for key, param in layer.adapter_tensors().items():
            state[f"{name}.{key}"] = param.detach().to("cpu").clone().contiguous()
        if getattr(layer, "init_name", None) in RESIDUAL_INITS:
            weight = layer.unmerged_base_weight()  # (out, in)
            stored = weight.t() if layer.kind == "conv1d" else weight
            state[f"{name}.base_weight"] = stored.to("cpu").contiguous()
    return state


def inject_from_config(model: nn.Module, config: dict[str, Any]) -> dict[str, int]:
    """Re-create (uninitialised) adapters described by `adapter_config()` on a fresh base model."""
    if config.get("format") != FORMAT:
        raise ValueError(f"not a dt_eva adapter config (format={config.get('format')!r})")
    if config.get("version") != VERSION:
        raise ValueError(f"adapter config version {config.get('version')!r} is not supported (expected {VERSION})")
    if adapter_layers(model):
        raise ValueError("model already has adapters; load onto a fresh copy of the base model")
    modules = config["modules"]
    present = dict(model.named_modules())
    missing = [n for n in modules if n not in present]
    if missing:
        raise ValueError(f"the model has no module(s) {missing[:5]} named in the adapter config; wrong base model?")
    for name, spec in modules.items():
        if spec["method"] not in ADAPTER_CLASSES:
            raise ValueError(f"adapter config: unknown method {spec['method']!r} for {name!r}")
        try:
            shape = weight_shape(present[name])
        except ValueError as err:
            raise ValueError(f"adapter config targets {name!r}: {err}") from err
        if shape != (spec["in_features"], spec["out_features"]):
            raise ValueError(
                f"module {name!r} is {shape[0]} -> {shape[1]} but the adapters were saved for "
                f"{spec['in_features']} -> {spec['out_features']}; wrong base model?"
            )
    wrapped: dict[str, int] = {}
    for name, spec in modules.items():
        # values are left to load_adapter_state_dict, so no initialiser runs here
        layer = ADAPTER_CLASSES[spec["method"]](present[name], int(spec["rank"]), spec["alpha"], spec["dropout"])
        layer.init_name = spec["init"]
        _set_submodule(model, name, layer)
        wrapped[name] = layer.rank
    _freeze_all_but_adapters(model)
    return wrapped


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy tensors from `adapter_state_dict()` into the model's adapters (which must be unmerged)."""
    layers = adapter_layers(model)
    expected: set[str] = set()
    for name, layer in layers.items():
        expected.update(f"{name}.{k}" for k in layer.adapter_tensors())
        if getattr(layer, "init_name", None) in RESIDUAL_INITS:
            expected.add(f"{name}.base_weight")
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"adapter weights do not fit the model's adapters: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (target, value): every check passes before any copy
    for name, layer in layers.items():
        if layer.merged:
            raise ValueError(f"adapter {name!r} is merged; unmerge_adapters() before loading weights")
        targets: dict[str, torch.Tensor] = dict(layer.adapter_tensors())
        if f"{name}.base_weight" in state:
            targets["base_weight"] = layer.base_layer.weight
        for key, target in targets.items():
            value = state[f"{name}.{key}"]
            if value.shape != target.shape:
                raise ValueError(
                    f"{name}.{key}: saved shape {tuple(value.shape)} != model shape {tuple(target.shape)}"
                )
            if not (value.is_floating_point() and bool(torch.isfinite(value).all())):
                raise ValueError(f"{name}.{key}: holds {'non-finite values' if value.is_floating_point() else value.dtype}, "
                                 "not finite floating-point weights")
            pairs.append((target, value))
    with torch.no_grad():
        for target, value in pairs:
            target.copy_(value.to(target.device, target.dtype))


def save_adapters(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapters of `model` to directory `path` (safetensors + JSON), atomically."""
    from safetensors.torch import save_file

    from dt_eva.utils.io import atomic_dir

    config = adapter_config(model)
    state = adapter_state_dict(model)
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_adapters(model: nn.Module, path: str | os.PathLike) -> dict[str, int]:
    """Inject the adapters saved at `path` into `model` (a fresh copy of the base model) and load
    their weights; returns `{module name: rank}`. Only adapter parameters are left trainable.

    A damaged or tampered directory is a `ValueError` naming the file; the model is then left as it
    was (no adapters, same trainable parameters), so a corrected retry works."""
    from dt_eva.utils.io import read_json
    from dt_eva.utils.torchfiles import load_safetensors

    path = Path(path)
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found; expected a directory written by save_adapters()")
    if adapter_layers(model):
        raise ValueError("model already has adapters; load onto a fresh copy of the base model")
    config = read_json(config_file)  # names the file when it is not JSON
    state = load_safetensors(weights_file, what="adapter weights")
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        try:
            wrapped = inject_from_config(model, _checked_config(config))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{config_file}: {_reason(err)}") from None
        try:
            load_adapter_state_dict(model, state)
        except ValueError as err:
            raise ValueError(f"{weights_file}: {err}") from None
    except BaseException:
        unload_adapters(model, merge=False)  # roll the injection back
        for name, p in model.named_parameters():
            p.requires_grad_(trainable.get(name, p.requires_grad))
        raise
    return wrapped


_SPEC_KEYS = {"method": str, "init": str, "rank": int, "alpha": (int, float), "dropout": (int, float),
              "in_features": int, "out_features": int}


def _checked_config(config: Any) -> dict[str, Any]:
    """`config` with the JSON types `inject_from_config` relies on (a tampered file fails here, by key)."""
    if not isinstance(config, dict):
        raise TypeError(f"holds a JSON {type(config).__name__}, not an adapter config object")
    modules = config.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise TypeError(f"'modules' is {modules!r}, not an object of adapted modules")
    for name, spec in modules.items():
        if not isinstance(spec, dict):
            raise TypeError(f"the entry of {name!r} is {spec!r}, not an object")
        for key, types in _SPEC_KEYS.items():
            if key not in spec or isinstance(spec[key], bool) or not isinstance(spec[key], types):
                raise TypeError(f"{name!r}: {key!r} is {spec.get(key)!r}, not a {getattr(types, '__name__', 'number')}")
    return config


def _reason(err: BaseException) -> str:
    return f"no entry {err}" if isinstance(err, KeyError) else str(err)
