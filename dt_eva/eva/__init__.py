"""EVA core: data-driven LoRA initialisation by explained variance adaptation (paper section 3).

Imports torch only (safetensors is imported when a result is saved or loaded; the PEFT hand-over
lives in `dt_eva.eva.peft_interop` and imports peft when called).

    from dt_eva.eva import EvaConfig, compute_eva
    result = compute_eva(model, batches, EvaConfig(rank=8, rho=2.0), target_modules=["q_proj", "v_proj"])
    result.ranks, result.components   # per layer: rank, (rank, in_features) orthonormal rows = LoRA A
    result.save("eva/")               # safetensors + JSON; EvaResult.load("eva/")
"""

from dt_eva.eva.config import EvaConfig
from dt_eva.eva.core import compute_eva
from dt_eva.eva.matching import is_adaptable, match_modules
from dt_eva.eva.redistribute import redistribute_ranks
from dt_eva.eva.result import EvaResult

__all__ = ["EvaConfig", "EvaResult", "compute_eva", "is_adaptable", "match_modules", "redistribute_ranks"]
