"""Pooled rank redistribution by explained variance ratio (EVA, section 3.3)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor


def redistribute_ranks(candidates: Mapping[str, Tensor], budget: int) -> dict[str, int]:
    """Give the `budget` components with the largest explained variance ratio to their layers.

    `candidates[name]` holds the ratios of that layer's candidate components (descending within a
    layer). All candidates are pooled and sorted; each layer's rank is how many of its candidates
    are among the top `budget`, so a layer may end with 0. Ties keep the order of `candidates`
    (a stable sort), so the result is deterministic.
    """
    if budget < 0:
        raise ValueError(f"rank budget must be >= 0, got {budget}")
    names = list(candidates)
    if not names:
        return {}
    values = [candidates[n].detach().reshape(-1).float().cpu() for n in names]
    owner = torch.cat([torch.full((len(v),), i, dtype=torch.long) for i, v in enumerate(values)])
    pooled = torch.cat(values)
    order = torch.sort(pooled, descending=True, stable=True).indices[:budget]
    counts = torch.bincount(owner[order], minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts.tolist())}
