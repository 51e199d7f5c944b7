"""Config sections shared by pre-training and fine-tuning: data, optimiser, training loop.

The defaults are the paper's appendix E hyper-parameters (batch 128, AdamW lr 1e-4, weight decay
0.01, 4000 warm-up steps then cosine decay to 1e-6, gradient clipping 0.25).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from dt_eva.models.config import DTConfig
from dt_eva.utils.checks import check_number
from dt_eva.utils.precision import PRECISIONS


@dataclass
class DataConfig:
    """Which offline dataset to train on, and how returns / rewards are scaled for the model."""

    path: str = "data/mt40"
    # "mt40", "cw10", a comma list, a YAML list of task names, or null for every task in the dataset
    tasks: Optional[Union[str, list[str]]] = None
    # returns-to-go / rewards are divided by these before they reach the model; they set the model's own
    # (`DTConfig.rtg_scale`, `reward_scale`) when a run builds it
    rtg_scale: float = DTConfig.rtg_scale
    reward_scale: float = DTConfig.reward_scale

    def __post_init__(self) -> None:
        for key in ("rtg_scale", "reward_scale"):
            check_number(f"data.{key}", getattr(self, key), low=0, low_open=True)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (`dt_eva.training.schedule`)."""

    lr: float = 1e-4
    weight_decay: float = 0.01  # not applied to biases, norms and embeddings
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 4000
    min_lr: float = 1e-6  # the cosine ends here at the last step
    grad_clip: float = 0.25  # max global grad norm; 0 disables clipping

    def __post_init__(self) -> None:
        check_number("optim.lr", self.lr, low=0, low_open=True)
        check_number("optim.min_lr", self.min_lr, 0, self.lr, hint=" (at most optim.lr)")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        check_number("optim.grad_clip", self.grad_clip, low=0, hint=" (0 = no clipping)")
        check_number("optim.weight_decay", self.weight_decay, low=0)
        check_number("optim.eps", self.eps, low=0, low_open=True)
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas must be two numbers [beta1, beta2], got {list(self.betas)!r}")
        self.betas = tuple(check_number(f"optim.betas[{i}]", b, 0, 1, high_open=True)  # type: ignore[assignment]
                           for i, b in enumerate(self.betas))


@dataclass
class TrainConfig:
    """The training loop: length, batch, logging / checkpoint / evaluation cadence, device."""

    steps: int = 1_000_000  # optimizer updates
    batch_size: int = 128  # global batch: split evenly across DDP ranks
    log_every: int = 100  # metrics.jsonl + TensorBoard every N steps (loss averaged over them)
    ckpt_every: int = 10_000  # checkpoints/last.pt every N steps (and at the end, and on Ctrl-C)
    eval_every: int = 0  # online evaluation every N steps and at the end; 0 = never
    probe_every: int = 0  # the cheap offline probe (e.g. the held-out loss) every N steps; 0 = at eval steps only
    eval_tasks: list[str] = field(default_factory=list)
    eval_episodes: int = 10  # episodes per evaluation task
    precision: str = "auto"  # "auto" (bf16 autocast where the GPU or CPU has native bf16, else fp32) | "bf16" | "fp32"
    device: str = "auto"  # "auto" (CUDA when available) | "cpu" | "cuda" | "cuda:N"
    progress: bool = True  # tqdm progress bar (rank 0 only)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"train.eval_every must be >= 0 (0 = no evaluation), got {self.eval_every}")
        if self.probe_every < 0:
            raise ValueError(f"train.probe_every must be >= 0 (0 = only at evaluation steps), got {self.probe_every}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
