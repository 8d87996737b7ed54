"""Landmark and face-parsing priors, computed once and cached next to the aligned faces.

Two prior kinds (``priors.kind``): ``features`` (ORSANet's released code: frozen MobileFaceNet
conv_6_sep [512,7,7] + SegFace Swin-B stage 4 [1024,7,7], fp16) and ``maps`` (the paper: 68
landmarks + an 11-class LaPa parsing map), each for the image and its horizontal flip.
Backends (``priors.backend``): ``official`` checkpoints, ``ferpipe``'s own small nets (trained
by the ``prior-nets`` stage, :mod:`.training`), an ``insightface`` 106-point ONNX model, or
``mtcnn5`` (facenet-pytorch's MTCNN 5 points + a mean face).
"""

from ferpipe._lazy import lazy_exports

# Loaded on first use: importing ferpipe.priors.params must not import torch.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "backends": ["FerpipeBackend", "InsightfaceBackend", "Mtcnn5Backend", "OfficialBackend", "PriorBackend", "build_backend",
                 "model_input"],
    "conventions": ["IBUG68_FLIP", "LAPA_FLIP", "flip_landmarks", "flip_parsing", "parsing_from_68"],
    "params": ["PriorNetsParams", "PriorsParams"],
    "stage": ["PriorsReport", "gallery_markdown", "gallery_rows", "plan_priors", "priors_gallery", "priors_shard",
              "priors_stage", "PRIORS", "priors_job"],
    "training": ["PRIOR_NETS", "PriorNetsReport", "prior_nets_stage"],
})
