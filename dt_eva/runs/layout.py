"""The files of a run directory: every name in one place (docs/architecture.md, "Run directories").

    runs/<name>/
      meta.json            the marker: {"package": "dt-eva", "kind", "run_id", "versions", "command", "created", ...}
      .dt-eva.lock         held (fcntl) by the process that trains in the run; holder details inside
      config.yaml          resolved config
      metrics.jsonl, tb/   training scalars
      checkpoints/last.pt  full training state
      model.pt             final weights
      summary.json         what the run did
      evals/<key>.json     every evaluation, keyed by its settings; eval.json: the largest of them
      eva/, adapters/, merged_model.pt, videos/   fine-tuning extras
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE = "dt-eva"
# The run format before the run-directory redesign (dt-eva 0.1.0 wrote it): a meta.json without
# package / run_id, eval.json and eval/<task>.json without evals/, checkpoint format 1. Read, never written.
LEGACY_FORMAT = 1
KINDS = ("pretrain", "finetune")

CONFIG = "config.yaml"
META = "meta.json"
LOCK = ".dt-eva.lock"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "checkpoints/last.pt"
MODEL = "model.pt"
SUMMARY = "summary.json"
EVAL = "eval.json"
EVALS = "evals"
EVAL_PER_TASK = "eval"  # eval/<task>.json of LEGACY_FORMAT runs; read, no longer written
EVA = "eva"
EVA_SUMMARY = "eva/eva.json"
EVA_RANKS_PLOT = "eva/ranks.png"
ADAPTERS = "adapters"
MERGED_MODEL = "merged_model.pt"
VIDEOS = "videos"

# Everything the package writes at the top of a run directory: `--force` deletes these and nothing else.
PACKAGE_ENTRIES = (
    CONFIG, META, METRICS, TENSORBOARD, CHECKPOINTS, MODEL, SUMMARY, EVAL, EVALS, EVAL_PER_TASK, EVA, ADAPTERS,
    MERGED_MODEL, VIDEOS,
)


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run directory."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    config = property(lambda self: self.root / CONFIG)
    meta = property(lambda self: self.root / META)
    lock = property(lambda self: self.root / LOCK)
    metrics = property(lambda self: self.root / METRICS)
    tensorboard = property(lambda self: self.root / TENSORBOARD)
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    last_checkpoint = property(lambda self: self.root / LAST_CHECKPOINT)
    model = property(lambda self: self.root / MODEL)
    summary = property(lambda self: self.root / SUMMARY)
    eval = property(lambda self: self.root / EVAL)
    evals = property(lambda self: self.root / EVALS)
    eval_per_task = property(lambda self: self.root / EVAL_PER_TASK)
    eva = property(lambda self: self.root / EVA)
    eva_summary = property(lambda self: self.root / EVA_SUMMARY)
    eva_ranks_plot = property(lambda self: self.root / EVA_RANKS_PLOT)
    adapters = property(lambda self: self.root / ADAPTERS)
    merged_model = property(lambda self: self.root / MERGED_MODEL)
    videos = property(lambda self: self.root / VIDEOS)
