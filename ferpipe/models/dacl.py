"""DACL, Deep Attentive Center Loss (Farzaneh & Qi, WACV 2021; release amirhfarzaneh/dacl).

ResNet-18 trunk -> layer4 map X [B,512,h,w]; f = GAP(X); logits = fc 512->C. The attention
network reads the whole flattened map, flatten(X) (512*h*w: 25,088 at 224 input, 8,192 at 112):
FC->3584, BN1d, ReLU, FC->512, BN1d, ReLU, FC->64, BN1d, tanh (``attention_hidden``), then
``attention_heads`` Linear 64->1024, viewed as [B,512,2], softmaxed over the pair, channel 1
kept: A in (0,1)^512, one weight per feature dimension, not detached (the loss trains it).

Keys and init follow the release: trunk at the top level, ``attention.{0,1,3,4,6,7}``,
``attention_heads``, ``fc``. The release's init loop runs before ``fc`` exists, so the
attention Linears get Kaiming-normal (fan_in) weights and zero biases while ``fc`` keeps
PyTorch's default init; the trunk's convs are Kaiming fan_out as in torchvision.

The flatten size fixes the input size: build with ``img_size`` equal to what forward gets.
Forward returns ``{"logits": [B,C], "features": f [B,512], "attention": A [B,512]}``; the
``dacl`` criterion (ferpipe/losses/dacl.py) reads all three.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._registry import register_model
from .resnet18 import FEATURE_DIM, ResNet18Trunk, trunk_output_size


def _attention_mlp(in_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(hidden):
        last = i == len(hidden) - 1
        layers += [nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.Tanh() if last else nn.ReLU(inplace=True)]
        in_dim = width
    return nn.Sequential(*layers)


class DACL(ResNet18Trunk):
    def __init__(self, num_classes: int = 7, img_size: int = 224,
                 attention_hidden: Sequence[int] = (3584, 512, 64)):
        super().__init__()
        if not attention_hidden:
            raise ValueError("dacl: attention_hidden needs at least one layer")
        self.img_size = int(img_size)
        self.grid = trunk_output_size(self.img_size)
        self.attention = _attention_mlp(FEATURE_DIM * self.grid * self.grid, attention_hidden)
        # Two logits per feature dimension; softmax over the pair = a per-dimension gate.
        self.attention_heads = nn.Linear(attention_hidden[-1], 2 * FEATURE_DIM)
        for m in (*self.attention, self.attention_heads):
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x):
        feat_map = self.forward_trunk(x)
        if feat_map.shape[-1] != self.grid or feat_map.shape[-2] != self.grid:
            raise ValueError(
                f"dacl was built for img_size={self.img_size} (layer4 {self.grid}x{self.grid}); "
                f"got input {tuple(x.shape[-2:])} (layer4 {tuple(feat_map.shape[-2:])})"
            )
        e = self.attention(torch.flatten(feat_map, 1))
        # reshape(-1, 512, 2): output units (2j, 2j+1) form the pair of dimension j, as released.
        attn = self.attention_heads(e).reshape(-1, FEATURE_DIM, 2).softmax(dim=-1)[:, :, 1]
        f = self.pool(feat_map)
        return {"logits": self.fc(f), "features": f, "attention": attn}


@register_model
def dacl(num_classes: int = 7, checkpoint=None, attention_hidden: Sequence[int] = (3584, 512, 64),
         img_size: int = 224, checkpoint_layout: str = "msceleb") -> DACL:
    """DACL network. ``img_size``: the square input side (sets the attention input size).

    ``checkpoint``: the face-recognition trunk the release starts from, ``resnet18_msceleb.pth``
    (``checkpoint_layout="msceleb"``; ``"ijba"`` for RAN's file). Its fc is ignored.
    """
    model = DACL(num_classes, img_size=img_size, attention_hidden=tuple(attention_hidden))
    if checkpoint is not None:
        model.load_trunk(checkpoint, checkpoint_layout)
    return model
