"""DARE loss (ORSANet; ``DRAELoss`` in the released utils.py).

For each sample with logits z and target y: r = argmax_{j != y} z_j (the most confusable wrong
class); p = softmax(z) and the margin m = T * (1 - p_y) are gradient-stopped; m is added to every
non-target logit and cross-entropy is taken over {y, r} only. That is
    loss_i = softplus(z_r - z_y + m_i),
a two-class logistic loss against the hardest negative with a margin that grows as confidence
in the true class drops. The release masks the other classes with -9999 and calls
cross_entropy; this is the same value in closed form (exp(-9999) underflows to 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dare_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0,
              ignore_index: int = -100) -> torch.Tensor:
    keep = target != ignore_index
    logits, target = logits[keep], target[keep]
    if logits.shape[0] == 0:
        return logits.sum() * 0.0  # no valid sample: zero, still attached to the graph
    z_y = logits.gather(1, target[:, None])[:, 0]
    others = logits.detach().scatter(1, target[:, None], float("-inf"))
    r = others.argmax(dim=1)
    z_r = logits.gather(1, r[:, None])[:, 0]
    with torch.no_grad():  # fp16/bf16 logits: take the softmax in fp32
        p = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
        margin = temperature * (1.0 - p.gather(1, target[:, None])[:, 0])
    return F.softplus(z_r - z_y + margin.to(logits.dtype)).mean()


class DARELoss(nn.Module):
    """``DARELoss(temperature=1.0)(logits [B,C], target [B] long) -> scalar`` (mean over batch)."""

    def __init__(self, temperature: float = 1.0, ignore_index: int = -100):
        super().__init__()
        self.temperature = temperature
        self.ignore_index = ignore_index

    def forward(self, logits, target):
        return dare_loss(logits, target, self.temperature, self.ignore_index)
