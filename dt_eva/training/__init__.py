"""Training: the one loop shared by pre-training and fine-tuning, checkpoints, DDP, `run_pretrain`.

- `Trainer` (`loop.py`): AdamW + warm-up/cosine, clipping, bf16 autocast, DDP, metrics, checkpoints,
  hooks for fine-tuning (param groups, loss, checkpointed model state, after-step callback, extra state).
- `DataConfig`, `OptimConfig`, `TrainConfig` (`configs.py`): config sections shared with fine-tuning.
- `PretrainConfig`, `run_pretrain` (`pretrain.py`): `dt-eva pretrain`.
- `dt_eva.training.finetune` (imported on demand): `dt-eva finetune`.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .configs import DataConfig, OptimConfig, TrainConfig
from .distributed import DistContext, init_distributed, shutdown_distributed
from .loop import NonFiniteLossError, Trainer, TrainingInterrupted, TrainResult
from .optim import build_optimizer, weight_decay_param_groups
from .pretrain import PretrainConfig, prepare_pretrain, run_pretrain
from .rundir import default_run_dir, prepare_run_dir, write_meta
from .schedule import build_scheduler, warmup_cosine_lr

__all__ = [
    "DataConfig",
    "DistContext",
    "NonFiniteLossError",
    "OptimConfig",
    "PretrainConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "build_optimizer",
    "build_scheduler",
    "default_run_dir",
    "init_distributed",
    "load_checkpoint",
    "prepare_pretrain",
    "prepare_run_dir",
    "run_pretrain",
    "save_checkpoint",
    "shutdown_distributed",
    "warmup_cosine_lr",
    "weight_decay_param_groups",
    "write_meta",
]
