"""Everything about a run directory.

- `layout`: the file names (`RunPaths`); `marker`: the `meta.json` that makes a folder a dt-eva run
  (`is_run_dir`); `lock`: one process per run; `guard`: create / resume / replace a run safely.
- `configs`: `PretrainConfig`, `FinetuneConfig` (the schema of `config.yaml`).
- `base`, `policy`: load the pre-trained base and the policy of any run (`load_run_model`).
- `evals`, `records`: evaluation records and the torch-free reader reports use.

This package imports no torch at import time; `load_run_model` and friends load it when called.
"""

from __future__ import annotations

from typing import Any

from dt_eva.runs.guard import check_run_name, open_run_dir, plan_run_dir
from dt_eva.runs.layout import RunPaths
from dt_eva.runs.marker import is_run_dir, read_meta, run_kind

_LAZY = {
    "load_run_model": "dt_eva.runs.policy",
    "load_finetune_model": "dt_eva.runs.policy",
    "load_pretrained_base": "dt_eva.runs.base",
    "PretrainedBase": "dt_eva.runs.base",
    "PretrainConfig": "dt_eva.runs.configs",
    "FinetuneConfig": "dt_eva.runs.configs",
}


def __getattr__(name: str) -> Any:  # PEP 562: torch-heavy names load on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dt_eva.runs' has no attribute {name!r}")


__all__ = ["FinetuneConfig", "PretrainConfig", "PretrainedBase", "RunPaths", "check_run_name", "is_run_dir",
           "load_finetune_model", "load_pretrained_base", "load_run_model", "open_run_dir", "plan_run_dir",
           "read_meta", "run_kind"]
