"""The Decision Transformer (contract: docs/architecture.md, "Model: dt_eva.models")."""

from .attention import CausalSelfAttention, flash_attn_available
from .config import ATTN_BACKENDS, SCALE_KEYS, TOKEN_LAYOUTS, DTConfig
from .decision_transformer import DT_ADAPTER_TARGETS, TOKEN_TYPES, DecisionTransformer
from .modes import eval_mode

__all__ = [
    "ATTN_BACKENDS",
    "CausalSelfAttention",
    "DT_ADAPTER_TARGETS",
    "DTConfig",
    "DecisionTransformer",
    "SCALE_KEYS",
    "TOKEN_LAYOUTS",
    "TOKEN_TYPES",
    "eval_mode",
    "flash_attn_available",
]
