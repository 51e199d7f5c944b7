"""The pre-trained base of a fine-tuning run: a finished pre-training run's config, weights and identity."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dt_eva.config import load_config
from dt_eva.models import DecisionTransformer
from dt_eva.runs.configs import PretrainConfig
from dt_eva.runs.layout import RunPaths
from dt_eva.runs.marker import run_kind
from dt_eva.runs.summary import read_summary
from dt_eva.training.configs import DataConfig
from dt_eva.utils.torchfiles import load_state_dict_file


@dataclass
class PretrainedBase:
    """A pre-training run's model: its config, weights and identity (path, SHA-256 of `model.pt`, step)."""

    run_dir: Path
    model_cfg: Any  # DTConfig
    state: dict[str, torch.Tensor]
    sha256: str
    step: int | None
    data: DataConfig

    def identity(self) -> dict[str, Any]:
        return {"path": str(self.run_dir), "sha256": self.sha256, "step": self.step}

    def build(self, dropout: float | None = None) -> nn.Module:
        """A fresh `DecisionTransformer` with the pre-trained weights (dropout optionally replaced)."""

        model_cfg = self.model_cfg if dropout is None else dataclasses.replace(self.model_cfg, dropout=float(dropout))
        paths = RunPaths(self.run_dir)
        return build_model(model_cfg, self.state, paths.model, paths.config)


def build_model(model_cfg: Any, state: dict[str, torch.Tensor], weights: Path, config: Path) -> nn.Module:
    """A `DecisionTransformer(model_cfg)` holding `state`. The config is checked against the weights'
    names and shapes on a skeleton that allocates no memory (torch's meta device) first: a crafted
    `config.yaml` (hidden size 65536, 64 layers) must not make us allocate tens of GB before failing."""
    with torch.device("meta"):
        skeleton = DecisionTransformer(model_cfg)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.items()}
    wrong = [f"{k}: {saved[k]} in the weights, {expected[k]} in the config" for k in expected
             if k in saved and saved[k] != expected[k]]
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if wrong or missing or unexpected:
        details = "; ".join(wrong[:3] + [f"missing {missing[:3]}"] * bool(missing)
                            + [f"unexpected {unexpected[:3]}"] * bool(unexpected))
        raise ValueError(f"the weights in {weights} do not fit the model described by {config} ({details}); "
                         "restore the run's config.yaml or its weights")
    model = DecisionTransformer(model_cfg)
    model.load_state_dict(state)
    return model


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_pretrained_base(checkpoint: str | Path) -> PretrainedBase:
    """Read a finished pre-training run (`config.yaml` + `model.pt`), with clear errors when it is
    missing, unfinished, corrupt or not a pre-training run."""
    if not str(checkpoint):
        raise ValueError("no pre-training run given: pass --checkpoint runs/<pretrain run> (or checkpoint=...)")
    paths = RunPaths(checkpoint)
    if not paths.root.is_dir():
        raise FileNotFoundError(
            f"pre-training run {paths.root} does not exist; pass the directory written by `dt-eva pretrain` "
            "(e.g. --checkpoint runs/mt40-tiny)"
        )
    if run_kind(paths.root) != "pretrain":
        raise ValueError(f"{paths.root} is a fine-tuning run; --checkpoint must be a pre-training run directory")
    if not paths.config.is_file():
        raise FileNotFoundError(f"{paths.config} is missing: {paths.root} is not a complete `dt-eva pretrain` run")
    if not paths.model.is_file():
        hint = (
            "the run has a checkpoint but did not finish: continue it with `dt-eva pretrain ... --resume`"
            if paths.last_checkpoint.is_file()
            else "the run saved no weights"
        )
        raise FileNotFoundError(f"{paths.model} is missing: {hint}")
    try:
        cfg = load_config(PretrainConfig, paths.config)
    except ValueError as e:
        raise ValueError(f"{paths.config} is not a valid pre-training config: {e}") from None
    state = load_state_dict_file(paths.model)  # names the file when it is corrupt or unsafe
    base = PretrainedBase(paths.root, cfg.model, state, file_sha256(paths.model), _finished_step(paths), cfg.data)
    base.build()  # fail now, naming the files, if the weights do not fit the config
    return base


def _finished_step(paths: RunPaths) -> int | None:
    summary = read_summary(paths.root, problems=[])  # a damaged summary records no step
    try:
        return int(summary.steps) if summary is not None else None
    except (ValueError, TypeError):
        return None
