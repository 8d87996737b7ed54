"""Landmark and face-parsing priors, computed once and cached next to the aligned faces.

Two prior kinds (``priors.kind``): ``features`` (ORSANet's released code: frozen MobileFaceNet
conv_6_sep [512,7,7] + SegFace Swin-B stage 4 [1024,7,7], fp16) and ``maps`` (the paper: 68
landmarks + an 11-class LaPa parsing map), each for the image and its horizontal flip.
Backends (``priors.backend``): ``official`` checkpoints, ``ferpipe``'s own small nets (trained
by the ``prior-nets`` stage, :mod:`.training`), an ``insightface`` 106-point ONNX model, or
``mtcnn5`` (facenet-pytorch's MTCNN 5 points + a mean face).
"""

from ferpipe.priors.backends import (
    FerpipeBackend,
    InsightfaceBackend,
    Mtcnn5Backend,
    OfficialBackend,
    PriorBackend,
    build_backend,
    model_input,
)
from ferpipe.priors.conventions import (
    IBUG68_FLIP,
    LAPA_FLIP,
    flip_landmarks,
    flip_parsing,
    parsing_from_68,
)
from ferpipe.priors.params import PriorNetsParams, PriorsParams
from ferpipe.priors.stage import (
    PriorsReport,
    gallery_markdown,
    gallery_rows,
    plan_priors,
    priors_gallery,
    priors_shard,
    priors_stage,
    run_priors,
)
from ferpipe.priors.training import PriorNetsReport, prior_nets_stage, run_prior_nets

__all__ = [
    "FerpipeBackend", "IBUG68_FLIP", "InsightfaceBackend", "LAPA_FLIP", "Mtcnn5Backend", "OfficialBackend",
    "PriorBackend", "PriorNetsParams", "PriorNetsReport", "PriorsParams", "PriorsReport",
    "build_backend", "flip_landmarks", "flip_parsing", "gallery_markdown", "gallery_rows",
    "model_input", "parsing_from_68", "plan_priors", "prior_nets_stage", "priors_gallery",
    "priors_shard", "priors_stage", "run_prior_nets", "run_priors",
]
