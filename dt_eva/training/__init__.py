"""Training: the one loop shared by pre-training and fine-tuning, checkpoints, DDP, precision.

- `Trainer` (`loop.py`): AdamW + warm-up/cosine, clipping, bf16 autocast, DDP, metrics, checkpoints;
  it trains a `Trainable` (`WholeModel` for a plain model; `dt_eva.methods.model.MethodModel`).
- `DataConfig`, `OptimConfig`, `TrainConfig` (`configs.py`): config sections of every run.
The drivers that use it are in `dt_eva.experiments`.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .configs import DataConfig, OptimConfig, TrainConfig
from .distributed import DistContext, init_distributed, shutdown_distributed
from .loop import NonFiniteLossError, Trainable, Trainer, TrainingInterrupted, TrainResult, WholeModel
from .optim import build_optimizer, weight_decay_param_groups
from .schedule import build_scheduler, warmup_cosine_lr

__all__ = [
    "DataConfig",
    "DistContext",
    "NonFiniteLossError",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "Trainable",
    "Trainer",
    "TrainingInterrupted",
    "WholeModel",
    "build_optimizer",
    "build_scheduler",
    "init_distributed",
    "load_checkpoint",
    "save_checkpoint",
    "shutdown_distributed",
    "warmup_cosine_lr",
    "weight_decay_param_groups",
]
