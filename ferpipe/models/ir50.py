"""IR-50 face-recognition trunk as ORSANet/POSTER use it (face.evoLVe lineage).

Only the first three stages run (3 + 4 + 14 bottleneck_IR units, widths 64/128/256), on the
input nearest-resized to 112, giving [B,256,14,14]. ``output_layer`` is built (the checkpoint
holds it and it counts towards the released parameter total) but never used in forward.
Widths, unit counts and the internal resize are knobs so a small CPU variant keeps the shape.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import nn

from ._checkpoint import load_ir50
from ._registry import register_model
from .layers import PReLU


class BottleneckIR(nn.Module):
    """Pre-activation residual unit: BN, conv3x3, PReLU, conv3x3 (stride), BN; plus shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        if in_ch == out_ch:
            # A 1x1 max-pool is a parameter-free strided identity.
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
            PReLU(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IR50(nn.Module):
    """IR trunk; ``forward`` returns the last used stage's map ([B,256,14,14] by default).

    Args:
        widths, units: channels and unit counts per stage (each stage starts with stride 2).
        stem_width: channels of the 3x3 stem.
        input_size: the input is nearest-resized to this square size first (None: no resize).
        output_layer: build the unused BN-Dropout-Flatten-Linear-BN head of the checkpoint
            (its flattened size assumes a 512-channel 7x7 map, as in the file).
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256),
        units: Sequence[int] = (3, 4, 14),
        stem_width: int = 64,
        input_size: int | None = 112,
        output_layer: bool = True,
        drop_ratio: float = 0.0,
    ):
        super().__init__()
        if len(widths) != len(units):
            raise ValueError("widths and units must have the same length")
        self.input_size = input_size
        self.out_channels = widths[-1]
        self.num_stages = len(widths)
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width), PReLU(stem_width)
        )
        body, in_ch = [], stem_width
        for width, n in zip(widths, units):
            for i in range(n):
                body.append(BottleneckIR(in_ch, width, 2 if i == 0 else 1))
                in_ch = width
        self.body = nn.Sequential(*body)
        if output_layer:
            self.output_layer = nn.Sequential(
                nn.BatchNorm2d(512), nn.Dropout(drop_ratio), nn.Flatten(),
                nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512),
            )
        else:
            self.output_layer = None

    def output_size(self, input_size: int) -> int:
        size = self.input_size or input_size
        for _ in range(self.num_stages):
            size = (size + 1) // 2
        return size

    def forward(self, x):
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=self.input_size)  # nearest, as released
        return self.body(self.input_layer(x))


@register_model
def ir50(checkpoint=None, **cfg) -> IR50:
    """IR-50 (3 stages). ``checkpoint``: POSTER's ir50.pth, loaded by shape match."""
    model = IR50(**cfg)
    if checkpoint is not None:
        model.load_report = load_ir50(model, checkpoint)
    return model
