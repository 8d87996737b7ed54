"""Landmark and face-parsing priors, computed once and cached next to the aligned faces.

Two prior kinds (``priors.kind``): ``features`` (ORSANet's released code: frozen MobileFaceNet
conv_6_sep [512,7,7] + SegFace Swin-B stage 4 [1024,7,7], fp16) and ``maps`` (the paper: 68
landmarks + an 11-class LaPa parsing map), each for the image and its horizontal flip.
Backends (``priors.backend``): ``official`` checkpoints, ``ferpipe``'s own small nets (trained
by the ``prior-nets`` stage, :mod:`.training`), or an ``insightface`` 106-point ONNX model.
"""

from __future__ import annotations

import importlib
from typing import Any

from ferpipe.priors.params import PriorNetsParams, PriorsParams

# The rest loads on first use: reading params.yaml (which needs only the params classes above)
# must not import torch and the prior nets.
_LAZY = {
    "ferpipe.priors.backends": ("FerpipeBackend", "InsightfaceBackend", "OfficialBackend", "PriorBackend",
                                "build_backend", "model_input"),
    "ferpipe.priors.conventions": ("IBUG68_FLIP", "LAPA_FLIP", "flip_landmarks", "flip_parsing",
                                   "parsing_from_68"),
    "ferpipe.priors.stage": ("PriorsReport", "gallery_markdown", "gallery_rows", "plan_priors",
                             "priors_gallery", "priors_shard", "priors_stage", "run_priors"),
    "ferpipe.priors.training": ("PriorNetsReport", "prior_nets_stage", "run_prior_nets"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "FerpipeBackend", "IBUG68_FLIP", "InsightfaceBackend", "LAPA_FLIP", "OfficialBackend",
    "PriorBackend", "PriorNetsParams", "PriorNetsReport", "PriorsParams", "PriorsReport",
    "build_backend", "flip_landmarks", "flip_parsing", "gallery_markdown", "gallery_rows",
    "model_input", "parsing_from_68", "plan_priors", "prior_nets_stage", "priors_gallery",
    "priors_shard", "priors_stage", "run_prior_nets", "run_priors",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ferpipe.priors' has no attribute {name!r}")
