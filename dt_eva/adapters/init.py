"""Initialisers for `LoraLayer` / `DoraLayer`: they fill `lora_A`, `lora_B` and, for PiSSA / OLoRA,
rewrite the frozen base weight to the residual so that the layer output at init is unchanged.

Every initialiser runs under `torch.no_grad()`, works in float32 and casts back to the adapter dtype.
Random draws use torch's global generator (seed it with `torch.manual_seed` for reproducibility).
"""

from __future__ import annotations

import torch
from torch import nn

from dt_eva.adapters.layers import KAIMING_A, LoraLayer

__all__ = [
    "INITS",
    "EVA_INITS",
    "init_random",
    "init_eva",
    "init_eva_whiten",
    "init_pissa",
    "init_olora",
    "whiten_components",
]

# every name accepted by inject_adapters(init=...)
INITS = ("random", "eva", "eva_whiten", "lora_redist", "pissa", "olora")
# inits that need an EvaResult (ranks from it)
EVA_INITS = ("eva", "eva_whiten", "lora_redist")


@torch.no_grad()
def init_random(layer: LoraLayer) -> None:
    """LoRA default: A kaiming-uniform (as nn.Linear's weight), B = 0, so the update starts at zero."""
    nn.init.kaiming_uniform_(layer.lora_A, a=KAIMING_A)
    nn.init.zeros_(layer.lora_B)


@torch.no_grad()
def init_eva(layer: LoraLayer, components: torch.Tensor) -> None:
    """EVA: A = the top `rank` right-singular vectors of the layer's input activations, B = 0."""
    _check_components(layer, components)
    layer.lora_A.copy_(components[: layer.rank].to(layer.lora_A.device, layer.lora_A.dtype))
    nn.init.zeros_(layer.lora_B)


def whiten_components(components: torch.Tensor, singular_values: torch.Tensor, num_samples: int) -> torch.Tensor:
    """EVA-whiten, the paper's ablation (section 4.7, Table 7): "whitening scales the initialization
    by the reciprocal of their eigenvalues". Row j of A becomes

        A_j = v_j / lambda_j,    lambda_j = sigma_j**2 / (M - 1)

    v_j: EVA's j-th component (a unit row); sigma_j: its singular value; M: the number of activation
    rows in the layer's SVD (`EvaResult.num_samples`). lambda_j is the j-th eigenvalue of the
    covariance of the layer's (centred) inputs, i.e. the input variance along v_j, the quantity of
    the paper's explained-variance ratio (eq. 3). Directions are kept, scale changes.

    No global normalisation is applied: the paper states none, and the ablation is about scale
    (normalising by lambda_1, say, would give the top row EVA's unit norm and change only the
    rest: a different ablation). Using lambda rather than sigma keeps A independent of how many
    batches EVA ran before it converged (sigma_j grows like sqrt(M)).

    This is not PEFT's `whiten=True` (v_j / sqrt(sigma_j)), which `dt_eva.eva.peft_interop` keeps
    for hand-overs to PEFT, nor textbook whitening (v_j / sqrt(lambda_j)).
    """
    r = components.shape[0]
    sv = singular_values[:r].to(torch.float32)
    if sv.numel() < r:
        raise ValueError(f"EVA-whiten needs one singular value per component: got {sv.numel()} for {r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"EVA-whiten needs the number of activation rows of the SVD (>= 2), got {num_samples!r}")
    eigenvalues = sv.square() / (num_samples - 1)
    if not torch.all(eigenvalues > 0):
        raise ValueError(
            f"EVA-whiten needs positive eigenvalues, got {eigenvalues.tolist()}: the layer's activations are "
            "degenerate along some component"
        )
    return components.to(torch.float32) / eigenvalues[:, None]


@torch.no_grad()
def init_eva_whiten(layer: LoraLayer, components: torch.Tensor, singular_values: torch.Tensor, num_samples: int) -> None:
    """EVA-whiten ablation: EVA's components divided by their eigenvalues (see `whiten_components`), B = 0."""
    _check_components(layer, components)
    whitened = whiten_components(components[: layer.rank], singular_values, num_samples)
    layer.lora_A.copy_(whitened.to(layer.lora_A.device, layer.lora_A.dtype))
    nn.init.zeros_(layer.lora_B)


@torch.no_grad()
def init_pissa(layer: LoraLayer) -> None:
    """PiSSA: A, B from the top singular triplets of W (split as sqrt(S) on each side, divided by the
    scaling), and the frozen base becomes the residual `W - s B A`, as PEFT's `pissa` init."""
    weight = layer.unmerged_base_weight().to(torch.float32)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    r = layer.rank
    sr = s[:r] / layer.scaling
    lora_a = torch.diag(torch.sqrt(sr)) @ vh[:r]
    lora_b = u[:, :r] @ torch.diag(torch.sqrt(sr))
    _set_with_residual(layer, weight, lora_a, lora_b)


@torch.no_grad()
def init_olora(layer: LoraLayer) -> None:
    """OLoRA: QR of W (out, in); B = Q[:, :r], A = R[:r], base becomes `W - s B A`, as PEFT's `olora`.

    The QR is taken of the `(out, in)` matrix for Conv1D too (PEFT factorises Conv1D's stored
    `(in, out)` tensor instead, which only works for square layers).
    """
    weight = layer.unmerged_base_weight().to(torch.float32)
    q, rmat = torch.linalg.qr(weight)
    r = layer.rank
    _set_with_residual(layer, weight, rmat[:r].contiguous(), q[:, :r].contiguous())


def _set_with_residual(layer: LoraLayer, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
    if layer.merged:
        raise ValueError("cannot re-initialise a merged adapter; unmerge it first")
    layer.lora_A.copy_(lora_a.to(layer.lora_A.dtype))
    layer.lora_B.copy_(lora_b.to(layer.lora_B.dtype))
    residual = weight - layer.scaling * (lora_b @ lora_a)
    layer.set_base_weight(residual)


def _check_components(layer: LoraLayer, components: torch.Tensor) -> None:
    if components.dim() != 2 or components.shape[1] != layer.in_features:
        raise ValueError(
            f"EVA components of shape {tuple(components.shape)} do not fit a layer with "
            f"in_features={layer.in_features}; compute EVA on this model (same architecture)"
        )
    if components.shape[0] < layer.rank:
        raise ValueError(f"EVA has {components.shape[0]} components but the layer needs rank {layer.rank}")
