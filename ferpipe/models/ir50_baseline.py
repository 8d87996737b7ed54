"""IR-50 plain-CE baseline: ORSANet's image trunk with nothing but a linear classifier on top.

It measures what the IR-50 face-recognition features give on their own, without priors or
attention: trunk -> global average pool -> Linear -> logits, trained with the ``ce`` criterion.

The trunk is :class:`ferpipe.models.ir50.IR50` unchanged, i.e. the three stages ORSANet runs
(3 + 4 + 14 units, widths 64/128/256) on the input nearest-resized to ``input_size``, giving
[B,256,14,14] at 112. The fourth stage and the BN-Dropout-Flatten-Linear-BN embedding layer of the
checkpoint are not built (nothing would use them), so the official ``ir50.pth`` loads by shape
match exactly as in ORSANet (:func:`ferpipe.models._checkpoint.load_ir50`) and its unused
tensors are reported in ``model.load_report.skipped_shape``.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ._checkpoint import load_ir50
from ._registry import register_model
from .ir50 import IR50


class IR50Baseline(nn.Module):
    def __init__(self, num_classes: int = 7, input_size: int | None = 112,
                 widths: Sequence[int] = (64, 128, 256), units: Sequence[int] = (3, 4, 14),
                 stem_width: int = 64):
        super().__init__()
        self.backbone = IR50(widths=widths, units=units, stem_width=stem_width,
                             input_size=input_size, output_layer=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.backbone.out_channels, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.backbone(x)).flatten(1))


@register_model(name="ir50_baseline")
def ir50_baseline(num_classes: int = 7, checkpoint=None, input_size: int | None = 112,
                  widths: Sequence[int] = (64, 128, 256), units: Sequence[int] = (3, 4, 14),
                  stem_width: int = 64) -> IR50Baseline:
    """IR-50 (3 stages) + GAP + Linear; returns logits [B,C].

    ``checkpoint``: POSTER's ir50.pth, shape-matched into the trunk. ``widths``/``units``/
    ``stem_width`` shrink the trunk for CPU runs (the checkpoint then only partly fits).
    """
    model = IR50Baseline(num_classes=num_classes, input_size=input_size, widths=widths,
                         units=units, stem_width=stem_width)
    model.load_report = load_ir50(model.backbone, checkpoint) if checkpoint is not None else None
    return model
