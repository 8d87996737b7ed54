"""DACL's sparse (attentive) center loss and its training criterion (release: amirhfarzaneh/dacl).

    L_C = 1/(2B) sum_i sum_j A_ij (f_ij - c_{y_i j})^2,     total = CE + lamb * L_C.

The release writes the backward by hand; with the centers outside autograd the automatic
gradients are the same: dL_C/df = A (f - c) / B and dL_C/dA = (f - c)^2 / (2B), both scaled by
lamb through the total.

The centers are not trained by the model's optimiser. The release gives them a hand-made
gradient g_k = -sum_{i: y_i=k} A_i (f_i - c_k) / (1 + n_k), NOT scaled by lamb or 1/B, and
steps a separate plain SGD at lr alpha (0.5) after the model's step. That is

    c_k <- c_k + alpha * sum_{i: y_i=k} A_i (f_i - c_k) / (1 + n_k)

with f, A and the pre-update c of the batch's forward. Here the centers are a buffer (saved
with the criterion's state dict), forward keeps the batch's detached f, A, y, and
:meth:`DACLCriterion.after_step` applies the update once. Under DDP the per-class sums and
counts are all-reduced first, so every rank applies the full global batch's update, as the
release's DataParallel did; centers stay identical across ranks.

Centers start Kaiming-normal on the transposed [feat_dim, C] view (std sqrt(2 / C)), as
released, drawn from a generator seeded with ``seed`` so runs are reproducible.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .criterion import Criterion, logits_of, register_criterion


def sparse_center_loss(features: torch.Tensor, attention: torch.Tensor, target: torch.Tensor,
                       centers: torch.Tensor) -> torch.Tensor:
    """L_C for features / attention [B,D], target [B], centers [C,D] (not differentiated)."""
    diff = features - centers.detach().index_select(0, target)
    return (attention * diff.pow(2)).sum() / (2.0 * features.shape[0])


@torch.no_grad()
def center_update(centers: torch.Tensor, features: torch.Tensor, attention: torch.Tensor,
                  target: torch.Tensor, alpha: float, all_reduce: bool = False) -> torch.Tensor:
    """The release's step: c_k += alpha * sum_{y_i=k} A_i (f_i - c_k) / (1 + n_k), in place."""
    diff = features.to(centers.dtype) - centers.index_select(0, target)
    sums = torch.zeros_like(centers).index_add_(0, target, attention.to(centers.dtype) * diff)
    counts = torch.zeros(centers.shape[0], dtype=centers.dtype, device=centers.device)
    counts.index_add_(0, target, torch.ones_like(target, dtype=centers.dtype))
    if all_reduce:
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    centers.add_(alpha * sums / (1.0 + counts).unsqueeze(1))
    return centers


class DACLCriterion(Criterion):
    """CE + lamb * sparse center loss; reads the ``dacl`` model's ``logits``, ``features``,
    ``attention``. Centers are the ``centers`` buffer [num_classes, feat_dim]."""

    def __init__(self, num_classes: int, lamb: float = 0.01, alpha: float = 0.5,
                 feat_dim: int = 512, seed: int = 0):
        super().__init__(num_classes)
        self.lamb = float(lamb)
        self.alpha = float(alpha)
        self.feat_dim = int(feat_dim)
        centers = torch.empty(self.num_classes, self.feat_dim)
        gen = torch.Generator().manual_seed(int(seed))
        torch.nn.init.kaiming_normal_(centers.t(), generator=gen)  # fan_in = num_classes
        self.register_buffer("centers", centers)
        self._pending = None  # (f, A, y) of the last training forward, for after_step

    def forward(self, outputs, target):
        if not isinstance(outputs, dict) or "features" not in outputs or "attention" not in outputs:
            raise TypeError("the 'dacl' loss needs the dacl model's output dict "
                            "with 'features' and 'attention'")
        f, attn = outputs["features"].float(), outputs["attention"].float()
        if f.shape[1] != self.feat_dim:
            raise ValueError(f"dacl loss: feat_dim is {self.feat_dim}, features are {tuple(f.shape)}")
        ce = F.cross_entropy(logits_of(outputs).float(), target)
        loss_c = sparse_center_loss(f, attn, target, self.centers)
        if torch.is_grad_enabled():  # a training step; eval passes never move the centers
            self._pending = (f.detach(), attn.detach(), target.detach())
        return ce + self.lamb * loss_c

    def after_step(self) -> None:
        if self._pending is None:
            return
        f, attn, y = self._pending
        self._pending = None  # one update per batch, even if the hook runs twice
        ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        center_update(self.centers, f, attn, y, self.alpha, all_reduce=ddp)


register_criterion("dacl", DACLCriterion)
