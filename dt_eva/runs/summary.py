"""`summary.json`, what a finished run did: one typed record and its one reader (torch-free).

Pre-training and fine-tuning write the common fields; the others are the kind's own. A field a file
lacks (the other kind's, or one an older dt-eva did not write) is None, so every run folder since
format 0.1 loads. Values are kept as the file holds them: a reader that computes with one checks it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dt_eva.runs.layout import RunPaths
from dt_eva.utils.io import load_json_object


@dataclass(frozen=True)
class RunSummary:
    """The fields of `summary.json`; `extra` holds keys this version does not know."""

    # both kinds
    kind: str | None = None  # "pretrain" | "finetune"
    name: str | None = None
    steps: int | None = None
    final_loss: float | None = None
    seconds: float | None = None  # wall clock of the training loop
    tokens_per_s: float | None = None
    world_size: int | None = None
    device: str | None = None
    precision: str | None = None  # what training ran at: "fp32" | "bf16"
    machines: list[str] | None = None  # CPU model of each machine
    eval: dict[str, Any] | None = None  # the final evaluation's mean, None when not evaluated
    resumed_from_step: int | None = None
    # pre-training
    parameters: int | None = None
    tasks: list[str] | None = None
    # fine-tuning
    task: str | None = None
    method: str | None = None
    rank: int | None = None
    rho: float | None = None
    alpha: float | None = None
    seed: int | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    adapter_ranks: dict[str, int] | None = None
    total_rank: int | None = None
    eva_init_seconds: float | None = None
    lr: float | None = None
    pretrain: dict[str, Any] | None = None  # the base's path, SHA-256 and step
    heldout_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSummary":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})


def read_summary(run_dir: str | Path, problems: list[str] | None = None) -> RunSummary | None:
    """The summary of the run in `run_dir`; None when it has none (training did not finish).

    A damaged file (unreadable, not UTF-8 JSON, not an object) is `ValueError("<path> is corrupt
    (...)")`; with a `problems` list, that message is appended to it and None returned instead.
    """
    path = RunPaths(run_dir).summary
    try:
        data = load_json_object(path)
    except ValueError as e:
        if problems is None:
            raise
        problems.append(str(e))
        return None
    return RunSummary.from_dict(data) if data is not None else None
