"""The random-number state that makes a resumed run continue exactly, and the checkpoint files.

Checkpoints are read and written by `dt_eva.runs.files` (atomic writes; `weights_only` loading that
never runs code). The RNG state is stored as tensors and plain numbers so that such a load needs
no allow-list.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from dt_eva.utils.torchfiles import CHECKPOINT_FORMAT, load_checkpoint, load_state_dict_file, save_checkpoint

__all__ = ["CHECKPOINT_FORMAT", "capture_rng_state", "load_checkpoint", "load_state_dict_file", "restore_rng_state",
           "save_checkpoint", "seed_everything"]


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (global), torch CPU and CUDA generator states."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                            "pos": int(numpy_state["state"]["pos"])}
    state: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states only when present and CUDA is available)."""
    random.setstate(_as_tuples(state["python"]))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):  # format 2: the key as a tensor
        key = numpy_state["state"]["key"]
        key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        numpy_state = {**numpy_state, "state": {**numpy_state["state"], "key": key.astype(np.uint32)}}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _as_tuples(value: Any) -> Any:
    """`random.setstate` needs tuples where a serialiser may have produced lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
