"""Library versions recorded in every dataset and run directory."""

from __future__ import annotations

import platform
import sys
from importlib import metadata


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("dt-eva", "torch", "numpy", "gymnasium", "metaworld", "mujoco", "peft", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
