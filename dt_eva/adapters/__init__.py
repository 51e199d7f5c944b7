"""LoRA-family adapters for any torch model: LoRA / DoRA layers for nn.Linear and GPT-2 Conv1D,
injection by target pattern, initialisers (random, EVA, EVA-whiten, LoRA-redist, PiSSA, OLoRA),
merge / unmerge and save / load.

Imports torch only; safetensors (save/load) and peft (`dt_eva.adapters.adalora`) are imported lazily.
"""

from dt_eva.adapters.init import EVA_INITS, INITS
from dt_eva.adapters.inject import (
    ADAPTER_METHODS,
    adapter_layers,
    adapter_parameters,
    describe_adapters,
    inject_adapters,
    merge_adapters,
    unload_adapters,
    unmerge_adapters,
)
from dt_eva.adapters.io import (
    adapter_config,
    adapter_state_dict,
    inject_from_config,
    load_adapter_state_dict,
    load_adapters,
    save_adapters,
)
from dt_eva.adapters.layers import DoraLayer, LoraLayer, is_adaptable

__all__ = [
    "ADAPTER_METHODS",
    "INITS",
    "EVA_INITS",
    "LoraLayer",
    "DoraLayer",
    "is_adaptable",
    "inject_adapters",
    "adapter_layers",
    "adapter_parameters",
    "describe_adapters",
    "merge_adapters",
    "unmerge_adapters",
    "unload_adapters",
    "save_adapters",
    "load_adapters",
    "adapter_config",
    "adapter_state_dict",
    "inject_from_config",
    "load_adapter_state_dict",
]
