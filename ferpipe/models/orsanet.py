"""ORSANet (ACM MM 2025): IR-50 image tokens fused with a segmentation prior (SPADE) and a
landmark prior (cross-interaction pyramid), SE gate, linear head.

Three prior kinds (``priors=``):

``"online"``  (the release) forward(image [B,3,S,S]). The frozen MobileFaceNet (on the image
              nearest-resized to 112) and SegFace Swin-B (stage-4 output before the final norm)
              run inside, on every forward. State-dict keys equal the official checkpoint's.
``"features"`` forward(image, lmk, seg) with cached prior features: lmk [B,lmk_dim,7,7] (or
              tokens [B,49,lmk_dim]), seg [B,seg_dim,7,7]. Default dims 512 / 1024.
``"maps"``    (the paper) forward(image, lmk=landmarks [B,68,2], seg=parsing [B,H,W] long,
              11 LaPa classes; values outside 0..10 count as no class). Landmarks become Gaussian
              heatmaps encoded to 49 tokens; the parsing map is one-hot encoded and downsampled by
              the paper's conv stack 11->64 (stride S/(8*7)) ->128 s2 ->256 s2 ->embed_dim s2.
              ``landmark_units="pixel"`` (default): x, y in pixels of the image passed to
              forward (x right, y down; divided by its width / height); ``"normalized"``: in [0,1].
``"none"``    the ablation "priors switched off": forward(image) only. The same network, with the
              landmark tokens and the segmentation map replaced by learned input-independent
              constants ([49, embed_dim] and [embed_dim, 7, 7]), so SPADE and the cross-attention
              pyramid keep their shape but carry no information about the face.

Release quirks, reproduced by default, each behind a flag:

``raw_view_tokens=True``   The IR-50 map [B,256,14,14] is *viewed* as [B,49,1024]: each token is
              ~5 consecutive channels over all 196 pixels, not a place. False: space-to-depth
              tokens (``pixel_unshuffle`` by 14/7 = 2, so token t is the 2x2 cell (t//7, t%7) with
              all 256 channels of its 4 pixels, 1024 values); same ``ir_layer`` shape, so a
              checkpoint still loads (its semantics differ).
``query_projection=False`` cross-attention queries are the layer-normed landmark tokens, not
              projected. True adds a learned ``q`` Linear.
``frozen_priors_train_mode=True`` (online only) the frozen nets follow ``model.train()`` as in
              the release: MobileFaceNet BN uses batch statistics and updates its running
              statistics; Swin-B stochastic depth (0.5) is active. False keeps them in eval.

CPU presets keep the architecture's shape with smaller numbers: ``embed_dim``, ``depth``,
``num_heads``, ``ir_widths``, ``ir_units``, ``ir_input_size``, ``img_size``, ``lmk_dim``,
``seg_dim``, ``encoder_widths``, ``spade_hidden``. With ``lmk_dim != embed_dim`` a ``lmk_proj``
Linear is added (the release has none, its dims agree). Prior maps whose grid is not 7x7 are
average-pooled (landmark) or nearest-resized (segmentation, inside SPADE) to it.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ferpipe.errors import ConfigError, FerpipeError

from ._checkpoint import LoadReport, load_ir50, load_mobilefacenet, load_segface, orsanet_state_dict
from ._registry import register_model
from .ir50 import IR50
from .mcm import CrossInteractionPyramid
from .mobilefacenet import MobileFaceNet
from .segface import SegFaceSwinB
from .spade import SPADEResBlock

log = logging.getLogger(__name__)

VARIANT_DEPTH = {"small": 4, "base": 6, "large": 8}
PRIOR_KINDS = ("online", "features", "maps", "none")
_OFFICIAL_IR = ((64, 128, 256), (3, 4, 14))


class SEBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, x):
        return x * torch.sigmoid(self.linear2(F.relu(self.linear1(x))))


class ClassificationHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


def _conv_relu(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class LandmarkHeatmapEncoder(nn.Module):
    """68 (x, y) points in [0,1] -> Gaussian heatmaps [B,68,8g,8g] -> conv stack -> [B,D,g,g]."""

    def __init__(self, out_dim: int, grid: int = 7, num_points: int = 68, sigma: float = 1.5,
                 widths: Sequence[int] = (64, 128, 256)):
        super().__init__()
        self.size = grid * 8
        self.sigma = sigma  # in heatmap pixels
        w0, w1, w2 = widths
        self.layers = nn.Sequential(
            _conv_relu(num_points, w0, 1),
            _conv_relu(w0, w1, 2),
            _conv_relu(w1, w2, 2),
            _conv_relu(w2, w2, 2),
            nn.Conv2d(w2, out_dim, 1),
        )

    def heatmaps(self, pts: torch.Tensor) -> torch.Tensor:
        valid = torch.isfinite(pts).all(-1)  # a missing point (NaN) gives an empty map
        pts = torch.nan_to_num(pts, nan=0.0) * self.size  # heatmap pixel units
        centres = torch.arange(self.size, device=pts.device, dtype=pts.dtype) + 0.5
        gx = torch.exp(-((centres[None, None, :] - pts[..., 0:1]) ** 2) / (2 * self.sigma**2))
        gy = torch.exp(-((centres[None, None, :] - pts[..., 1:2]) ** 2) / (2 * self.sigma**2))
        return gy[..., :, None] * gx[..., None, :] * valid[..., None, None]

    def forward(self, pts):
        return self.layers(self.heatmaps(pts))


class SegMapEncoder(nn.Module):
    """One-hot parsing map -> the paper's strided conv stack (SegDownConv) -> [B,D,g,g]."""

    def __init__(self, out_dim: int, img_size: int = 224, grid: int = 7, num_classes: int = 11,
                 widths: Sequence[int] = (64, 128, 256)):
        super().__init__()
        total = img_size // grid
        if total % 8 or total < 8:
            raise ConfigError(f"maps priors need img_size / 7 divisible by 8 (got img_size={img_size})")
        self.num_classes = num_classes
        self.img_size = img_size
        w0, w1, w2 = widths
        # 224: strides 4,2,2,2 (56, 28, 14, 7); 112: 2,2,2,2.
        self.layers = nn.Sequential(
            _conv_relu(num_classes, w0, total // 8), _conv_relu(w0, w1, 2),
            _conv_relu(w1, w2, 2), _conv_relu(w2, out_dim, 2),
        )

    def one_hot(self, parsing: torch.Tensor, dtype) -> torch.Tensor:
        if parsing.shape[-2:] != (self.img_size, self.img_size):
            parsing = F.interpolate(parsing[:, None].float(), size=self.img_size, mode="nearest")[:, 0]
        parsing = parsing.long()
        valid = (parsing >= 0) & (parsing < self.num_classes)
        oh = F.one_hot(parsing.clamp(0, self.num_classes - 1), self.num_classes)
        return (oh * valid[..., None]).permute(0, 3, 1, 2).to(dtype)

    def forward(self, parsing, dtype=torch.float32):
        return self.layers(self.one_hot(parsing, dtype))


def tokenize_ir_map(x: torch.Tensor, grid: int = 7, raw_view: bool = True) -> torch.Tensor:
    """[B,C,H,W] -> [B, grid*grid, C*H*W / grid^2] image tokens.

    ``raw_view=True`` is the release's contiguous-memory view (token t holds flat values
    t*L .. (t+1)*L-1, i.e. a few whole channels, no locality). False is space-to-depth: token
    t = row-major cell (t // grid, t % grid) of an (H/grid x W/grid) patch, all channels.
    """
    b = x.shape[0]
    if raw_view:
        return x.contiguous().view(b, grid * grid, -1)
    return F.pixel_unshuffle(x, x.shape[-1] // grid).flatten(2).transpose(1, 2)


class ORSANet(nn.Module):
    """See the module docstring. ``forward`` returns logits [B, num_classes]."""

    def __init__(
        self,
        num_classes: int = 7,
        depth: int = 8,
        priors: str = "online",
        *,
        img_size: int = 224,
        embed_dim: int = 512,
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ir_widths: Sequence[int] = (64, 128, 256),
        ir_units: Sequence[int] = (3, 4, 14),
        ir_stem_width: int = 64,
        ir_input_size: int | None = 112,
        ir_output_layer: bool | None = None,
        prior_grid: int = 7,
        lmk_dim: int | None = None,
        seg_dim: int | None = None,
        spade_hidden: int = 128,
        raw_view_tokens: bool = True,
        query_projection: bool = False,
        frozen_priors_train_mode: bool = True,
        landmark_input_size: int = 112,
        landmark_units: str = "pixel",
        num_landmarks: int = 68,
        heatmap_sigma: float = 1.5,
        parsing_classes: int = 11,
        encoder_widths: Sequence[int] = (64, 128, 256),
    ):
        super().__init__()
        if priors not in PRIOR_KINDS:
            raise ConfigError(f"priors must be one of {PRIOR_KINDS}, got {priors!r}")
        if landmark_units not in ("pixel", "normalized"):
            raise ConfigError(f"landmark_units must be 'pixel' or 'normalized', got {landmark_units!r}")
        self.priors = priors
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.grid = prior_grid
        self.raw_view_tokens = raw_view_tokens
        self.frozen_priors_train_mode = frozen_priors_train_mode
        self.landmark_input_size = landmark_input_size
        self.landmark_units = landmark_units
        self.expected_inputs = {
            "online": ("image",), "features": ("image", "lmk", "seg"), "maps": ("image", "landmarks", "parsing"),
            "none": ("image",),
        }[priors]

        # Submodules are created in this order (state-dict order and seeded initialisation).
        n_tok = self._build_image_branch(img_size, embed_dim, prior_grid, raw_view_tokens, ir_widths, ir_units,
                                         ir_stem_width, ir_input_size, ir_output_layer)
        self._build_prior_branches(priors, img_size, embed_dim, prior_grid, lmk_dim, seg_dim, num_landmarks,
                                   heatmap_sigma, parsing_classes, encoder_widths)

        self.seg_fusion = SPADEResBlock(embed_dim, embed_dim, embed_dim, spade_hidden)
        self.pyramid_fuse = CrossInteractionPyramid(
            n_tok, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
            drop_path_rate, query_projection,
        )
        self.se_block = SEBlock(embed_dim)
        self.head = ClassificationHead(embed_dim, num_classes)

    def _build_image_branch(self, img_size, embed_dim, prior_grid, raw_view_tokens, ir_widths, ir_units,
                            ir_stem_width, ir_input_size, ir_output_layer) -> int:
        """IR-50 backbone and the linear token embedding; returns the number of tokens."""
        if ir_output_layer is None:
            ir_output_layer = (tuple(ir_widths), tuple(ir_units)) == _OFFICIAL_IR
        self.ir_back = IR50(ir_widths, ir_units, ir_stem_width, ir_input_size, ir_output_layer)
        ir_hw = self.ir_back.output_size(img_size)
        n_tok = prior_grid * prior_grid
        ir_total = ir_widths[-1] * ir_hw * ir_hw
        if ir_total % n_tok or (not raw_view_tokens and ir_hw % prior_grid):
            raise ConfigError(
                f"IR map {ir_widths[-1]}x{ir_hw}x{ir_hw} cannot be cut into {n_tok} tokens"
                + ("" if raw_view_tokens else f" (spatial tokens need {ir_hw} divisible by {prior_grid})")
            )
        self._ir_shape = (ir_widths[-1], ir_hw, ir_hw)
        self.ir_layer = nn.Linear(ir_total // n_tok, embed_dim)
        return n_tok

    def _build_prior_branches(self, priors, img_size, embed_dim, prior_grid, lmk_dim, seg_dim, num_landmarks,
                              heatmap_sigma, parsing_classes, encoder_widths) -> None:
        """The landmark and parsing branches for ``priors`` and their projections to ``embed_dim``."""
        n_tok = prior_grid * prior_grid
        if priors == "online":
            lmk_dim, seg_dim = 512, 1024
            self.face_landback = MobileFaceNet(136)
            self.face_segment = SegFaceSwinB()
            for net in (self.face_landback, self.face_segment):
                net.requires_grad_(False)
        elif priors == "features":
            lmk_dim, seg_dim = lmk_dim or 512, seg_dim or 1024
        elif priors == "none":
            self.lmk_const = nn.Parameter(torch.randn(n_tok, embed_dim) * 0.02)
            self.seg_const = nn.Parameter(torch.randn(embed_dim, prior_grid, prior_grid) * 0.02)
            lmk_dim = seg_dim = None
        else:
            self.lmk_encoder = LandmarkHeatmapEncoder(embed_dim, prior_grid, num_landmarks, heatmap_sigma,
                                                      encoder_widths)
            self.seg_encoder = SegMapEncoder(embed_dim, img_size, prior_grid, parsing_classes, encoder_widths)
            lmk_dim = seg_dim = None
        if seg_dim is not None:
            self.seg_sample = nn.Conv2d(seg_dim, embed_dim, 1)
        if lmk_dim is not None and lmk_dim != embed_dim:
            self.lmk_proj = nn.Linear(lmk_dim, embed_dim)
        self.lmk_dim, self.seg_dim = lmk_dim, seg_dim

    # -- frozen priors -------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.priors == "online" and not self.frozen_priors_train_mode:
            self.face_landback.eval()
            self.face_segment.eval()
        return self

    @torch.no_grad()
    def compute_priors(self, image):
        """The frozen nets' outputs, as cached by the priors stage: (lmk [B,512,7,7], seg [B,1024,7,7])."""
        if self.priors != "online":
            raise ConfigError("compute_priors needs priors='online' (the frozen nets)")
        x112 = image if image.shape[-1] == self.landmark_input_size else F.interpolate(
            image, size=self.landmark_input_size)  # nearest: the even rows and columns at 224
        _, lmk = self.face_landback(x112)
        return lmk, self.face_segment.stage4(image)

    # -- branches --------------------------------------------------------------------------------
    def _image_tokens(self, image):
        x = self.ir_layer(tokenize_ir_map(self.ir_back(image), self.grid, self.raw_view_tokens))
        return x.transpose(1, 2).reshape(x.shape[0], self.embed_dim, self.grid, self.grid)

    def _landmark_tokens(self, lmk):
        if lmk.dim() == 4:
            if lmk.shape[-2:] != (self.grid, self.grid):
                lmk = F.adaptive_avg_pool2d(lmk, self.grid)
            lmk = lmk.flatten(2).transpose(1, 2)
        if hasattr(self, "lmk_proj"):
            lmk = self.lmk_proj(lmk)
        return lmk

    def _maps_priors(self, image, landmarks, parsing):
        pts = landmarks.to(image.dtype)
        if self.landmark_units == "pixel":
            h, w = image.shape[-2:]
            pts = pts / pts.new_tensor([w, h])
        lmk = self.lmk_encoder(pts)
        seg = self.seg_encoder(parsing, image.dtype)
        return lmk, seg

    def forward_features(self, image, lmk=None, seg=None):
        """SE-gated pooled feature [B, embed_dim] (the release's ``y_feat``)."""
        if self.priors == "online":
            lmk, seg = self.compute_priors(image)
        elif self.priors == "none":
            b = image.shape[0]
            lmk = self.lmk_const.expand(b, -1, -1)
            seg = self.seg_const.expand(b, -1, -1, -1)
        elif lmk is None or seg is None:
            raise ValueError(f"ORSANet(priors={self.priors!r}) needs inputs {self.expected_inputs}")
        elif self.priors == "maps":
            lmk, seg = self._maps_priors(image, lmk, seg)
        lmk = lmk.to(image.dtype)
        seg = seg.to(image.dtype)
        if hasattr(self, "seg_sample"):
            seg = self.seg_sample(seg)
        x = self.seg_fusion(self._image_tokens(image), seg)
        x = x.flatten(2).transpose(1, 2)
        return self.se_block(self.pyramid_fuse(x, self._landmark_tokens(lmk)))

    def forward_head(self, features):
        return self.head(features)

    def forward(self, image, lmk=None, seg=None, return_features: bool = False):
        feats = self.forward_features(image, lmk, seg)
        logits = self.head(feats)
        return (logits, feats) if return_features else logits

    # -- weights ---------------------------------------------------------------------------------
    def load_orsanet_checkpoint(self, source) -> LoadReport:
        """Load an official (``model_state_dict``, ``module.`` keys) or ferpipe ORSANet checkpoint.

        With priors='online' the load is strict. Otherwise the frozen nets' keys in the file
        (``face_landback.*``, ``face_segment.*``; in maps mode also ``seg_sample.*``) are
        skipped, and keys of modules the release
        lacks (``lmk_encoder``, ``seg_encoder``, ``lmk_proj``) may be missing; any other
        mismatch is an error.
        """
        state = orsanet_state_dict(source)
        own = self.state_dict()
        skipped = []
        if self.priors != "online":
            # Modules of the release's online prior path that this model replaces.
            release_only = ("face_landback.", "face_segment.", "seg_sample.")
            skipped = [k for k in state if k.startswith(release_only) and k not in own]
            state = {k: v for k, v in state.items() if k not in set(skipped)}
        try:
            result = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise FerpipeError(f"ORSANet checkpoint does not fit this configuration: {exc}") from exc
        own_only = ("lmk_encoder.", "seg_encoder.", "lmk_proj.")
        missing = [k for k in result.missing_keys if not (self.priors != "online" and k.startswith(own_only))]
        if missing or result.unexpected_keys:
            raise FerpipeError(
                f"ORSANet checkpoint does not match this model (priors={self.priors!r}): "
                f"missing {missing[:5]} ({len(missing)}), unexpected {result.unexpected_keys[:5]} "
                f"({len(result.unexpected_keys)})"
            )
        return LoadReport(loaded=len(state), missing=list(result.missing_keys), unexpected=skipped)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@register_model
def orsanet(
    variant: str = "large",
    num_classes: int = 7,
    priors: str = "online",
    checkpoint=None,
    ir_checkpoint=None,
    landmark_checkpoint=None,
    segface_checkpoint=None,
    depth: int | None = None,
    **flags,
) -> ORSANet:
    """ORSANet. ``variant`` small/base/large sets depth 4/6/8 (an explicit ``depth`` wins).

    ``ir_checkpoint`` / ``landmark_checkpoint`` / ``segface_checkpoint``: the pretrained sub-nets
    (ir50.pth, mobilefacenet_model_best.pth.tar, model_299.pt), loaded at construction as the
    release does. ``checkpoint``: a whole ORSANet checkpoint (official train.py format or
    ferpipe's), loaded last. ``flags`` go to :class:`ORSANet`.
    """
    if variant not in VARIANT_DEPTH:
        raise ConfigError(f"ORSANet variant must be one of {sorted(VARIANT_DEPTH)}, got {variant!r}")
    model = ORSANet(num_classes, depth or VARIANT_DEPTH[variant], priors, **flags)
    reports = {}
    if ir_checkpoint is not None:
        reports["ir"] = load_ir50(model.ir_back, ir_checkpoint)
    if landmark_checkpoint is not None or segface_checkpoint is not None:
        if priors != "online":
            raise ConfigError("landmark_checkpoint / segface_checkpoint apply only to priors='online'")
        if landmark_checkpoint is not None:
            reports["landmark"] = load_mobilefacenet(model.face_landback, landmark_checkpoint)
        if segface_checkpoint is not None:
            reports["segface"] = load_segface(model.face_segment, segface_checkpoint)
    if checkpoint is not None:
        reports["orsanet"] = model.load_orsanet_checkpoint(checkpoint)
    model.load_reports = reports
    return model


def _variant(v):
    def factory(**cfg):
        return orsanet(variant=v, **cfg)

    factory.__name__ = f"orsanet_{v}"
    factory.__doc__ = f"ORSANet {v} (depth {VARIANT_DEPTH[v]}); see :func:`orsanet`."
    return factory


for _v in VARIANT_DEPTH:
    register_model(_variant(_v))
