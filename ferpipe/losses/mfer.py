"""MFER's objective: label-smoothing CE (eps 0.1) on each of the three Msc heads, summed.

What is *not* here: the paper adds a "Deep Smooth Feature" loss on the pooled feature, with
learnable parameters and weight 0.001, optimised jointly with the network. Its definition was
never published: the released train.py calls a ``FeatureLoss`` class that exists nowhere in the
repository, and the paper only describes it in words (a center-type loss that balances
intra-class probability differences and pulls features towards class centers). Any formula we
wrote would be a guess presented as the method, so ferpipe does not implement it and names
nothing after it. Results trained here are MFER without that loss.

Offered instead, off by default: ``feature_loss="center"``, a plain center loss (Wen et al.,
ECCV 2016) on ``outputs["features"]``, ``0.5 * mean_i ||f_i - c_{y_i}||^2`` with the class
centers an ``nn.Parameter`` ([C, feat_dim]) that the trainer optimises together with the model
(it adds criterion parameters to the optimiser). It is a generic stand-in with the release's
weight (0.001), not a reproduction; use it only as a labelled ablation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .criterion import Criterion, register_criterion

FEATURE_LOSSES = (None, "center")


class MFERCriterion(Criterion):
    """Sum over the heads of LSCE(``smoothing``), plus ``feature_weight`` * center loss if enabled.

    Args:
        smoothing: label smoothing of each head's CE (timm's LabelSmoothingCrossEntropy, 0.1).
        feature_loss: None (default) or "center".
        feature_weight: weight of the feature loss (the release's ``weight_loss``, 0.001).
        feat_dim: width of ``outputs["features"]`` (1024 for the base model, 256 for tiny);
            only used by the center loss.
    """

    def __init__(self, num_classes: int, smoothing: float = 0.1, feature_loss: str | None = None,
                 feature_weight: float = 0.001, feat_dim: int = 1024):
        super().__init__(num_classes)
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_loss must be one of {FEATURE_LOSSES}, got {feature_loss!r}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = float(smoothing)
        self.feature_loss = feature_loss
        self.feature_weight = float(feature_weight)
        self.feat_dim = int(feat_dim)
        if feature_loss == "center":
            self.centers = nn.Parameter(torch.randn(self.num_classes, self.feat_dim))
        self.last_terms: dict[str, torch.Tensor] = {}

    def center_loss(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.feat_dim:
            raise ValueError(
                f"center loss built for feat_dim={self.feat_dim}, got features of width "
                f"{features.shape[1]}; set loss_kwargs feat_dim to the model's dims[-1]"
            )
        return 0.5 * (features - self.centers[target]).pow(2).sum(dim=1).mean()

    def forward(self, outputs, target):
        if not isinstance(outputs, dict) or "head_logits" not in outputs:
            raise TypeError("MFERCriterion needs the mfer model's dict output (with 'head_logits')")
        # F.cross_entropy's label smoothing equals timm's LSCE: (1-eps) NLL + eps mean_j(-log p_j).
        ce = sum(F.cross_entropy(h.float(), target, label_smoothing=self.smoothing)
                 for h in outputs["head_logits"])
        self.last_terms = {"ce": ce.detach()}
        if self.feature_loss is None:
            return ce
        feat = self.center_loss(outputs["features"].float(), target)
        self.last_terms["center"] = feat.detach()
        return ce + self.feature_weight * feat


register_criterion("mfer", MFERCriterion)
