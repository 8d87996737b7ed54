"""ferpipe's own small prior networks: an 11-class LaPa face parser and a 68-point landmark net.

Both are one design: a plain conv encoder (four stride-2 stages, widths ``w0..w3``, BN+ReLU;
no timm backbone, because on a 2-core CPU timm's ResNet-18 trains ~40x slower per image here)
and a U-Net-style decoder (1x1 lateral projections, nearest upsampling, 3x3 fusion convs).

- parser: decoder to 1/2 resolution, 11 logits, bilinear back to the input size;
- landmarks: decoder to 1/4 resolution, 68 heatmaps, soft-argmax (integral regression) to
  coordinates normalised to [0,1] of the input crop (pixel x = u * size - 0.5).

For the ``features`` prior kind the encoder's last stage is the 7x7 map: [w3, 7, 7] at a 112
input (stride 16), adaptive-average-pooled to 7x7 for other sizes. With the default widths
(24, 48, 96, 192) both ``lmk`` and ``seg`` features have **192 channels**.

Checkpoints (``parser.pt`` / ``landmarks.pt``) are plain dicts loadable with
``torch.load(weights_only=True)``: ``{"format", "arch", "config", "state_dict", "metrics",
"train", "domain"}``; :func:`load_prior_net` reads them (MissingCheckpointError when absent).
``domain`` is what the nets were trained on (``synthetic``, ``lapa``); a checkpoint without
it predates the field and is read as ``synthetic`` (:mod:`ferpipe.priors.domain`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ferpipe.errors import FerpipeError, MissingCheckpointError
from ferpipe.models._registry import register_model
from ferpipe.priors.conventions import NUM_CLASSES, NUM_POINTS

CKPT_FORMAT = "ferpipe-prior-net/1"
PARSER_ARCH = "ferpipe_face_parser"
LANDMARK_ARCH = "ferpipe_landmarks68"
FEATURE_GRID = 7


def _cbr(i: int, o: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o),
                         nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """Four stride-2 stages; returns the maps at strides 2, 4, 8, 16."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        w = list(widths)
        chans = [3] + w
        self.stages = nn.ModuleList(
            nn.Sequential(_cbr(chans[i], chans[i + 1], 2), _cbr(chans[i + 1], chans[i + 1]))
            for i in range(4))
        self.channels = w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return feats


class Decoder(nn.Module):
    """Top-down fusion from stride 16 down to stride ``2 ** (out_level + 1)``.

    ``dim`` channels at strides 16-4, ``dim // 2`` at stride 2 (the parser's last level),
    which is where most of the decoder's cost would otherwise be.
    """

    def __init__(self, in_channels: Sequence[int], dim: int, out_level: int):
        super().__init__()
        self.out_level = out_level
        dims = [dim // 2 if lvl == 0 else dim for lvl in range(len(in_channels))]
        self.dims = dims
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c, d in zip(in_channels, dims))
        self.fuse = nn.ModuleList(_cbr(d, d) for d in dims)
        self.reduce = nn.Conv2d(dims[1], dims[0], 1) if out_level == 0 else nn.Identity()

    @property
    def out_channels(self) -> int:
        return self.dims[self.out_level]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        y = self.fuse[-1](self.lateral[-1](feats[-1]))
        for lvl in range(len(feats) - 2, self.out_level - 1, -1):
            if lvl == 0:
                y = self.reduce(y)
            y = F.interpolate(y, size=feats[lvl].shape[2:], mode="nearest")
            y = self.fuse[lvl](y + self.lateral[lvl](feats[lvl]))
        return y


class PriorNet(nn.Module):
    """``task`` = "parser" (11 LaPa logits at the input size) or "landmarks" (68 points)."""

    def __init__(self, task: str, widths: Sequence[int] = (24, 48, 96, 192),
                 input_size: int = 112, dim: int = 64):
        super().__init__()
        if task not in ("parser", "landmarks"):
            raise ValueError(f"task must be 'parser' or 'landmarks', got {task!r}")
        self.task = task
        self.input_size = int(input_size)
        self.widths = tuple(int(w) for w in widths)
        self.encoder = Encoder(self.widths)
        out_level = 0 if task == "parser" else 1
        self.decoder = Decoder(self.widths, dim, out_level)
        n_out = NUM_CLASSES if task == "parser" else NUM_POINTS
        self.head = nn.Conv2d(self.decoder.out_channels, n_out, 1)
        self.dim = dim

    @property
    def feature_channels(self) -> int:
        return self.widths[-1]

    def config(self) -> dict[str, Any]:
        return {"task": self.task, "widths": list(self.widths), "input_size": self.input_size,
                "dim": self.dim}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(x)
        y = self.head(self.decoder(feats))
        grid = feats[-1]
        if grid.shape[-1] != FEATURE_GRID or grid.shape[-2] != FEATURE_GRID:
            grid = F.adaptive_avg_pool2d(grid, FEATURE_GRID)
        out = {"features": grid}
        if self.task == "parser":
            out["logits"] = F.interpolate(y, size=x.shape[2:], mode="bilinear",
                                          align_corners=False)
        else:
            out["heatmaps"] = y
            out["points"] = soft_argmax(y)
        return out


def soft_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """[B,K,H,W] logits -> [B,K,2] (x, y) in [0,1] of the map (cell centres at (j+0.5)/W)."""
    b, k, h, w = heatmaps.shape
    p = torch.softmax(heatmaps.float().reshape(b, k, h * w), dim=-1).reshape(b, k, h, w)
    xs = (torch.arange(w, dtype=p.dtype, device=p.device) + 0.5) / w
    ys = (torch.arange(h, dtype=p.dtype, device=p.device) + 0.5) / h
    return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], dim=-1)


# --------------------------------------------------------------------------------------------
# checkpoints


_WHAT = {
    PARSER_ARCH: "ferpipe's 11-class LaPa face parser (written by `ferpipe prior-nets`)",
    LANDMARK_ARCH: "ferpipe's 68-point landmark net (written by `ferpipe prior-nets`)",
}


_TIMING_KEYS = ("seconds", "images_per_second")


def save_prior_net(model: PriorNet, path: str | os.PathLike, metrics: Mapping[str, Any],
                   train: Mapping[str, Any], domain: str | None = None) -> None:
    from ferpipe.shards import _jsonable, atomic_file  # noqa: PLC0415

    arch = PARSER_ARCH if model.task == "parser" else LANDMARK_ARCH
    obj = {"format": CKPT_FORMAT, "arch": arch, "config": model.config(),
           "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
           "metrics": _jsonable(dict(metrics)),
           # Timings stay in metrics.json: the checkpoint's bytes must depend on the training
           # only, so an identical rerun leaves the priors stage (its dependant) untouched.
           "train": _jsonable({k: v for k, v in train.items() if k not in _TIMING_KEYS})}
    if domain is not None:
        obj["domain"] = str(domain)
    with atomic_file(path) as f:
        torch.save(obj, f)


def load_prior_net(path: str | os.PathLike, arch: str) -> PriorNet:
    """Load ``parser.pt`` / ``landmarks.pt`` (eval mode). Missing file: MissingCheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(path, what=_WHAT[arch] + "; run `ferpipe prior-nets` to "
                                     "train it, or use priors.backend=official",
                                     where="models/prior_nets/")
    from ferpipe.safe_load import read_weights_only  # noqa: PLC0415

    obj = read_weights_only(path, _WHAT[arch])
    if not isinstance(obj, Mapping) or obj.get("format") != CKPT_FORMAT or obj.get("arch") != arch:
        raise FerpipeError(f"{path} is not a {arch} checkpoint in format {CKPT_FORMAT} "
                           f"(found format {obj.get('format') if isinstance(obj, Mapping) else None!r}, "
                           f"arch {obj.get('arch') if isinstance(obj, Mapping) else None!r})")
    cfg = dict(obj["config"])
    model = PriorNet(cfg["task"], cfg["widths"], cfg["input_size"], cfg.get("dim", 64))
    model.load_state_dict(obj["state_dict"], strict=True)
    model.metrics = dict(obj.get("metrics", {}))
    from ferpipe.priors.domain import LEGACY_DOMAIN  # noqa: PLC0415

    model.domain_recorded = isinstance(obj.get("domain"), str)
    model.domain = obj["domain"] if model.domain_recorded else LEGACY_DOMAIN
    return model.eval()


def _register_prior_net(arch: str, task: str, file_name: str) -> None:
    """Register ``arch``: a fresh net of ``task``, or (``checkpoint``) the one `ferpipe prior-nets` wrote."""

    def factory(checkpoint=None, widths=(24, 48, 96, 192), input_size: int = 112) -> PriorNet:
        if checkpoint is not None:
            return load_prior_net(checkpoint, arch)
        return PriorNet(task, widths, input_size)

    factory.__name__ = factory.__qualname__ = arch
    factory.__doc__ = f"{_WHAT[arch]}; ``checkpoint``: a ``{file_name}`` from `ferpipe prior-nets`."
    register_model(factory, name=arch)


_register_prior_net(PARSER_ARCH, "parser", "parser.pt")
_register_prior_net(LANDMARK_ARCH, "landmarks", "landmarks.pt")
