"""Ada-DF (ICASSP 2023): a ResNet-18 that forks after layer1 into two identical branches.

Layout (the release, taylor-xy0827/Ada-DF)::

    image -> stem (conv1, bn1, act1, maxpool, layer1; frozen) -+-> branch 1 (layer2-4, GAP) -> g1
                                                               +-> branch 2 (layer2-4, GAP) -> g2
    out_k = alpha_k * fc_k(g_k),  alpha_k = sigmoid(Linear 512->1 (g_k))

Branch 1 is auxiliary: its softmax feeds the class-distribution table and the fused target of
:class:`ferpipe.losses.ada_df.AdaDFCriterion`. Branch 2 is what is evaluated, so ``"logits"``
is ``out2``. Branch 2 is a deep copy of branch 1 (classifier included) at construction, so both
start identical; the two alpha heads are initialised independently, as released.

Release behaviour kept on purpose:

- The stem is frozen only through ``requires_grad=False``. ``model.train()`` still puts its
  BatchNorm in train mode, so it normalises with batch statistics and keeps updating its running
  statistics during training. Call ``model.stem.eval()`` after ``train()`` if that is unwanted.
  Freezing only makes sense on top of the MS-Celeb weights: ``freeze_stem=False`` (not the
  release) lets a run without the checkpoint (e.g. the CPU preset) train the stem as well.
- Dropout (rate 0 by default) sits between the stem and the branches. The release builds the
  dropout module inside forward, so it is in train mode even when the model is not;
  ``dropout_at_eval=True`` (default) reproduces that, False makes it follow ``model.training``.

Checkpoint: ``resnet18_msceleb.pth`` from the Ada-DF README (MS-Celeb-1M face recognition),
``{'state_dict': <timm/torchvision ResNet-18 names, fc [1000,512]>}``. It is loaded strictly into a
timm ``resnet18`` before the branches are split; its 1000-way fc is then replaced by the fresh
C-way classifier.
"""

from __future__ import annotations

import copy

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ._checkpoint import LoadReport, _pick, _strict_load, read_checkpoint
from ._registry import register_model

_MSCELEB_WHAT = (
    "Ada-DF's MS-Celeb-1M ResNet-18 (resnet18_msceleb.pth from the Ada-DF README; "
    "timm/torchvision key names under 'state_dict')"
)


def load_resnet18_msceleb(trunk: nn.Module, source) -> LoadReport:
    """Strict load of ``resnet18_msceleb.pth`` into a 1000-class timm ``resnet18``."""
    obj = read_checkpoint(source, _MSCELEB_WHAT)
    return _strict_load(trunk, _pick(obj, ("state_dict",), _MSCELEB_WHAT, source), _MSCELEB_WHAT, source)


class _Branch(nn.Module):
    """layer2, layer3, layer4 and global average pooling of a ResNet-18, then the classifier."""

    def __init__(self, trunk: nn.Module, num_classes: int):
        super().__init__()
        self.layer2 = trunk.layer2
        self.layer3 = trunk.layer3
        self.layer4 = trunk.layer4
        self.global_pool = trunk.global_pool  # avg pool + flatten -> [B,512]
        self.fc = nn.Linear(trunk.num_features, num_classes)

    def forward(self, x):
        g = self.global_pool(self.layer4(self.layer3(self.layer2(x))))
        return g, self.fc(g)


class AdaDF(nn.Module):
    """Frozen shared stem, two ResNet-18 branches with SCN-style attention scaling of logits."""

    def __init__(self, num_classes: int = 7, dropout: float = 0.0, dropout_at_eval: bool = True,
                 freeze_stem: bool = True, checkpoint=None):
        super().__init__()
        trunk = timm.create_model("resnet18", pretrained=False)  # 1000-way fc, as in the file
        self.load_report = load_resnet18_msceleb(trunk, checkpoint) if checkpoint is not None else None
        self.stem = nn.Sequential()
        for name in ("conv1", "bn1", "act1", "maxpool", "layer1"):
            self.stem.add_module(name, getattr(trunk, name))
        self.stem.requires_grad_(not freeze_stem)
        self.dropout = float(dropout)
        self.dropout_at_eval = dropout_at_eval
        self.branch1 = _Branch(trunk, num_classes)
        self.branch2 = copy.deepcopy(self.branch1)
        width = trunk.num_features
        self.alpha1 = nn.Linear(width, 1)
        self.alpha2 = nn.Linear(width, 1)

    def forward(self, x):
        x = self.stem(x)
        if self.dropout > 0:
            x = F.dropout(x, self.dropout, training=self.dropout_at_eval or self.training)
        g1, logits1 = self.branch1(x)
        g2, logits2 = self.branch2(x)
        alpha1 = torch.sigmoid(self.alpha1(g1))
        alpha2 = torch.sigmoid(self.alpha2(g2))
        out1 = alpha1 * logits1
        out2 = alpha2 * logits2
        return {
            "logits": out2,
            "out1": out1,
            "out2": out2,
            "alpha1": alpha1,
            "alpha2": alpha2,
            "weights": (alpha1 + alpha2) / 2,
        }


@register_model(name="ada_df")
def ada_df(num_classes: int = 7, checkpoint=None, dropout: float = 0.0, dropout_at_eval: bool = True,
           freeze_stem: bool = True) -> AdaDF:
    """Ada-DF dual-branch ResNet-18. ``checkpoint``: ``resnet18_msceleb.pth`` (strict load).

    Returns a dict: ``logits`` (= ``out2``, the evaluated branch), ``out1``, ``out2``
    ([B,C] each), ``alpha1``, ``alpha2`` and ``weights`` = their mean ([B,1] each).
    """
    return AdaDF(num_classes=num_classes, dropout=dropout, dropout_at_eval=dropout_at_eval,
                 freeze_stem=freeze_stem, checkpoint=checkpoint)
