"""MCM: the cross-interaction pyramid of POSTER, as ORSANet modifies it.

Two token streams, image and landmark, each get a mean ("class") token prepended; the image
stream gets a learned positional embedding. The concatenated [B, 2(N+1), D] sequence is seen at
three embedding widths (D, D/2, D/4) by Conv1d over the token-channel axis. Each pyramid block
runs one cross-fusion block per width (landmark tokens query image tokens) and fuses widths
s -> m -> l with transposed convs. The output is the final-normed image mean token [B, D].

Release quirk, kept by default: queries are the layer-normed landmark tokens with no projection
(``query_projection=False``); True adds a learned ``q`` Linear (key ``attn_img.q``).
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import DropPath, Mlp
from torch import nn


class LandmarkToImageAttention(nn.Module):
    """Landmark half queries, image half keys/values; output has the image half's length."""

    def __init__(self, dim: int, n_img: int, num_heads: int = 8, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, query_projection: bool = False):
        super().__init__()
        self.n_img = n_img
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias) if query_projection else None
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        x_img, x_lm = x[:, : self.n_img], x[:, self.n_img:]
        b, n, c = x_img.shape
        h = self.num_heads
        k, v = self.kv(x_img).reshape(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        q = self.q(x_lm) if self.q is not None else x_lm
        q = q.reshape(b, -1, h, c // h).transpose(1, 2)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        # One output row per landmark query; the release requires as many as image tokens.
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class CrossFusionBlock(nn.Module):
    """Pre-norm cross-attention + MLP on the image half; scaled landmark half; 1x1 token mixing."""

    def __init__(self, dim: int, n_img: int, n_lmk: int, num_heads: int, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), query_projection: bool = False):
        super().__init__()
        self.n_img = n_img
        self.norm1 = norm_layer(dim)
        self.scale = nn.Parameter(torch.ones(1))
        self.attn_img = LandmarkToImageAttention(dim, n_img, num_heads, qkv_bias, attn_drop, drop,
                                                 query_projection)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.conv = nn.Conv1d(n_img + n_lmk, n_img + n_lmk, 1)

    def forward(self, x):
        x_img, x_lm = x[:, : self.n_img], x[:, self.n_img:]
        x_img = x_img + self.drop_path(self.attn_img(self.norm1(x)))
        x_img = x_img + self.drop_path(self.mlp(self.norm2(x_img)))
        return self.conv(torch.cat((x_img, x_lm * self.scale), dim=1))


class PyramidBlock(nn.Module):
    def __init__(self, dim: int, n_img: int, n_lmk: int, **kw):
        super().__init__()
        self.block_l = CrossFusionBlock(dim, n_img, n_lmk, **kw)
        self.block_m = CrossFusionBlock(dim // 2, n_img, n_lmk, **kw)
        self.block_s = CrossFusionBlock(dim // 4, n_img, n_lmk, **kw)
        n = n_img + n_lmk
        self.upsample_m = nn.ConvTranspose1d(n, n, 2, stride=2)  # m -> l
        self.upsample_s = nn.ConvTranspose1d(n, n, 2, stride=2)  # s -> m

    def forward(self, xs):
        x_l, x_m, x_s = self.block_l(xs[0]), self.block_m(xs[1]), self.block_s(xs[2])
        x_m = x_m + self.upsample_s(x_s)
        x_l = x_l + self.upsample_m(x_m)
        return [x_l, x_m, x_s]


class CrossInteractionPyramid(nn.Module):
    """POSTER/ORSANet pyramid (``HyVisionTransformer`` in the release).

    ``forward(x_img [B,N,D], x_lmk [B,N,D]) -> [B,D]``. ``cls_token`` exists only because the
    release has it (it counts in the parameter total but is never used).
    """

    def __init__(self, num_tokens: int = 49, embed_dim: int = 512, depth: int = 8, num_heads: int = 8,
                 mlp_ratio: float = 2.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, query_projection: bool = False):
        super().__init__()
        if embed_dim % (4 * num_heads):
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 * num_heads ({4 * num_heads})")
        n_img = n_lmk = num_tokens + 1
        n = n_img + n_lmk
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_img, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.downsample_m = nn.Conv1d(n, n, 2, stride=2)
        self.downsample_s = nn.Conv1d(n, n, 4, stride=4)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[
            PyramidBlock(embed_dim, n_img, n_lmk, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i],
                         query_projection=query_projection)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x, x_lm):
        x = torch.cat((x.mean(1, keepdim=True), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x_lm = torch.cat((x_lm.mean(1, keepdim=True), x_lm), dim=1)
        seq = torch.cat((x, x_lm), dim=1)
        out = self.blocks([seq, self.downsample_m(seq), self.downsample_s(seq)])
        return self.norm(out[0])[:, 0]
