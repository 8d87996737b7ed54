"""Landmark and face-parsing priors, computed once and cached next to the aligned faces.

Two prior kinds (``priors.kind``): ``features`` (ORSANet's released code: frozen MobileFaceNet
conv_6_sep [512,7,7] + SegFace Swin-B stage 4 [1024,7,7], fp16) and ``maps`` (the paper: 68
landmarks + an 11-class LaPa parsing map), each for the image and its horizontal flip.
Backends (``priors.backend``): ``official`` checkpoints, ``ferpipe``'s own small nets (trained
by the ``prior-nets`` stage, :mod:`.training`), or an ``insightface`` 106-point ONNX model.
"""

from ferpipe._lazy import lazy_exports

# Loaded on first use (ferpipe._lazy): reading params.yaml must not import this stage's dependencies.
_EXPORTS = {
    "FerpipeBackend": "backends", "IBUG68_FLIP": "conventions", "InsightfaceBackend": "backends",
    "LAPA_FLIP": "conventions", "OfficialBackend": "backends", "PriorBackend": "backends",
    "PriorNetsParams": "params", "PriorNetsReport": "training", "PriorsParams": "params",
    "PriorsReport": "stage", "build_backend": "backends", "flip_landmarks": "conventions",
    "flip_parsing": "conventions", "gallery_markdown": "stage", "gallery_rows": "stage",
    "model_input": "backends", "parsing_from_68": "conventions", "plan_priors": "stage",
    "prior_nets_stage": "training", "priors_gallery": "stage", "priors_shard": "stage",
    "priors_stage": "stage", "run_prior_nets": "training", "run_priors": "stage",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
