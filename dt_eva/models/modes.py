"""`eval_mode`: the one way a model is run for measurement (online rollouts, the held-out loss)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module, inference: bool = True) -> Iterator[nn.Module]:
    """Dropout off and no autograd inside; the model's train/eval flag is restored afterwards.

    `inference=True` uses `torch.inference_mode` (the fastest; its tensors can never enter autograd
    later), `False` uses `torch.no_grad` (for results that outlive the block, e.g. EVA's components).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode() if inference else torch.no_grad():
            yield model
    finally:
        model.train(was_training)
