"""Put LoRA / DoRA adapters into any torch model, in place, and manage them afterwards."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from dt_eva.adapters import init as inits
from dt_eva.adapters.layers import ADAPTER_CLASSES, DoraLayer, LoraLayer, weight_shape

__all__ = [
    "ADAPTER_METHODS",
    "inject_adapters",
    "adapter_layers",
    "adapter_parameters",
    "merge_adapters",
    "unmerge_adapters",
    "unload_adapters",
    "describe_adapters",
]

logger = logging.getLogger("dt_eva.adapters")

#: the adapter methods `inject_adapters(method=...)` takes ("lora", "dora"); the fine-tuning methods
#: built on them are `dt_eva.methods.METHODS`
ADAPTER_METHODS = tuple(ADAPTER_CLASSES)
# inits that rewrite the frozen base weight (its residual has to be saved with the adapter)
RESIDUAL_INITS = ("pissa", "olora")

TargetSpec = Iterable[str] | str | Callable[[str, nn.Module], bool] | None


def inject_adapters(
    model: nn.Module,
    target_modules: TargetSpec = None,
    method: str = "lora",
    rank: int = 8,
    ranks: Mapping[str, int] | None = None,
    alpha: float = 1.0,
    init: str = "random",
    eva: Any = None,
    dropout: float = 0.0,
    adjust_alpha: bool = False,
) -> dict[str, int]:
    """Wrap the target layers of `model` with LoRA or DoRA adapters, in place.

    Args:
        model: any torch module; nn.Linear and GPT-2 Conv1D layers can be adapted.
        target_modules: as in `dt_eva.eva.compute_eva` (names matched PEFT-style, a regex, or a
            predicate); default: the layers of `eva` when it is given, else every linear layer.
        method: "lora" or "dora".
        rank: the rank of every target (ignored by the EVA inits, whose ranks come from `eva`).
        ranks: per-module ranks keyed by full module name, overriding `rank`; 0 leaves a module unwrapped.
        alpha: LoRA alpha; each layer scales its update by `alpha / rank`.
        init: "random" | "eva" | "eva_whiten" | "lora_redist" | "pissa" | "olora".
        eva: an `EvaResult` (required by "eva", "eva_whiten", "lora_redist").
        dropout: dropout on the adapter's input.
        adjust_alpha: scale each layer's alpha by `rank_i / reference_rank` so that `alpha / rank`
            stays the same as for uniform rank (PEFT EVA's `adjust_scaling_factors`); the reference
            is EVA's per-layer budget rank for the EVA inits, `rank` otherwise.

    Only adapter parameters are left trainable (every other parameter of `model` is frozen).
    Returns `{module name: rank}` of the wrapped modules; modules with rank 0 are left as they were.
    """
    _check_arguments(model, method, init, rank, ranks, alpha, dropout, eva)
    if target_modules is None and init in inits.EVA_INITS:
        target_modules = sorted(eva.ranks)
    names = _target_names(model, target_modules)
    modules = dict(model.named_modules())
    plan = _plan(modules, names, init, eva, rank, ranks, alpha, adjust_alpha)  # validates before the model changes
    wrapped: dict[str, int] = {}
    for name, (r, layer_alpha) in plan.items():
        layer = ADAPTER_CLASSES[method](modules[name], r, layer_alpha, dropout)
        layer.init_name = init
        _apply_init(layer, init, eva, name)
        if isinstance(layer, DoraLayer):
            layer.init_magnitude()
        _set_submodule(model, name, layer)
        wrapped[name] = r
    _freeze_all_but_adapters(model)
    logger.info("adapters: %s (%s init) on %d modules, %d with rank 0 left unwrapped\n%s", method, init,
                len(wrapped), len([n for n in names if n not in plan]), describe_adapters(model))
    return wrapped


def _check_arguments(model: nn.Module, method: str, init: str, rank: int, ranks: Mapping[str, int] | None,
                     alpha: float, dropout: float, eva: Any) -> None:
    """`inject_adapters`' arguments, each checked on its own and against the others."""
    if method not in ADAPTER_CLASSES:
        raise ValueError(f"unknown adapter method {method!r}; valid: {', '.join(ADAPTER_METHODS)}")
    if init not in inits.INITS:
        raise ValueError(f"unknown adapter init {init!r}; valid: {', '.join(inits.INITS)}")
    if adapter_layers(model):
        raise ValueError(
            "model already has adapters; inject into a fresh copy of the base model "
            "(or merge_adapters() and rebuild)"
        )
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    uses_eva = init in inits.EVA_INITS
    if uses_eva and eva is None:
        raise ValueError(f"init={init!r} needs an EvaResult: pass eva=compute_eva(...)")
    if eva is not None and not uses_eva:
        raise ValueError(f"eva= was given but init={init!r} does not use it; use init='eva' (or drop eva=)")
    if uses_eva and ranks is not None:
        raise ValueError(f"init={init!r} takes its ranks from the EvaResult; do not pass ranks=")


def _plan(modules: Mapping[str, nn.Module], names: list[str], init: str, eva: Any, rank: int,
          ranks: Mapping[str, int] | None, alpha: float, adjust_alpha: bool) -> dict[str, tuple[int, float]]:
    """`{module name: (rank, alpha)}` of the modules to wrap (rank 0 ones left out); raises before
    anything is wrapped when a rank does not fit its layer or the EvaResult lacks an entry."""
    if init in inits.EVA_INITS:
        missing = [n for n in names if n not in eva.ranks]
        if missing:
            raise ValueError(
                f"the EvaResult has no entry for {_short_list(missing)}; compute EVA with the same "
                "target_modules as the adapters"
            )
        module_ranks = {n: int(eva.ranks[n]) for n in names}
        reference_rank = _eva_reference_rank(eva)
    else:
        module_ranks = _resolve_ranks(names, rank, ranks)
        reference_rank = rank
    plan: dict[str, tuple[int, float]] = {}
    for name in (n for n in names if module_ranks[n] != 0):
        r = module_ranks[name]
        in_features, out_features = weight_shape(modules[name])
        if r > min(in_features, out_features):
            raise ValueError(
                f"rank {r} for layer {name!r} ({in_features} -> {out_features}) exceeds its limit "
                f"min(in_features, out_features) = {min(in_features, out_features)}"
            )
        if init in ("eva", "eva_whiten"):
            _check_eva_entry(eva, name, r, in_features, needs_sv=init == "eva_whiten")
        plan[name] = (r, float(alpha * r / reference_rank if adjust_alpha else alpha))
    if not plan:
        raise ValueError("every target module has rank 0; nothing to adapt")
    return plan


def adapter_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every adapter layer of `model`, keyed by the module name it wraps."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters of `model` (A, B and DoRA magnitudes), e.g. for an optimizer."""
    return [p for layer in adapter_layers(model).values() for p in layer.adapter_tensors().values()]


def merge_adapters(model: nn.Module) -> int:
    """Fold every unmerged adapter into its base weight; returns how many were merged."""
    count = 0
    for layer in adapter_layers(model).values():
        if not layer.merged:
            layer.merge()
            count += 1
    return count


def unmerge_adapters(model: nn.Module) -> int:
    """Undo `merge_adapters`; returns how many were unmerged."""
    count = 0
    for layer in adapter_layers(model).values():
        if layer.merged:
            layer.unmerge()
            count += 1
    return count


def unload_adapters(model: nn.Module, merge: bool = True) -> dict[str, int]:
    """Put the base layers back in place of the adapters, in place; with `merge` the adapters are
    folded into the weights first (PEFT's merge_and_unload), otherwise they are dropped (for
    PiSSA / OLoRA that leaves the residual weight). Returns `{module name: rank}` of what was removed.
    Parameters keep their current `requires_grad`."""
    removed = {}
    for name, layer in adapter_layers(model).items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        _set_submodule(model, name, layer.base_layer)
        removed[name] = layer.rank
    return removed


def describe_adapters(model: nn.Module) -> str:
    """A readable table of the adapters in `model` and the trainable-parameter count."""
    layers = adapter_layers(model)
    if not layers:
        return "no adapters"
    width = max(len(n) for n in layers)
    lines = [f"{'module':<{width}}  method kind     in -> out       rank  alpha    params"]
    for name, layer in layers.items():
        params = sum(p.numel() for p in layer.adapter_tensors().values())
        lines.append(
            f"{name:<{width}}  {layer.method:<6} {layer.kind:<7} {layer.in_features:>5} -> {layer.out_features:<6}"
            f" {layer.rank:>5}  {layer.alpha:<7.4g} {params:>7}"
        )
    n_adapter = sum(p.numel() for p in adapter_parameters(model))
    n_total = sum(p.numel() for p in model.parameters())
    lines.append(f"adapter parameters: {n_adapter} of {n_total} ({100.0 * n_adapter / max(n_total, 1):.3f}%)")
    return "\n".join(lines)


# ---- helpers ---------------------------------------------------------------------------------------


def _target_names(model: nn.Module, target_modules: TargetSpec) -> list[str]:
    """Full names of the modules to adapt, via the matcher EVA uses (so both pick the same layers)."""
    from dt_eva.eva import match_modules

    # match_modules raises on no match and names any module that is not Linear / Conv1D
    return [name for name, _ in match_modules(model, target_modules)]


def _resolve_ranks(names: list[str], rank: int, ranks: Mapping[str, int] | None) -> dict[str, int]:
    ranks = dict(ranks or {})
    unknown = sorted(set(ranks) - set(names))
    if unknown:
        raise ValueError(
            f"ranks= names modules that are not targets: {_short_list(unknown)}; keys are full module names "
            f"among the targets, e.g. {_short_list(names, 3)}"
        )
    for name, r in ranks.items():
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"rank for {name!r} must be an int >= 0, got {r!r}")
    return {n: ranks.get(n, rank) for n in names}


def _eva_reference_rank(eva: Any) -> float:
    """The uniform rank EVA's budget was set for (budget = layers x rank)."""
    config = getattr(eva, "config", None)
    if config is not None and getattr(config, "rank", None):
        return float(config.rank)
    return sum(eva.ranks.values()) / max(len(eva.ranks), 1)


def _check_eva_entry(eva: Any, name: str, r: int, in_features: int, needs_sv: bool) -> None:
    comps = eva.components.get(name)
    if comps is None:
        raise ValueError(f"the EvaResult has rank {r} for {name!r} but no components")
    if comps.dim() != 2 or comps.shape[1] != in_features:
        raise ValueError(
            f"EVA components for {name!r} have shape {tuple(comps.shape)} but the layer has "
            f"in_features={in_features}; was EVA computed on a different model?"
        )
    if comps.shape[0] < r:
        raise ValueError(f"EVA components for {name!r} have {comps.shape[0]} rows, fewer than its rank {r}")
    if needs_sv and name not in getattr(eva, "singular_values", {}):
        raise ValueError(f"init='eva_whiten' needs singular values for {name!r}; the EvaResult has none")
    if needs_sv and name not in getattr(eva, "num_samples", {}):
        raise ValueError(
            f"init='eva_whiten' needs the number of activation rows EVA saw for {name!r} (EvaResult.num_samples); "
            "the result has none: recompute it with compute_eva"
        )
    if needs_sv:  # fail here, before any layer is wrapped, if the scaling is undefined
        try:
            inits.whiten_components(comps[:r], eva.singular_values[name], eva.num_samples[name])
        except ValueError as err:
            raise ValueError(f"init='eva_whiten' for {name!r}: {err}") from None


def _apply_init(layer: LoraLayer, init: str, eva: Any, name: str) -> None:
    if init in ("random", "lora_redist"):
        inits.init_random(layer)
    elif init == "eva":
        inits.init_eva(layer, eva.components[name])
    elif init == "eva_whiten":
        inits.init_eva_whiten(layer, eva.components[name], eva.singular_values[name], int(eva.num_samples[name]))
    elif init == "pissa":
        inits.init_pissa(layer)
    elif init == "olora":
        inits.init_olora(layer)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _freeze_all_but_adapters(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in adapter_parameters(model):
        p.requires_grad_(True)


def _short_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
