"""Training metrics: one JSON object per line in `metrics.jsonl`, the same scalars in TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from dt_eva.utils.io import atomic_write_text, read_metrics  # noqa: F401  (re-exported)
from dt_eva.utils.safefs import open_append


class MetricsLogger:
    """Append-only `metrics.jsonl` + TensorBoard writer (`tensorboard_dir=None`: none) for one run (rank 0 only).

    `start_step` > 0 (a resumed run) drops every line and TensorBoard event after that step, so the
    steps a killed run logged past its last checkpoint are not duplicated when they are replayed.
    """

    def __init__(self, path: str | Path, tensorboard_dir: str | Path | None, start_step: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, start_step)
        self._file = open_append(self.path, "metrics")  # a planted link must not send lines elsewhere
        self._tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir), purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, scalars: Mapping[str, float], tb_prefix: str = "") -> None:
        """Write `{"step": step, **scalars}` as one line and each scalar to TensorBoard."""
        record: dict[str, Any] = {"step": int(step)}
        for k, v in scalars.items():
            record[k] = _json_number(v)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(tb_prefix + k if "/" not in k else k, float(v), step)

    def flush(self) -> None:
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN / inf; keep the line parseable by strict readers
    return v


def truncate_metrics(path: str | Path, keep_until_step: int) -> None:
    """Keep only lines with step <= `keep_until_step` (all removed for 0); atomic rewrite."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r["step"] <= keep_until_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
