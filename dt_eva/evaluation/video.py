"""GIFs of evaluated episodes, rendered by replaying their recorded actions.

Rendering runs in a child process (`python -m dt_eva.evaluation.video spec.json`) with `MUJOCO_GL`
set (default `egl`): the GL backend must be chosen before mujoco loads, and a broken GL stack can
abort a process outright. A failure of any kind is a warning and leaves the evaluation intact.
Replaying actions reproduces the episode exactly (Meta-World is deterministic given the layout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: Frame size (pixels) and stride (render every n-th step) of the GIFs: ~100 frames of 224 px keep
#: software rendering at a few seconds per episode.
RENDER_SIZE = 224
FRAME_STRIDE = 2
_TIMEOUT_S = 600


def write_episode_gifs(video_dir: str | os.PathLike, episodes: list[dict[str, Any]]) -> dict[str, str]:
    """Render each episode `{"task", "layout": (mt1_seed, index), "actions": [200, 4]}` to
    `<video_dir>/<task>.gif`; returns task -> path for the GIFs that were written.

    Never raises for rendering problems: it warns (naming MUJOCO_GL) and returns what it has.
    """
    video_dir = Path(video_dir)
    video_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    if env["MUJOCO_GL"] in ("egl", "osmesa"):
        env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
    with tempfile.TemporaryDirectory(prefix="dt_eva_video_") as tmp:
        spec = []
        for i, ep in enumerate(episodes):
            actions_path = Path(tmp) / f"actions_{i}.npy"
            np.save(actions_path, np.asarray(ep["actions"], dtype=np.float32))
            spec.append({
                "task": ep["task"],
                "layout": [int(x) for x in ep["layout"]],
                "actions": str(actions_path),
                "out": str(video_dir / f"{ep['task']}.gif"),
            })
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "dt_eva.evaluation.video", str(spec_path)],
                env=env, capture_output=True, text=True, timeout=_TIMEOUT_S,
            )
            failed = proc.returncode != 0
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] if failed else []
        except (OSError, subprocess.TimeoutExpired) as e:
            failed, detail = True, [str(e)]
    written = {s["task"]: s["out"] for s in spec if Path(s["out"]).is_file()}
    if failed or len(written) < len(spec):
        warnings.warn(
            f"video: rendering failed with MUJOCO_GL={env['MUJOCO_GL']} ({' '.join(detail) or 'no GIF written'}); "
            "the evaluation results are unaffected. Try MUJOCO_GL=osmesa (needs libosmesa) or egl.",
            RuntimeWarning,
            stacklevel=2,
        )
    return written


def _render_specs(spec_path: str) -> None:
    """Child-process side: replay and render every episode of the spec file."""
    import imageio.v2 as imageio

    from dt_eva.envs import EPISODE_LENGTH
    from dt_eva.evaluation.slots import LayoutEnv
    from dt_eva.utils.io import atomic_path

    for item in json.loads(Path(spec_path).read_text()):
        env = LayoutEnv(item["task"], render_size=RENDER_SIZE)
        try:
            env.layout = tuple(item["layout"])
            env.reset()
            frames = [env.render()]
            for t, action in enumerate(np.load(item["actions"])[:EPISODE_LENGTH]):
                env.step(action)
                if (t + 1) % FRAME_STRIDE == 0:
                    frames.append(env.render())
        finally:
            env.close()
        with atomic_path(item["out"], suffix=".gif") as tmp:
            imageio.mimsave(tmp, [np.asarray(f, dtype=np.uint8) for f in frames], duration=1000 * FRAME_STRIDE / 80, loop=0)


if __name__ == "__main__":
    _render_specs(sys.argv[1])
