"""Layer x module heatmap of adapter ranks, the layout of the paper's rank-distribution figures.

`plot_rank_heatmap(ranks, path)` takes the `{full module name: rank}` dict of an `EvaResult` (or any
adapter rank map), puts the transformer layer on the rows and the module type (the part of the name
after the layer index, e.g. `attn.qkv`) on the columns, and writes a PNG with every cell annotated.
matplotlib is imported lazily with the Agg backend (`figures.pyplot`), so importing this module costs
nothing and works on machines without a display. The run report, the study report (mean ranks) and EVA's
initialisation (`eva/ranks.png`) draw with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from dt_eva.methods.ranks import rank_grid
from dt_eva.reporting.common.figures import pyplot, save_figure


def plot_rank_heatmap(ranks: Mapping[str, int], path: str | os.PathLike, title: str | None = None) -> Path:
    """Write a layer x module heatmap of `ranks` (`{full module name: rank}`) to the PNG `path`.

    Cells are annotated with the rank; modules absent from a layer are left blank. Returns the path.
    """
    if not ranks:
        raise ValueError("plot_rank_heatmap: the rank map is empty; nothing to plot")
    layers, modules, grid = rank_grid(ranks)
    total = sum(v for row in grid for v in row if v is not None)
    return plot_grid_heatmap(layers, modules, grid, path, title or f"EVA rank distribution (total rank {total})")


def plot_grid_heatmap(layers: Sequence[int], modules: Sequence[str], grid: Sequence[Sequence[float | None]],
                      path: str | os.PathLike, title: str, digits: int = 0) -> Path:
    """Layer x module heatmap of `grid[i][j]` (None: blank), each cell annotated with `digits` decimals."""
    import numpy as np

    plt = pyplot()

    values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    vmax = max(1.0, float(np.nanmax(values)))

    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(modules), 1.0 + 0.55 * len(layers)))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value is None:
                continue
            # dark text on the bright end of viridis, light text on the dark end
            color = "black" if value > 0.6 * vmax else "white"
            ax.text(j, i, f"{value:.{digits}f}", ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(len(modules)), modules, rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [str(layer) if layer >= 0 else "-" for layer in layers])
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="rank")
    return save_figure(fig, path)
