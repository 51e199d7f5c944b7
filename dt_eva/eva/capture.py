"""Forward hooks that hand a layer's input rows to EVA, and detection of layers sharing one input."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn


def layer_input(name: str, args: tuple, kwargs: Mapping[str, Any]) -> Tensor:
    """The input tensor of a linear layer's forward call (first positional argument, else first tensor kwarg)."""
    if args and isinstance(args[0], Tensor):
        return args[0]
    for value in kwargs.values():
        if isinstance(value, Tensor):
            return value
    raise ValueError(f"layer {name!r} was called without a tensor input; EVA cannot read its activations")


def select_rows(name: str, x: Tensor, mask: Tensor | None) -> Tensor:
    """Flatten a (..., d) activation to (rows, d), keeping only the rows where `mask` is True.

    Rows in a 16-bit float type (a forward under bf16 / fp16 autocast) come back as fp32: the forward
    may run in low precision, the SVD statistics (sums of squares over many batches) may not.
    """
    if mask is None:
        rows = x.reshape(-1, x.shape[-1])
    elif tuple(mask.shape) == tuple(x.shape[:-1]):
        rows = x[mask.to(x.device)]
    elif mask.numel() == x[..., 0].numel() and mask.ndim == 1:
        rows = x.reshape(-1, x.shape[-1])[mask.to(x.device)]
    else:
        raise ValueError(
            f"token_mask_fn returned a mask of shape {tuple(mask.shape)} but layer {name!r} receives activations "
            f"of shape {tuple(x.shape)}; the mask must cover the leading dims {tuple(x.shape[:-1])}"
        )
    return rows.float() if rows.is_floating_point() and rows.element_size() < 4 else rows


def input_identity(x: Tensor) -> tuple:
    """What makes two live tensors the very same input: storage, offset, shape, stride, dtype, device.

    Only valid while the tensors are alive (references are held during the probe pass), so storage
    cannot be freed and reused by a later layer in between.
    """
    return (
        x.untyped_storage().data_ptr(),
        x.storage_offset(),
        tuple(x.shape),
        tuple(x.stride()),
        x.dtype,
        str(x.device),
    )


class InputProbe:
    """Watches every target layer during one forward pass (the first batch).

    It keeps a reference to each input (so no input's memory can be freed and handed to a later
    layer while the pass runs) and a copy of its selected rows, taken at call time because a model
    may modify a tensor in place after a layer has read it. Inputs with the same identity are copied once.
    """

    def __init__(self, names: Sequence[str], rows_fn: Callable[[str, Tensor], Tensor]) -> None:
        self.names = list(names)
        self.rows_fn = rows_fn
        self.keys: dict[str, list[tuple]] = defaultdict(list)
        self.rows: dict[tuple, Tensor] = {}
        self._alive: list[Tensor] = []

    def hook(self, name: str) -> Callable:
        def _hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = layer_input(name, args, kwargs).detach()
            key = input_identity(x)
            if key not in self.rows:
                self._alive.append(x)
                rows = self.rows_fn(name, x)
                shares_memory = rows.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
                self.rows[key] = rows.clone() if shares_memory else rows
            self.keys[name].append(key)

        return _hook

    def uncalled(self) -> list[str]:
        return [n for n in self.names if not self.keys.get(n)]

    def shared_input_groups(self) -> list[list[str]]:
        """Layers grouped by identical inputs (every call identical), in target order; singletons included."""
        groups: dict[tuple, list[str]] = {}
        for name in self.names:
            groups.setdefault(tuple(self.keys[name]), []).append(name)
        return list(groups.values())

    def rows_of(self, name: str) -> list[Tensor]:
        """The selected rows of each call of layer `name`, as they were at call time."""
        return [self.rows[k] for k in self.keys[name]]

    def clear(self) -> None:
        self.keys.clear()
        self.rows.clear()
        self._alive.clear()


def module_training_flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def restore_training_flags(model: nn.Module, flags: Mapping[str, bool]) -> None:
    for name, m in model.named_modules():
        if name in flags:
            m.training = flags[name]


def model_device(model: nn.Module) -> torch.device | None:
    """The single (non-meta) device of the model's parameters, or None when there is none or several."""
    devices = {p.device for p in model.parameters() if p.device.type != "meta"}
    return next(iter(devices)) if len(devices) == 1 else None


def move_to_device(batch: Any, device: torch.device | None) -> Any:
    """Move the tensors of a (nested) dict / list / tuple batch to `device`."""
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):  # any mapping (e.g. a BatchEncoding) becomes a plain dict
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def default_forward(model: nn.Module, batch: Any) -> Any:
    """model(**batch) for a mapping, model(*batch) for a tuple/list, model(batch) otherwise."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)
