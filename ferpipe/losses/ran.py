"""RAN's region-biased loss and its training criterion (release: kaiwang960112/Challenge-condition-FER-dataset).

L_RB = mean_b max(0, delta - (max_{i != orig} alpha_i - alpha_orig)): the best-weighted region
crop should outweigh the whole face by at least delta. ``alpha`` are the self-attention weights
the ``ran`` model returns (softmaxed across regions in the release), the whole face last.
delta is 0.02 in the release's AffectNet script and 0.1 in its FERPlus script.

The release computes it as a Python loop over the batch with ``max(tensor0, ...)``; relu is
the same value and the same (sub)gradient away from the hinge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .criterion import Criterion, logits_of, register_criterion


def region_biased_loss(alpha: torch.Tensor, delta: float = 0.02) -> torch.Tensor:
    """``alpha`` [B,K+1] (original last) -> scalar."""
    if alpha.dim() != 2 or alpha.shape[1] < 2:
        raise ValueError(f"alpha must be [B, K+1] with K >= 1 regions; got {tuple(alpha.shape)}")
    alpha = alpha.float()
    best_region = alpha[:, :-1].max(dim=1).values
    return F.relu(delta - (best_region - alpha[:, -1])).mean()


class RegionBiasedLoss(nn.Module):
    def __init__(self, delta: float = 0.02):
        super().__init__()
        self.delta = float(delta)

    def forward(self, alpha):
        return region_biased_loss(alpha, self.delta)


class RANCriterion(Criterion):
    """CE(logits, y) + rb_weight * L_RB(alpha); reads the ``ran`` model's output dict."""

    def __init__(self, num_classes: int, delta: float = 0.02, rb_weight: float = 1.0):
        super().__init__(num_classes)
        self.rb = RegionBiasedLoss(delta)
        self.rb_weight = float(rb_weight)

    def forward(self, outputs, target):
        if not isinstance(outputs, dict) or "alpha" not in outputs:
            raise TypeError("the 'ran' loss needs the ran model's output dict with 'alpha'")
        ce = F.cross_entropy(logits_of(outputs).float(), target)
        return ce + self.rb_weight * self.rb(outputs["alpha"])


register_criterion("ran", RANCriterion)
