"""Label-smoothing cross-entropy as ORSANet uses it (timm's formulation).

loss = (1 - eps) * (-log p_y) + eps * mean_j(-log p_j), averaged over the batch. Note the
smoothing term is the mean over all C classes including y, so this equals
``F.cross_entropy(..., label_smoothing=eps)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class LabelSmoothingCE(nn.Module):
    def __init__(self, eps: float = 0.1):
        super().__init__()
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        self.eps = eps

    def forward(self, logits, target):
        logp = F.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, target[:, None])[:, 0]
        smooth = -logp.mean(dim=-1)
        return ((1.0 - self.eps) * nll + self.eps * smooth).mean()
