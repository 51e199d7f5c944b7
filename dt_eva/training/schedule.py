"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

For the update with 0-based index t (t = 0 is the first optimizer step) of a run of `total` steps:

    t <  warmup:  lr = base * (t + 1) / warmup
    t >= warmup:  lr = min_lr + (base - min_lr) * (1 + cos(pi * p)) / 2,   p = (t - warmup) / (total - warmup)

so the first update already has a non-zero rate, the peak is reached at the end of warm-up and the
last update (t = total - 1) sits just above `min_lr`.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float) -> float:
    """The learning rate of the update with 0-based index `step` (closed form above)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """`LambdaLR` multiplier for `warmup_cosine_lr`; a plain object so the scheduler state pickles."""

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float) -> None:
        self.base_lr = base_lr
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr = min_lr

    def __call__(self, step: int) -> float:
        return warmup_cosine_lr(step, self.base_lr, self.warmup_steps, self.total_steps, self.min_lr) / self.base_lr


def build_scheduler(
    optimizer: torch.optim.Optimizer, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` that scales each param group's initial lr by `warmup_cosine_lr(t) / base_lr`.

    Groups whose lr differs from `base_lr` follow the same shape, scaled proportionally.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(base_lr, warmup_steps, total_steps, min_lr))
