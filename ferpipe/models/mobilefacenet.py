"""MobileFaceNet 68-point landmark regressor (cunjian/pytorch_face_landmark), GDC head.

Input: 112x112, ImageNet-normalised. ``forward`` returns ``(landmarks [B,136], conv_6_sep
features [B,512,7,7])``; ORSANet's landmark prior is the second. Layer names follow the
checkpoint so ``mobilefacenet_model_best.pth.tar`` loads strictly.
"""

from __future__ import annotations

from torch import nn

from ._checkpoint import load_mobilefacenet
from ._registry import register_model


class ConvBlock(nn.Module):
    """conv (no bias) + BN, then PReLU unless ``linear``."""

    def __init__(self, in_c, out_c, kernel=1, stride=1, padding=0, groups=1, linear=False):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = None if linear else nn.PReLU(out_c)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``groups`` channels, depthwise 3x3, linear 1x1 project."""

    def __init__(self, in_c, out_c, groups, stride=1, residual=False):
        super().__init__()
        self.conv = ConvBlock(in_c, groups)
        self.conv_dw = ConvBlock(groups, groups, 3, stride, 1, groups=groups)
        self.project = ConvBlock(groups, out_c, linear=True)
        self.residual = residual

    def forward(self, x):
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, c, num_block, groups):
        super().__init__()
        self.model = nn.Sequential(*[DepthWise(c, c, groups, 1, residual=True) for _ in range(num_block)])

    def forward(self, x):
        return self.model(x)


class GDC(nn.Module):
    """Global depthwise 7x7 conv, then a linear layer to the embedding (136 = 68 x,y)."""

    def __init__(self, embedding_size: int):
        super().__init__()
        self.conv_6_dw = ConvBlock(512, 512, 7, 1, 0, groups=512, linear=True)
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x):
        return self.bn(self.linear(self.conv_6_dw(x).flatten(1)))


class MobileFaceNet(nn.Module):
    def __init__(self, embedding_size: int = 136):
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBlock(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = DepthWise(64, 64, 128, stride=2)
        self.conv_3 = Residual(64, 4, 128)
        self.conv_34 = DepthWise(64, 128, 256, stride=2)
        self.conv_4 = Residual(128, 6, 256)
        self.conv_45 = DepthWise(128, 128, 512, stride=2)
        self.conv_5 = Residual(128, 2, 256)
        self.conv_6_sep = ConvBlock(128, 512)
        self.output_layer = GDC(embedding_size)

    def forward_features(self, x):
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        return self.conv_6_sep(x)

    def forward(self, x):
        feats = self.forward_features(x)
        return self.output_layer(feats), feats


@register_model
def mobilefacenet(checkpoint=None, embedding_size: int = 136) -> MobileFaceNet:
    """MobileFaceNet landmark net. ``checkpoint``: strict load from ``['state_dict']``."""
    model = MobileFaceNet(embedding_size)
    if checkpoint is not None:
        model.load_report = load_mobilefacenet(model, checkpoint)
    return model
