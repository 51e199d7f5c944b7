"""EVA core: data-driven LoRA initialisation by explained variance adaptation.

Imports torch only. Public API: `EvaConfig`, `compute_eva`, `EvaResult`, `match_modules`.
"""

from dt_eva.eva.config import EvaConfig
from dt_eva.eva.core import compute_eva
from dt_eva.eva.matching import match_modules
from dt_eva.eva.result import EvaResult

__all__ = ["EvaConfig", "EvaResult", "compute_eva", "match_modules"]
