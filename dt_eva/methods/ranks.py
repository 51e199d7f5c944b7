"""Adapter ranks as a layer x module table (torch-free: reports and EVA summaries both use it)."""

from __future__ import annotations

import re
from typing import Mapping

# The first dotted integer in a module name is its layer index: "blocks.3.attn.qkv" -> layer 3,
# module "attn.qkv"; "encoder.layer.11.attention.self.query" -> layer 11, module "attention.self.query".
_LAYER_RE = re.compile(r"^(?P<prefix>.*?)(?:^|\.)(?P<layer>\d+)\.(?P<module>.+)$")


def rank_grid(ranks: Mapping[str, int]) -> tuple[list[int], list[str], list[list[int | None]]]:
    """Arrange a rank map into `(layers, modules, grid)` with `grid[i][j]` the rank of
    layer `layers[i]`, module `modules[j]` (`None` where the model has no such module).

    Names without a layer index are put on their own row labelled -1 (shown as "-").
    Module columns keep the order of first appearance, which for `named_modules()` order is the
    order of the forward pass.
    """
    cells: dict[tuple[int, str], int] = {}
    modules: list[str] = []
    for name, rank in ranks.items():
        match = _LAYER_RE.match(name)
        layer, module = (int(match["layer"]), match["module"]) if match else (-1, name)
        if module not in modules:
            modules.append(module)
        cells[(layer, module)] = int(rank)
    layers = sorted({layer for layer, _ in cells})
    grid = [[cells.get((layer, module)) for module in modules] for layer in layers]
    return layers, modules, grid
