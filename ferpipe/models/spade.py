"""SPADE fusion (Park et al. 2019) as ORSANet uses it to inject the segmentation prior.

SPADE(h, s) = IN(h) * (1 + gamma(s)) + beta(s), with affine-free instance norm and gamma/beta
predicted by a shared conv3x3 + ReLU trunk. The residual block is
out = shortcut(x) + conv1(lrelu(SPADE1(conv0(lrelu(SPADE0(x, s))), s))), convs spectral-normed
(torch ``spectral_norm``: keys ``weight_orig/_u/_v``, matching the release).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


class SPADE(nn.Module):
    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, kernel: int = 3):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        pad = kernel // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel, padding=pad)

    def forward(self, x, segmap):
        if segmap.shape[2:] != x.shape[2:]:
            segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap.to(x.dtype))
        return self.param_free_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    """SPADE residual block; a learned (SPADE + 1x1 conv) shortcut only when fin != fout."""

    def __init__(self, fin: int, fout: int, semantic_nc: int, hidden: int = 128, spectral: bool = True):
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        wrap = spectral_norm if spectral else (lambda m: m)
        self.conv_0 = wrap(nn.Conv2d(fin, fmid, 3, padding=1))
        self.conv_1 = wrap(nn.Conv2d(fmid, fout, 3, padding=1))
        self.norm_0 = SPADE(fin, semantic_nc, hidden)
        self.norm_1 = SPADE(fmid, semantic_nc, hidden)
        if self.learned_shortcut:
            self.conv_s = wrap(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = SPADE(fin, semantic_nc, hidden)

    def forward(self, x, seg):
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return shortcut + dx
