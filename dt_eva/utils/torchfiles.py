"""Reading and writing torch files (checkpoints, weights) without ever running code from them.

Every `.pt` file is read with `torch.load(weights_only=True)`: tensors, numbers, strings, lists,
tuples and dicts only. A file that carries any other pickled object (the way a payload runs code on
load) is refused with `UnsafeFileError`, and nothing in it executes. Checkpoints of format 1 (legacy
runs, written by dt-eva 0.1.0) hold NumPy arrays in their RNG state; NumPy's array reconstruction is
allow-listed for them: it rebuilds plain data and its element objects go through the same filter.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from dt_eva.utils.io import atomic_torch_save

# 2: RNG and sampler state as tensors and plain data (weights_only loads it with no allow-list).
# 1: the legacy runs' (runs.layout.LEGACY_FORMAT), NumPy arrays inside the RNG state.
CHECKPOINT_FORMAT = 2
READABLE_CHECKPOINT_FORMATS = (1, 2)


class UnsafeFileError(ValueError):
    """A torch file holds objects that could run code when unpickled; it was not loaded."""


def _numpy_data_globals() -> list[Any]:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1
        from numpy.core.multiarray import _reconstruct
    dtype_classes = [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "float32", "bool")]
    return [_reconstruct, np.ndarray, np.dtype, *dtype_classes]


def safe_torch_load(path: str | Path, map_location: Any = "cpu", what: str = "file") -> Any:
    """`torch.load(path, weights_only=True)` with errors that name the file and say what to do."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e)
        culprit = next((line.strip() for line in detail.splitlines() if "unsupported global" in line.lower()), "")
        if culprit:
            raise UnsafeFileError(
                f"refusing to load {what} {path}: it holds pickled Python objects beyond tensors and plain data"
                f" ({culprit}), and unpickling such objects can run arbitrary code. "
                "dt-eva never executes code from a run directory. If you did not write this file, delete it; "
                "if you did, re-save it as plain tensors (torch.save(model.state_dict(), ...))"
            ) from None
        reason = next((line.strip() for line in detail.splitlines() if line.strip().startswith("Unsupported")), "")
        raise ValueError(f"{what} {path} is corrupt or not a torch file of tensors ({reason or 'unreadable pickle'})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{what} {path} is corrupt or not a torch file ({e.__class__.__name__}: {e})") from None


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write a training checkpoint (with its format marker)."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a training checkpoint safely; `FileNotFoundError` / `ValueError` name the file."""
    state = safe_torch_load(path, map_location, what="checkpoint")
    if not isinstance(state, dict) or state.get("format") not in READABLE_CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint {path} is not a dt-eva training checkpoint (no known format marker)")
    return state


def load_state_dict_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a plain state dict of tensors (e.g. `model.pt`) safely, naming the file when it is bad."""
    import torch

    state = safe_torch_load(path, map_location, what="weights file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    return state


def load_safetensors(path: str | Path, what: str = "file") -> dict[str, Any]:
    """The tensors of a safetensors file; a truncated, garbage or unreadable one is a `ValueError`
    naming the file (safetensors' own `SafetensorError` names none)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError (bad header, truncated data), OSError
        raise ValueError(f"{what} {path} is corrupt or not a safetensors file ({str(e).splitlines()[0]}); "
                         "restore it or write it again") from None
