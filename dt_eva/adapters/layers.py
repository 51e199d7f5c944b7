"""LoRA and DoRA wrappers around a frozen linear layer (`nn.Linear` or GPT-2-style `Conv1D`).

Notation: the base weight seen as a matrix `W` of shape `(out_features, in_features)` (for Conv1D the
stored tensor is `W.T`), `A` of shape `(rank, in)`, `B` of shape `(out, rank)`, `s = alpha / rank`.

- LoRA:  `y = base(x) + s * B A dropout(x)`.
- DoRA:  `y = m * (W + s B A) x / ||W + s B A||_c + bias`, with `m` (one entry per output feature)
  initialised to the row norms of `W + s B A` and the norm treated as a constant in the backward
  pass (DoRA paper, section 4.3), the same formula PEFT's `DoraLinearLayer` evaluates.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from dt_eva.eva.matching import layer_kind, weight_shape

__all__ = ["LoraLayer", "DoraLayer", "is_adaptable", "layer_kind", "weight_shape"]


def is_adaptable(module: nn.Module) -> bool:
    """Whether a LoRA/DoRA adapter can wrap `module`."""
    return layer_kind(module) is not None


class LoraLayer(nn.Module):
    """A frozen base linear layer plus a trainable low-rank update `s * B A`.

    `lora_A` and `lora_B` are created empty-initialised; an initialiser from
    `dt_eva.adapters.init` fills them (and may rewrite the base weight, e.g. PiSSA's residual).
    """

    method = "lora"

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float = 1.0, dropout: float = 0.0):
        super().__init__()
        in_features, out_features = weight_shape(base_layer)  # refuses anything but nn.Linear / Conv1D, naming it
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"adapter rank must be a positive int, got {rank!r}")
        if rank > min(in_features, out_features):
            raise ValueError(
                f"rank {rank} exceeds min(in_features, out_features) = {min(in_features, out_features)} "
                f"of this {type(base_layer).__name__}({in_features} -> {out_features})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"adapter dropout must be in [0, 1), got {dropout}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"adapter alpha must be a finite number > 0, got {alpha!r}")
        self.base_layer = base_layer
        self.kind = layer_kind(base_layer)
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.dropout_p = float(dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        # adapters live where the base weight lives, in its dtype
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **factory))
        base_layer.requires_grad_(False)

    # ---- base weight in (out, in) layout ---------------------------------------------------------
    def base_weight(self) -> torch.Tensor:
        """The base weight as an `(out, in)` matrix (a view for Conv1D; may hold merged adapters)."""
        weight = self.base_layer.weight
        return weight.t() if self.kind == "conv1d" else weight

    def set_base_weight(self, weight_out_in: torch.Tensor) -> None:
        """Overwrite the base weight with an `(out, in)` matrix (cast to the stored dtype)."""
        stored = self.base_layer.weight
        new = weight_out_in.t() if self.kind == "conv1d" else weight_out_in
        with torch.no_grad():
            stored.copy_(new.to(stored.dtype))

    def delta_weight(self) -> torch.Tensor:
        """`s * B A` as an `(out, in)` matrix."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def unmerged_base_weight(self) -> torch.Tensor:
        """The `(out, in)` base weight without any merged adapter (a new tensor)."""
        with torch.no_grad():
            weight = self.base_weight().detach().clone()
            if self.merged:
                weight = self._unmerge_math(weight.to(self.lora_A.dtype)).to(weight.dtype)
        return weight

    # ---- forward ---------------------------------------------------------------------------------
    def _lora_out(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        x_in = self.dropout(x.to(self.lora_A.dtype))
        return result + self._lora_out(x_in).to(result.dtype)

    # ---- merge -----------------------------------------------------------------------------------
    def _merge_math(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta_weight().to(weight.dtype)

    def _unmerge_math(self, weight: torch.Tensor) -> torch.Tensor:
        return weight - self.delta_weight().to(weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight; forward then runs the base layer only."""
        if self.merged:
            warnings.warn("adapter is already merged; nothing to do", stacklevel=2)
            return
        self.set_base_weight(self._merge_math(self.base_weight().to(self.lora_A.dtype)))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge()` (exact up to float rounding)."""
        if not self.merged:
            warnings.warn("adapter is not merged; nothing to do", stacklevel=2)
            return
        self.set_base_weight(self._unmerge_math(self.base_weight().to(self.lora_A.dtype)))
        self.merged = False

    # ---- bookkeeping -----------------------------------------------------------------------------
    def adapter_tensors(self) -> dict[str, nn.Parameter]:
        """The trainable adapter parameters by their attribute name."""
        return {"lora_A": self.lora_A, "lora_B": self.lora_B}

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, kind={self.kind}, in={self.in_features}, out={self.out_features}, "
            f"rank={self.rank}, alpha={self.alpha:g}, dropout={self.dropout_p:g}, merged={self.merged}"
        )


class DoraLayer(LoraLayer):
    """Weight-decomposed LoRA: a trainable magnitude per output feature times the direction of `W + s B A`.

    Call `init_magnitude()` after `lora_A` / `lora_B` / the base weight hold their initial values
    (`inject_adapters` does); the magnitude then equals the row norms and the output equals LoRA's.
    """

    method = "dora"

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float = 1.0, dropout: float = 0.0):
        super().__init__(base_layer, rank, alpha, dropout)
        weight = base_layer.weight
        self.magnitude = nn.Parameter(torch.ones(self.out_features, device=weight.device, dtype=weight.dtype))
        # the weight norm at merge time, needed to unmerge exactly (not part of the state dict)
        self.register_buffer("_merged_norm", None, persistent=False)

    def _weight_norm(self, base_weight: torch.Tensor) -> torch.Tensor:
        # row norm of W + s B A (one per output feature), the adapter detached as in PEFT
        combined = base_weight + self.delta_weight().detach().to(base_weight.dtype)
        return torch.linalg.norm(combined, dim=1)

    @torch.no_grad()
    def init_magnitude(self) -> None:
        """Set the magnitude to the current row norms of `W + s B A`."""
        weight = self.unmerged_base_weight().to(self.lora_A.dtype)
        self.magnitude.copy_(self._weight_norm(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        x = x.to(self.lora_A.dtype)
        weight = self.base_weight().to(x.dtype)
        norm_scale = self.magnitude / self._weight_norm(weight).detach()
        bias = self.base_layer.bias
        if isinstance(self.dropout, nn.Identity) or not self.training:
            base_out = result.to(x.dtype)
            if bias is not None:
                base_out = base_out - bias.to(x.dtype)
        else:
            # with dropout the adapter path sees dropped inputs; the base path keeps the clean ones
            x = self.dropout(x)
            base_out = F.linear(x, weight)
        extra = (norm_scale - 1) * base_out + norm_scale * self._lora_out(x)
        return result + extra.to(result.dtype)

    def _merge_math(self, weight: torch.Tensor) -> torch.Tensor:
        norm = self._weight_norm(weight).detach()
        self._merged_norm = norm.clone()
        factor = (self.magnitude / norm).unsqueeze(1)
        return factor * (weight + self.delta_weight().to(weight.dtype))

    def _unmerge_math(self, weight: torch.Tensor) -> torch.Tensor:
        if self._merged_norm is None:
            raise RuntimeError("DoRA layer lost the weight norm of its merge; cannot unmerge")
        factor = (self.magnitude / self._merged_norm).unsqueeze(1)
        return weight / factor - self.delta_weight().to(weight.dtype)

    @torch.no_grad()
    def unmerge(self) -> None:
        super().unmerge()
        self._merged_norm = None

    def adapter_tensors(self) -> dict[str, nn.Parameter]:
        return {"lora_A": self.lora_A, "lora_B": self.lora_B, "magnitude": self.magnitude}


ADAPTER_CLASSES: dict[str, type[LoraLayer]] = {"lora": LoraLayer, "dora": DoraLayer}

# kaiming bound used by nn.Linear and LoRA for A
KAIMING_A = math.sqrt(5)
