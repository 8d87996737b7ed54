"""The ``priors.*`` and ``prior_nets.*`` sections of params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ferpipe._schema import StrictModel


class PriorsParams(StrictModel):
    """Which priors are cached next to the aligned faces (see :mod:`ferpipe.priors.stage`).

    Model paths are relative to the models directory (``<root>/models``) unless absolute.
    """

    # `features` (faithful to ORSANet's code): frozen feature maps [C,7,7], fp16;
    # `maps` (faithful to the paper): 68 landmark coordinates + an 11-class LaPa parsing map.
    kind: Literal["features", "maps"] = "maps"
    # `ferpipe`: ferpipe's own small prior nets (trained by the prior-nets stage);
    # `official`: MobileFaceNet (mobilefacenet_model_best.pth.tar) + SegFace (model_299.pt);
    # `insightface`: an insightface 106-point landmark ONNX model (maps only);
    # `mtcnn5`: facenet-pytorch's MTCNN 5 points (in its wheel) + a mean face (maps only).
    backend: Literal["ferpipe", "official", "insightface", "mtcnn5"] = "ferpipe"
    # Side of the tensor the priors are computed from: the aligned image, PIL-bilinear
    # resized to it, ImageNet-normalised (ORSANet feeds 224; MobileFaceNet sees its
    # nearest-neighbour 112 subsample, ferpipe's nets a PIL-bilinear 112).
    input_size: int = Field(224, ge=32, le=1024)
    mobilefacenet_checkpoint: str = "pretrain/mobilefacenet_model_best.pth.tar"
    segface_checkpoint: str = "pretrain/model_299.pt"
    prior_nets_dir: str = "prior_nets"
    # A directory holding an insightface model pack (e.g. buffalo_l/); the landmark model in it.
    insightface_dir: str | None = None
    insightface_model: str = "2d106det.onnx"
    batch_size: int = Field(16, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch intra-op threads on the CPU; 0 leaves torch's default.
    threads: int = Field(0, ge=0)
    png_compression: int = Field(6, ge=0, le=9)
    gallery_size: int = Field(12, ge=0, le=200)
    # A real dataset (download.source not 'synthetic') with prior nets trained only on rendered
    # faces is refused unless this is true; the mismatch is then recorded in the shards.
    allow_domain_mismatch: bool = False


class PriorNetsParams(StrictModel):
    """How ferpipe trains its own parser and landmark net (:mod:`ferpipe.priors.training`)."""

    # `synthetic`: a dedicated rendered set (its own seed; never the FER images);
    # `lapa`: a LaPa copy at `lapa_dir` (train|val|test/{images,labels,landmarks}).
    source: Literal["synthetic", "lapa"] = "synthetic"
    lapa_dir: str | None = None
    synthetic_n_per_class: int = Field(100, ge=2)
    synthetic_size: int = Field(256, ge=64)
    synthetic_seed: int = 1000
    synthetic_difficulty: Literal["default", "hard"] = "default"
    synthetic_test_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    # The aligned frame the nets learn: the same template as align (keep margin and
    # aligned_size equal to align.margin / align.output_size), then PIL-bilinear to input_size.
    aligned_size: int = Field(224, ge=32)
    margin: float = Field(0.0, ge=0.0, le=2.0)
    input_size: int = Field(112, ge=32)
    # Random similarity jitter of the 5-point alignment (detector noise), in template units.
    jitter_scale: float = Field(0.05, ge=0.0)
    jitter_rotate_deg: float = Field(6.0, ge=0.0)
    jitter_shift: float = Field(0.04, ge=0.0)
    widths: tuple[int, int, int, int] = (24, 48, 96, 192)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    seed: int = 0
    threads: int = Field(0, ge=0)
    workers: int = Field(2, ge=1)
