"""Fine-tuning methods: the torch-free registry (`registry.py`) and, for each method, the model
object that training drives.

`from dt_eva.methods import METHODS, resolve_method` never imports torch.
"""

from dt_eva.methods.registry import (
    METHODS,
    PAPER_METHODS,
    MethodSpec,
    method_label,
    method_sort_key,
    normalize_method_name,
    resolve_method,
)

__all__ = ["METHODS", "PAPER_METHODS", "MethodSpec", "method_label", "method_sort_key", "normalize_method_name",
           "resolve_method"]
