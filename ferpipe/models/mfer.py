"""MFER (IEEE TAFFC): ConvNeXt with DS attention and a multiscale classifier (Msc).

Layout (the release, XuJ1E/MFER)::

    image -> ConvNeXt stages 1-2 -> stage 3 blocks -> DS attention -> stage 4 blocks -> DS attention
          -> GAP -> LayerNorm -> feat [B,D]          (D = dims[-1]; 1024 for the release's base)
    Msc: head_i(feat[:, :d_i]) for d_i = D/2, 3D/4, D;  logits = sum of the three heads

The backbone is timm's ``ConvNeXt`` with no classifier (its head reduces to GAP + LayerNorm,
which is exactly the release's ``norm(x.mean([-2,-1]))``). A DS attention module is appended to
the block list of stages 3 and 4 as a child named ``ds_attention``, so every other key keeps its
timm name and an ImageNet ConvNeXt checkpoint loads into the backbone unchanged.

Variants: ``base`` is the release (dims 128/256/512/1024, depths 3/3/27/3, about 155M parameters).
``tiny`` is ferpipe's CPU-scale stand-in (dims 32/64/128/256, depths 1/1/2/1), not ConvNeXt-T;
``dims=`` / ``depths=`` override either.

Checkpoint: the MS-Celeb-1M self-supervised ConvNeXt-B the paper uses was never released, and the
released script builds the network with ``pretrained=False``. ``checkpoint=`` takes an ImageNet
ConvNeXt of the same shape instead: an official facebookresearch file (state dict under
``"model"``, original key names, remapped by timm's ``checkpoint_filter_fn``) or a timm one. Every
backbone tensor must be present; the DS attention and Msc heads stay at their initialisation and
are listed in ``model.load_report.missing``; the ImageNet classifier is dropped.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from timm.layers import trunc_normal_
from timm.models.convnext import ConvNeXt, checkpoint_filter_fn
from torch import nn

from ferpipe.errors import ConfigError, FerpipeError

from ._checkpoint import LoadReport, _name, _pick, read_checkpoint, strip_module_prefix
from ._registry import register_model

log = logging.getLogger(__name__)

VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "base": ((128, 256, 512, 1024), (3, 3, 27, 3)),
    "tiny": ((32, 64, 128, 256), (1, 1, 2, 1)),
}


class DSAttention(nn.Module):
    """Dynamic global / static local attention over a [B,C,H,W] map, added residually.

    With tokens x_n (n over the N = H*W positions, channels last)::

        V = Linear(x)                                    value
        K = MLP(x) * x,  MLP = Linear C->C/8, GELU, Linear C/8->C
        Q = LayerNorm(GELU(Conv2d 7x7 (x)))              a full (not depthwise) conv
        out = x + softmax_n(Q + K) * V                   softmax over positions, per channel

    GELU comes before the LayerNorm as in the code (the paper's figure draws the reverse).
    """

    def __init__(self, dim: int, kernel_size: int = 7, key_reduction: int = 8):
        super().__init__()
        self.value = nn.Linear(dim, dim)
        self.key = nn.Sequential(
            nn.Linear(dim, dim // key_reduction), nn.GELU(), nn.Linear(dim // key_reduction, dim)
        )
        self.query = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.query_act = nn.GELU()
        self.query_norm = nn.LayerNorm(dim)  # torch default eps 1e-5, as released

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        v = self.value(tokens)
        k = self.key(tokens) * tokens
        q = self.query_norm(self.query_act(self.query(x)).permute(0, 2, 3, 1).reshape(b, h * w, c))
        attn = torch.softmax(q + k, dim=1) * v  # dim 1: the N positions
        return x + attn.reshape(b, h, w, c).permute(0, 3, 1, 2)


class _Head(nn.Module):
    """One Msc head: Linear d->d, GELU, Linear d->C on the first ``d`` channels of feat."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, num_classes)

    def forward(self, feat):
        return self.fc2(self.act(self.fc1(feat[:, : self.dim])))


def _init_like_convnext(m: nn.Module) -> None:
    # The release builds DS attention inside its ConvNeXt, whose init (trunc-normal 0.02, zero
    # bias for every Conv2d/Linear) therefore covers it too. The Msc heads live outside and keep
    # torch's default init.
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


class MFER(nn.Module):
    """ConvNeXt + DS attention after stages 3 and 4 + three nested-prefix heads, summed."""

    def __init__(self, num_classes: int = 7, dims: Sequence[int] = VARIANTS["base"][0],
                 depths: Sequence[int] = VARIANTS["base"][1], drop_path_rate: float = 0.25,
                 layer_scale_init: float = 1e-6, ds_attention: bool = True):
        super().__init__()
        dims, depths = tuple(int(d) for d in dims), tuple(int(d) for d in depths)
        if len(dims) != 4 or len(depths) != 4:
            raise ConfigError(f"mfer: dims and depths need 4 stages, got {dims} / {depths}")
        if dims[-1] % 4:
            raise ConfigError(f"mfer: dims[-1] must be divisible by 4 for the Msc heads, got {dims[-1]}")
        # num_classes=0: timm's head keeps only GAP + LayerNorm (eps 1e-6) -> [B, dims[-1]].
        self.backbone = ConvNeXt(num_classes=0, dims=dims, depths=depths,
                                 drop_path_rate=drop_path_rate,
                                 ls_init_value=layer_scale_init if layer_scale_init > 0 else None)
        if ds_attention:
            for stage, dim in zip(self.backbone.stages[2:], dims[2:]):
                attn = DSAttention(dim)
                attn.apply(_init_like_convnext)
                stage.blocks.add_module("ds_attention", attn)
        d = dims[-1]
        self.num_features = d
        self.heads = nn.ModuleList(_Head(w, num_classes) for w in (d // 2, 3 * d // 4, d))

    def forward(self, x):
        feat = self.backbone(x)
        head_logits = [head(feat) for head in self.heads]
        return {"logits": sum(head_logits), "head_logits": head_logits, "features": feat}


def load_convnext_imagenet(model: MFER, source) -> LoadReport:
    """Non-strict load of an ImageNet ConvNeXt (facebookresearch or timm layout) into the backbone."""
    what = "ImageNet ConvNeXt weights for MFER's backbone (facebookresearch .pth or timm layout)"
    obj = read_checkpoint(source, what)
    state = strip_module_prefix(_pick(obj, ("model", "state_dict"), what, source))
    try:
        state = checkpoint_filter_fn(dict(state), model.backbone)  # FB names -> timm names
    except (KeyError, RuntimeError) as exc:  # the remap reshapes to the model's shapes: another variant
        raise FerpipeError(
            f"{_name(source)} ({what}) does not fit this MFER backbone ({exc}). "
            f"Is it a ConvNeXt with the same dims/depths as the variant?"
        ) from None
    own = model.backbone.state_dict()
    classifier = [k for k in state if k.startswith("head.fc.")]  # ImageNet logits: not used
    unexpected = [k for k in state if k not in own and k not in classifier]
    wrong_shape = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    absent = [k for k in own if k not in state and ".ds_attention." not in k]
    if unexpected or wrong_shape or absent:
        raise FerpipeError(
            f"{_name(source)} ({what}) does not fit this MFER backbone: {len(absent)} backbone "
            f"tensors absent (e.g. {absent[:3]}), {len(wrong_shape)} of another shape "
            f"(e.g. {wrong_shape[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). "
            f"Is it a ConvNeXt with the same dims/depths as the variant?"
        )
    matched = {k: v for k, v in state.items() if k in own}
    model.backbone.load_state_dict(matched, strict=False)
    missing = [f"backbone.{k}" for k in own if k not in matched]
    missing += [f"heads.{k}" for k in model.heads.state_dict()]
    log.info("MFER: loaded %d backbone tensors; %d left at init (DS attention, heads)",
             len(matched), len(missing))
    return LoadReport(loaded=len(matched), missing=missing, unexpected=classifier)


@register_model(name="mfer")
def mfer(num_classes: int = 7, variant: str = "base", dims: Sequence[int] | None = None,
         depths: Sequence[int] | None = None, drop_path_rate: float = 0.25,
         layer_scale_init: float = 1e-6, ds_attention: bool = True, checkpoint=None) -> MFER:
    """MFER. ``variant``: base (release) or tiny (CPU); ``dims``/``depths`` override it.

    Returns a dict: ``logits`` (sum of the heads, [B,C]), ``head_logits`` (list of three [B,C])
    and ``features`` ([B,dims[-1]], the input of the heads and of an optional feature loss).
    """
    if variant not in VARIANTS:
        raise ConfigError(f"mfer: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    vdims, vdepths = VARIANTS[variant]
    model = MFER(num_classes=num_classes, dims=dims or vdims, depths=depths or vdepths,
                 drop_path_rate=drop_path_rate, layer_scale_init=layer_scale_init,
                 ds_attention=ds_attention)
    model.load_report = load_convnext_imagenet(model, checkpoint) if checkpoint is not None else None
    return model
