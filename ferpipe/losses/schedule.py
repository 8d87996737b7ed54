"""ORSANet's loss schedule (train.py): a label-smoothing warm-up, then DARE.

Epochs are 1-based. For epoch <= ``warmup_epochs`` (5): CE + 2 * LSCE(0.2). After:
CE + 0.1 * DARE(T=1). Both SAM passes use the same loss.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .dare import dare_loss
from .label_smoothing import LabelSmoothingCE


def orsanet_loss_schedule(
    epoch: int,
    warmup_epochs: int = 5,
    lsce_weight: float = 2.0,
    lsce_eps: float = 0.2,
    dare_weight: float = 0.1,
    temperature: float = 1.0,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function ``(logits, target) -> scalar`` for 1-based ``epoch``."""
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got {epoch}")
    if epoch <= warmup_epochs:
        lsce = LabelSmoothingCE(lsce_eps)

        def warmup_loss(logits, target):
            return F.cross_entropy(logits, target) + lsce_weight * lsce(logits, target)

        return warmup_loss

    def dare_phase_loss(logits, target):
        return F.cross_entropy(logits, target) + dare_weight * dare_loss(logits, target, temperature)

    return dare_phase_loss
