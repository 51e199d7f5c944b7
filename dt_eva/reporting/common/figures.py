"""The one way a report draws and writes a figure: matplotlib with the Agg backend (no display), loaded
only when a figure is drawn, and each PNG written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dt_eva.utils.io import atomic_path

DPI = 120


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend (unless the caller chose another)."""
    import matplotlib  # lazy: matplotlib loads in ~1 s, and a report without plots never needs it

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Lay `fig` out tightly, write it to the PNG `path` atomically, close it; returns the path."""
    plt = pyplot()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
