"""Face ResNet-18: the trunk RAN and DACL share, its two released weight layouts, a baseline.

The trunk is torchvision's ``resnet18(weights=None)`` with its modules adopted at the top level
of the model, so every state-dict key keeps torchvision's name (``conv1.weight``,
``layer3.1.bn2.running_var``, ...). That is also how both releases name them (RAN's and DACL's
ResNet classes are copies of torchvision's), so their face-recognition files load by name.
torchvision's init (Kaiming-normal fan_out convs, BN 1/0) equals both releases' trunk init.

Released pretraining files (:func:`load_resnet18_weights`, ``layout=``):

``"ijba"``    RAN's ``ijba_res18_naive.pth.tar``: ``{'state_dict': ...}`` saved from a
              DataParallel model, so every key starts with ``module.``. The release copies every
              key except ``module.fc.{weight,bias}`` and loads non-strict.
``"msceleb"`` DACL's / Ada-DF's ``resnet18_msceleb.pth``: ``{'state_dict': ...}`` with plain
              torchvision names; ``fc`` is [1000,512] (the release loads it into a 1000-class
              model and then replaces fc) or absent. It is ignored here.

Only trunk tensors are loaded (``conv1``, ``bn1``, ``layer1``-``layer4``). Any other key in the
file is reported as unexpected; a trunk tensor of the wrong shape is an error (the releases'
``load_state_dict`` fails on it too). The model's own heads always start fresh.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import resnet18 as _tv_resnet18

from ferpipe.errors import ConfigError, FerpipeError

from ._checkpoint import LoadReport, _name, _pick, read_checkpoint, strip_module_prefix
from ._registry import register_model

log = logging.getLogger(__name__)

FEATURE_DIM = 512
_TRUNK_MODULES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_TRUNK_PREFIXES = tuple(f"{m}." for m in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"))

# layout -> what the file is (for MissingCheckpointError and logs). Method names are aliases.
_LAYOUTS = {
    "ijba": "RAN's face-recognition ResNet-18 (ijba_res18_naive.pth.tar, MS-Celeb-1M lineage, "
            "kaiwang960112/Challenge-condition-FER-dataset)",
    "msceleb": "MS-Celeb-1M face-recognition ResNet-18 of DACL / Ada-DF (resnet18_msceleb.pth)",
}
_LAYOUT_ALIASES = {"ran": "ijba", "dacl": "msceleb", "adadf": "msceleb", "ada-df": "msceleb"}


def trunk_output_size(img_size: int) -> int:
    """Side of the layer4 map for a square input: 224 -> 7, 112 -> 4, 64 -> 2."""
    s = (img_size + 2 * 3 - 7) // 2 + 1  # conv1 7x7 s2 p3
    s = (s + 2 * 1 - 3) // 2 + 1  # maxpool 3x3 s2 p1
    for _ in range(3):  # first 3x3 s2 p1 conv of layer2, layer3, layer4
        s = (s - 1) // 2 + 1
    return s


class ResNet18Trunk(nn.Module):
    """torchvision ResNet-18 up to layer4, modules at the top level (torchvision key names).

    Subclasses add their heads; :meth:`forward_trunk` gives the layer4 map [B,512,h,w] and
    :meth:`pool` its global average [B,512].
    """

    def __init__(self):
        super().__init__()
        tv = _tv_resnet18(weights=None)  # never downloads
        for name in _TRUNK_MODULES:
            setattr(self, name, getattr(tv, name))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(x), 1)

    def load_trunk(self, source, layout: str = "msceleb") -> LoadReport:
        self.load_report = load_resnet18_weights(self, source, layout=layout)
        return self.load_report


def _resolve_layout(layout: str) -> str:
    key = _LAYOUT_ALIASES.get(layout, layout)
    if key not in _LAYOUTS:
        known = sorted(set(_LAYOUTS) | set(_LAYOUT_ALIASES))
        raise ConfigError(f"unknown ResNet-18 checkpoint layout {layout!r}; known: {', '.join(known)}")
    return key


def load_resnet18_weights(module: nn.Module, source, layout: str = "msceleb") -> LoadReport:
    """Load a released face ResNet-18 (path or loaded dict) into ``module``'s trunk.

    ``module`` is anything with torchvision trunk key names at its top level (the models in
    this package). Returns a :class:`LoadReport`: ``missing`` are trunk keys the file lacks
    (``num_batches_tracked`` counters excepted: files from PyTorch < 0.4 have none, and
    they only matter with BN momentum=None), ``unexpected`` are file keys that are not trunk
    keys of ``module`` (fc excepted, which both layouts drop on purpose).
    """
    layout = _resolve_layout(layout)
    what = _LAYOUTS[layout]
    obj = read_checkpoint(source, what)
    # Both layouts keep the weights under 'state_dict'; a bare state dict is accepted too.
    # 'module.' is stripped for msceleb as well: harmless, and ferpipe re-saves may carry it.
    state = strip_module_prefix(_pick(obj, ("state_dict",), what, source))
    state = OrderedDict((k, v) for k, v in state.items() if not k.startswith("fc."))

    own = module.state_dict()
    trunk_keys = [k for k in own if k.startswith(_TRUNK_PREFIXES)]
    matched, unexpected, bad_shape = OrderedDict(), [], []
    for k, v in state.items():
        if k not in trunk_keys:
            unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            bad_shape.append(f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}")
        else:
            matched[k] = v
    if bad_shape:
        raise FerpipeError(
            f"{_name(source)} ({what}) does not fit a ResNet-18 trunk: {len(bad_shape)} tensors "
            f"have the wrong shape (e.g. {bad_shape[:3]})"
        )
    if not matched:
        raise FerpipeError(
            f"{_name(source)} ({what}) holds no ResNet-18 trunk tensor; its keys start "
            f"{list(state)[:5]} (layout {layout!r} expects torchvision names"
            f"{', prefixed module.' if layout == 'ijba' else ''})"
        )
    module.load_state_dict(matched, strict=False)
    missing = [k for k in trunk_keys if k not in matched and not k.endswith("num_batches_tracked")]
    log.info("ResNet-18 (%s): loaded %d trunk tensors from %s", layout, len(matched), _name(source))
    if missing or unexpected:
        log.warning(
            "ResNet-18 (%s) from %s: %d trunk keys missing (kept at init, e.g. %s), "
            "%d unexpected keys ignored (e.g. %s)",
            layout, _name(source), len(missing), missing[:5], len(unexpected), unexpected[:5],
        )
    return LoadReport(loaded=len(matched), missing=missing, unexpected=unexpected)


class ResNet18(ResNet18Trunk):
    """Plain baseline: trunk, GAP, fc 512->C; forward returns logits. Keys equal torchvision's."""

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.forward_trunk(x)))


@register_model
def resnet18(num_classes: int = 7, checkpoint=None, checkpoint_layout: str = "msceleb") -> ResNet18:
    """ResNet-18 baseline. ``checkpoint``: a face-recognition trunk in ``checkpoint_layout``
    (``"msceleb"``: resnet18_msceleb.pth, ``"ijba"``: RAN's ijba_res18_naive.pth.tar).

    Any square input works (GAP head); the CPU presets use 112.
    """
    model = ResNet18(num_classes)
    if checkpoint is not None:
        model.load_trunk(checkpoint, checkpoint_layout)
    return model
