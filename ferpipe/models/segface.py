"""SegFace (Swin-B, LaPa, 224) face parser, inference module as ORSANet builds it.

Layout follows ``model_299.pt['state_dict_backbone']``: ``backbone`` = torchvision Swin-B
children minus the classifier (``backbone.0`` = features, ``backbone.1`` = final LayerNorm),
``pe_layer`` (random-Fourier positional encoding), ``face_decoder`` (11 class tokens, a
two-way transformer depth 2 / width 256 / MLP 2048 / 8 heads, output upscaling and a shared
hypernetwork MLP), ``linear_c`` (per-stage 1x1 projections to 256) and ``linear_fuse``.

Outputs: the stage-4 map before the final norm [B,1024,7,7] (ORSANet's segmentation prior)
and the 11-class logits [B,11,H,W] (LaPa order: background, skin, left brow, right brow, left
eye, right eye, nose, upper lip, inner mouth, lower lip, hair). The SegFace training-time tanh
face warp (driven by 5-point landmarks) is not implemented: ORSANet never uses it.

Swin-B is built with ``weights=None``; nothing downloads.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import swin_b

from ._checkpoint import load_segface
from ._registry import register_model

LAPA_CLASSES = (
    "background", "skin", "left_brow", "right_brow", "left_eye", "right_eye",
    "nose", "upper_lip", "inner_mouth", "lower_lip", "hair",
)
# Token attribute names as the checkpoint spells them, in LaPa class order.
_TOKEN_NAMES = (
    "background", "face", "leftbro", "rightbro", "lefteye", "righteye",
    "nose", "upperlip", "innermouth", "lowerlip", "hair",
)


class SegFaceOutput(NamedTuple):
    features: torch.Tensor  # stage-4 map before the final norm, [B,1024,H/32,W/32]
    logits: torch.Tensor | None  # [B,11,H,W], None when decoding was skipped


class _Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections to ``dim // downsample``."""

    def __init__(self, dim: int, heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        self.heads = heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x):
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q, k, v):
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        out = (attn @ v).transpose(1, 2)
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


class _MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.lin2(F.relu(self.lin1(x)))


class _TwoWayBlock(nn.Module):
    """Tokens self-attend, attend to the image, MLP; then the image attends back to the tokens."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool):
        super().__init__()
        self.self_attn = _Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = _Attention(dim, heads, 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = _Attention(dim, heads, 2)
        self.skip_first_pe = skip_first_pe

    def forward(self, tokens, image, token_pe, image_pe):
        if self.skip_first_pe:
            tokens = self.self_attn(tokens, tokens, tokens)  # replaces, no residual (first layer)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.norm1(tokens)
        tokens = self.norm2(tokens + self.cross_attn_token_to_image(tokens + token_pe, image + image_pe, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(image + self.cross_attn_image_to_token(image + image_pe, tokens + token_pe, tokens))
        return tokens, image


class _TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, dim: int = 256, heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(_TwoWayBlock(dim, heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = _Attention(dim, heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image, image_pe, tokens):
        image = image.flatten(2).transpose(1, 2)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, image = layer(queries, image, tokens, image_pe)
        queries = queries + self.final_attn_token_to_image(queries + tokens, image + image_pe, image)
        return self.norm_final_attn(queries), image


class _LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - mu) / torch.sqrt(var + self.eps) + self.bias[:, None, None]


class _HyperMLP(nn.Module):
    """3-layer ReLU MLP shared by all class tokens (one ``layers`` list, as in the checkpoint)."""

    def __init__(self, dim: int, hidden: int, out: int, num_layers: int = 3):
        super().__init__()
        sizes = [dim] + [hidden] * (num_layers - 1) + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class _FaceDecoder(nn.Module):
    def __init__(self, dim: int = 256, num_classes: int = 11):
        super().__init__()
        if num_classes != len(_TOKEN_NAMES):
            raise ValueError("the LaPa decoder has 11 class tokens")
        self.transformer = _TwoWayTransformer(2, dim, 8, 2048)
        for name in _TOKEN_NAMES:
            setattr(self, f"{name}_token", nn.Embedding(1, dim))
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, stride=2),
            _LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetwork_mlps = _HyperMLP(dim, dim, dim // 8)

    def forward(self, image, image_pe):
        tokens = torch.cat([getattr(self, f"{n}_token").weight for n in _TOKEN_NAMES], dim=0)
        tokens = tokens.unsqueeze(0).expand(image.shape[0], -1, -1)
        b, c, h, w = image.shape
        hs, image = self.transformer(image, image_pe.expand(b, -1, -1, -1), tokens)
        up = self.output_upscaling(image.transpose(1, 2).reshape(b, c, h, w))
        hyper = self.output_hypernetwork_mlps(hs)  # [B,11,32]
        b, c, h, w = up.shape
        return (hyper @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)


class _PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding of a normalised pixel grid (SAM style)."""

    def __init__(self, num_pos_feats: int = 128):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def forward(self, h: int, w: int) -> torch.Tensor:
        g = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=g.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=g.device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)  # (x, y)
        proj = 2 * math.pi * ((2 * coords - 1) @ g)
        return torch.cat([proj.sin(), proj.cos()], dim=-1).permute(2, 0, 1)  # [C,H,W]


class _StageProjection(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 256):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x):  # NCHW -> [B,HW,out]
        return self.proj(x.flatten(2).transpose(1, 2))


class SegFaceSwinB(nn.Module):
    """SegFace Swin-B LaPa parser.

    ``forward(x, decode=True) -> SegFaceOutput(features, logits)``; ``stage4(x)`` runs only the
    backbone up to stage 4 (what ORSANet needs). Stochastic depth 0.5 (torchvision's Swin-B
    default) is active in train mode, as in the release.
    """

    STAGE_INDICES = (1, 3, 5, 7)  # features[i] are the four Swin stages

    def __init__(self, hidden_sizes: Sequence[int] = (128, 256, 512, 1024), decoder_dim: int = 256):
        super().__init__()
        swin = swin_b(weights=None)
        # features, norm, permute, avgpool, flatten (the head is dropped), as SegFace does.
        self.backbone = nn.Sequential(*list(swin.children())[:-1])
        self.pe_layer = _PositionEmbeddingRandom(decoder_dim // 2)
        self.face_decoder = _FaceDecoder(decoder_dim, len(LAPA_CLASSES))
        self.linear_c = nn.ModuleList(_StageProjection(c, decoder_dim) for c in hidden_sizes)
        self.linear_fuse = nn.Conv2d(decoder_dim * len(hidden_sizes), decoder_dim, 1, bias=False)

    def _stages(self, x, last: int):
        feats = []
        for i, block in enumerate(self.backbone[0]):
            x = block(x)
            if i in self.STAGE_INDICES:
                feats.append(x.permute(0, 3, 1, 2).contiguous())  # NHWC -> NCHW
            if i == last:
                break
        return feats

    def stage4(self, x):
        """Stage-4 output before the final LayerNorm, NCHW [B,1024,H/32,W/32]."""
        return self._stages(x, self.STAGE_INDICES[-1])[-1]

    def decode(self, feats):
        b = feats[0].shape[0]
        size = feats[0].shape[2:]
        fused = []
        for f, mlp in zip(feats, self.linear_c):
            h, w = f.shape[2:]
            y = mlp(f).transpose(1, 2).reshape(b, -1, h, w)
            fused.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        fused = self.linear_fuse(torch.cat(fused[::-1], dim=1))
        pe = self.pe_layer(*fused.shape[2:]).unsqueeze(0)
        return self.face_decoder(fused, pe)

    def forward(self, x, decode: bool = True) -> SegFaceOutput:
        feats = self._stages(x, self.STAGE_INDICES[-1])
        return SegFaceOutput(feats[-1], self.decode(feats) if decode else None)


@register_model(name="segface_swin_b_lapa")
def segface_swin_b_lapa(checkpoint=None) -> SegFaceSwinB:
    """SegFace Swin-B LaPa 224. ``checkpoint``: model_299.pt, strict from 'state_dict_backbone'."""
    model = SegFaceSwinB()
    if checkpoint is not None:
        model.load_report = load_segface(model, checkpoint)
    return model
