"""RAN, Region Attention Network (Wang et al., TIP 2020; arXiv 1905.04075).

One ResNet-18 is shared by K face regions and the whole face. Each gives F_i = GAP(layer4)
(512-d). Self-attention mu_i = sigmoid(Linear 512->1 (F_i)); F_m = sum mu_i F_i / sum mu_i.
Relation attention nu_i = sigmoid(Linear 1024->1 ([F_i; F_m])). The output
P = sum mu_i nu_i [F_i; F_m] / sum mu_i nu_i (1024-d) goes to fc 1024->C.

``attention="softmax"`` (the release, default): mu and nu are additionally softmaxed across
the K+1 regions. ``"sigmoid"`` (the paper): the sigmoid weights are used as they are.

The regions are cut on the fly inside forward from the aligned face [B,3,S,S], as the
release's AffectNet script does from the face image: each box (fractions x0, y0, x1, y1 of the
side, truncated to pixels like the release's ``int(f * size)``) is resized back to S x S
(bilinear). The whole face comes last. An input [B,K+1,3,S,S] is taken as regions already cut
(the FERPlus release reads 5 pre-cropped files + the face), original last.

Release details kept:
- the trunk runs once per region (not on the concatenated batch), so in train mode every
  region has its own BatchNorm statistics and the running statistics move K+1 times per step.
  ``fuse_regions=True`` runs one [B*(K+1)] batch instead (faster; BN statistics then mix regions);
- state-dict keys equal the release's: trunk at the top level, ``alpha.0``, ``beta.0``, ``fc``;
- no dropout anywhere.

Inputs: the release feeds ToTensor output in [0,1] with no mean/std normalisation; the
preset reproduces that with mean 0, std 1 (the model itself does not normalise).

Forward returns ``{"logits": [B,C], "alpha": [B,K+1]}``; ``alpha`` are the self-attention
weights the region-biased loss reads (after the softmax in "softmax" mode), original last.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ferpipe.errors import ConfigError

from ._registry import register_model
from .resnet18 import FEATURE_DIM, ResNet18Trunk

Box = tuple[float, float, float, float]

# The release's on-the-fly AffectNet regions (part_attentioon_sample_fly.py), in its order.
REGION_SETS: dict[str, tuple[Box, ...]] = {
    "affectnet": (
        (0.125, 0.25, 0.875, 1.0),    # center-down
        (0.0, 0.0, 0.75, 0.75),       # top-left
        (0.25, 0.0, 1.0, 0.75),       # top-right
        (0.05, 0.05, 0.95, 0.95),     # center 90%
        (0.1, 0.1, 0.9, 0.9),         # center 80%
        (0.125, 0.125, 0.875, 0.875),  # center 75%
        (0.125, 0.0, 0.875, 0.75),    # center-top
    ),
}
ATTENTION_MODES = ("softmax", "sigmoid")


def _region_boxes(crops) -> tuple[Box, ...]:
    if isinstance(crops, str):
        try:
            return REGION_SETS[crops]
        except KeyError:
            raise ConfigError(f"ran: unknown crops {crops!r}; known: {', '.join(REGION_SETS)} "
                              f"or a list of (x0, y0, x1, y1) fractions") from None
    boxes = tuple(tuple(float(v) for v in b) for b in crops)
    for b in boxes:
        if len(b) != 4 or not (0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1):
            raise ConfigError(f"ran: crop box {b} is not (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1")
    if not boxes:
        raise ConfigError("ran: at least one region crop is needed besides the whole face")
    return boxes


def crop_regions(x: torch.Tensor, boxes: Sequence[Box], mode: str = "bilinear") -> list[torch.Tensor]:
    """[B,3,H,W] -> K+1 tensors [B,3,H,W]: each box cut and resized back, then ``x`` itself."""
    h, w = x.shape[-2:]
    out = []
    for x0, y0, x1, y1 in boxes:
        # int() truncation as in the release's PIL boxes; at least one pixel per side.
        c0, r0 = int(x0 * w), int(y0 * h)
        c1, r1 = max(int(x1 * w), c0 + 1), max(int(y1 * h), r0 + 1)
        part = x[..., r0:r1, c0:c1]
        kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        out.append(F.interpolate(part, size=(h, w), mode=mode, **kw))
    out.append(x)
    return out


class RAN(ResNet18Trunk):
    def __init__(self, num_classes: int = 7, crops="affectnet", attention: str = "softmax",
                 fuse_regions: bool = False, crop_interpolation: str = "bilinear"):
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ConfigError(f"ran: attention must be one of {ATTENTION_MODES}, got {attention!r}")
        self.boxes = _region_boxes(crops)
        self.num_regions = len(self.boxes) + 1  # + the whole face, last
        self.attention_mode = attention
        self.fuse_regions = fuse_regions
        self.crop_interpolation = crop_interpolation
        # Sequential(Linear, Sigmoid) so the keys are the release's alpha.0.* / beta.0.*.
        self.alpha = nn.Sequential(nn.Linear(FEATURE_DIM, 1), nn.Sigmoid())
        self.beta = nn.Sequential(nn.Linear(2 * FEATURE_DIM, 1), nn.Sigmoid())
        self.fc = nn.Linear(2 * FEATURE_DIM, num_classes)

    def regions(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() == 5:  # pre-cut regions [B,K+1,3,S,S], original last
            if x.shape[1] != self.num_regions:
                raise ValueError(f"ran: got {x.shape[1]} pre-cut regions, the model has {self.num_regions}")
            return list(x.unbind(1))
        return crop_regions(x, self.boxes, self.crop_interpolation)

    def region_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,K+1,512]: the shared trunk's pooled feature of every region."""
        regions = self.regions(x)
        if self.fuse_regions:
            feats = self.pool(self.forward_trunk(torch.cat(regions))).split(regions[0].shape[0])
        else:
            feats = [self.pool(self.forward_trunk(r)) for r in regions]
        return torch.stack(feats, dim=1)

    def _weights(self, head: nn.Module, v: torch.Tensor) -> torch.Tensor:
        w = head(v)  # [B,K+1,1], sigmoid
        return w.softmax(dim=1) if self.attention_mode == "softmax" else w

    def forward(self, x):
        f = self.region_features(x)  # [B,K+1,512]
        mu = self._weights(self.alpha, f)
        f_m = (mu * f).sum(1) / mu.sum(1)  # [B,512]
        cat = torch.cat([f, f_m.unsqueeze(1).expand_as(f)], dim=2)  # [B,K+1,1024]
        w = mu * self._weights(self.beta, cat)
        pooled = (w * cat).sum(1) / w.sum(1)
        return {"logits": self.fc(pooled), "alpha": mu.squeeze(-1)}


@register_model
def ran(num_classes: int = 7, crops="affectnet", attention: str = "softmax", checkpoint=None,
        checkpoint_layout: str = "ijba", fuse_regions: bool = False,
        crop_interpolation: str = "bilinear") -> RAN:
    """RAN with a ResNet-18 trunk.

    crops: ``"affectnet"`` (7 regions + face, the release's on-the-fly boxes) or a list of
        (x0, y0, x1, y1) fractions.
    attention: ``"softmax"`` (release) or ``"sigmoid"`` (paper).
    checkpoint: the face-recognition trunk the release starts from, ``ijba_res18_naive.pth.tar``
        (``checkpoint_layout="ijba"``), or ``resnet18_msceleb.pth`` (``"msceleb"``).
    crop_interpolation: how regions are resized back (F.interpolate mode). The release resized
        PIL crops with ``Image.resize``'s default, which was nearest before Pillow 7 (2020)
        and bicubic since [inferred from the Pillow history, not from the repo].
    """
    model = RAN(num_classes, crops=crops, attention=attention, fuse_regions=fuse_regions,
                crop_interpolation=crop_interpolation)
    if checkpoint is not None:
        model.load_trunk(checkpoint, checkpoint_layout)
    return model
