"""PEFT-style selection of target modules, shared by EVA and the adapters.

`target_modules` may be
- None: every adaptable layer (nn.Linear and GPT-2-style Conv1D);
- a list/tuple/set of strings: a module matches when its full name equals an entry or ends with
  "." + entry (so "c_proj" matches every "...c_proj");
- a single string: a regular expression that must match the full module name;
- a callable `(name, module) -> bool`.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Union

import torch
from torch import nn

TargetModules = Union[None, str, Iterable[str], Callable[[str, nn.Module], bool]]


def layer_kind(module: nn.Module) -> str | None:
    """`"linear"` for nn.Linear, `"conv1d"` for a GPT-2-style Conv1D, None for anything else.

    The one place that tells the two layouts apart (EVA, the adapters, the PEFT bridge and the rank
    check all ask here). Conv1D (transformers.pytorch_utils.Conv1D) is recognised by class name and
    layout, so that transformers never has to be imported: `weight` is (in_features, out_features)
    and `nf` is out_features.
    """
    if isinstance(module, nn.Linear):
        return "linear"
    weight = getattr(module, "weight", None)
    if (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and getattr(module, "nf", None) == weight.shape[1]
    ):
        return "conv1d"
    return None


def is_conv1d(module: nn.Module) -> bool:
    """True for a GPT-2-style Conv1D (see `layer_kind`)."""
    return layer_kind(module) == "conv1d"


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """`(in_features, out_features)` of an nn.Linear (which stores (out, in)) or a Conv1D (which stores (in, out))."""
    kind = layer_kind(module)
    if kind == "linear":
        return module.in_features, module.out_features
    if kind == "conv1d":
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    raise ValueError(f"cannot adapt a {type(module).__name__}: only nn.Linear and GPT-2 Conv1D are supported")


def is_adaptable(module: nn.Module) -> bool:
    """nn.Linear, Conv1D, or an adapter wrapper whose `base_layer` is one of those."""
    return adaptable_in_features(module) is not None


def adaptable_in_features(module: nn.Module) -> int | None:
    """Input width of an adaptable layer, or None when the module cannot be adapted."""
    if layer_kind(module) is not None:
        return weight_shape(module)[0]
    base = getattr(module, "base_layer", None)
    if isinstance(base, nn.Module) and base is not module:
        return adaptable_in_features(base)
    return None


def _matcher(target_modules: TargetModules) -> Callable[[str, nn.Module], bool]:
    if target_modules is None:
        return lambda name, module: is_adaptable(module)
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"target_modules {target_modules!r} is not a valid regular expression: {err}") from err
        return lambda name, module: pattern.fullmatch(name) is not None
    if callable(target_modules):
        return lambda name, module: bool(target_modules(name, module))
    keys = list(target_modules)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(
            "target_modules must be None, a regex string, a non-empty list of module names or suffixes, "
            f"or a predicate (name, module) -> bool; got {target_modules!r}"
        )
    return lambda name, module: any(name == k or name.endswith("." + k) for k in keys)


def match_modules(
    model: nn.Module, target_modules: TargetModules = None, require_adaptable: bool = True
) -> list[tuple[str, nn.Module]]:
    """The (full name, module) pairs of `model` selected by `target_modules`, in `named_modules()` order.

    Raises ValueError when nothing matches, and (with `require_adaptable`) when a matched module is
    not an nn.Linear / Conv1D, naming it. Modules inside an adapter wrapper's `base_layer` are skipped
    when the wrapper itself matched, so a wrapped model selects the same names as the bare one.
    """
    matches = _matcher(target_modules)
    selected: list[tuple[str, nn.Module]] = []
    wrapped: set[str] = set()
    for name, module in model.named_modules():
        if not name or any(name.startswith(w + ".") for w in wrapped):
            continue
        if matches(name, module):
            selected.append((name, module))
            if getattr(module, "base_layer", None) is not None:
                wrapped.add(name)
    if not selected:
        examples = [n for n, m in model.named_modules() if n and is_adaptable(m)][:8]
        raise ValueError(
            f"target_modules {target_modules!r} matched no module of {type(model).__name__}; "
            f"adaptable layers include {examples}. Use full names, suffixes after a dot, a regex string "
            "or a predicate (name, module) -> bool."
        )
    if require_adaptable:
        bad = [(n, type(m).__name__) for n, m in selected if not is_adaptable(m)]
        if bad:
            shown = ", ".join(f"{n!r} ({t})" for n, t in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise ValueError(
                f"target_modules {target_modules!r} selected modules that cannot be adapted: {shown}. "
                "Only nn.Linear and GPT-2-style Conv1D layers can be adapted; narrow the pattern."
            )
    return selected
