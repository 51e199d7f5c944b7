"""Meta-World datasets: collection with scripted policies, the on-disk format, the window sampler.

See `data/README.md` for the format and the seed convention. Names load lazily so collection
worker processes do not import torch (only the sampler needs it).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ENV_SEED_BASE": "dt_eva.data.collect",
    "EPISODES_PER_ENV_SEED": "dt_eva.data.collect",
    "collect_dataset": "dt_eva.data.collect",
    "collection_env_seed": "dt_eva.data.collect",
    "ARRAY_SPECS": "dt_eva.data.format",
    "FORMAT_VERSION": "dt_eva.data.format",
    "DatasetError": "dt_eva.data.format",
    "OfflineDataset": "dt_eva.data.format",
    "dataset_summary": "dt_eva.data.format",
    "load_dataset": "dt_eva.data.format",
    "WindowSampler": "dt_eva.data.sampler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dt_eva.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
