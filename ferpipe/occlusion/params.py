"""The ``occlusion.*`` section of params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ferpipe._schema import StrictModel

OccluderName = Literal["sunglasses", "eye_bar", "medical_mask", "scarf", "hand", "hair_strands",
                       "object", "block", "shadow"]
ALL_OCCLUDERS: tuple[str, ...] = ("sunglasses", "eye_bar", "medical_mask", "scarf", "hand",
                                  "hair_strands", "object", "block", "shadow")

SubsetFormat = Literal["ran-rafdb-occlusion", "ran-rafdb-pose", "ran-ferplus-occlusion",
                       "ran-ferplus-pose", "ran-affectnet-occlusion", "ran-affectnet-pose"]


class SubsetListParams(StrictModel):
    """One real evaluation subset given as a list file (RAN's challenge lists).

    ``path`` (and ``label_file``) are relative to ``data/raw/<dataset>`` unless absolute.
    """

    name: str                      # e.g. occlusion-rafdb, pose30-rafdb (the metrics key)
    format: SubsetFormat
    path: str
    label_file: str | None = None  # pose lists' "_label.txt" (header "N C", then N labels)


class OcclusionParams(StrictModel):
    """The synthetic-occlusion test set and the real occlusion/pose subsets
    (see :mod:`ferpipe.occlusion.stage`)."""

    # Which shards are occluded: data/<source_stage>/<dataset>/<split>-*.tar (priors format).
    source_stage: str = "priors"
    split: str = "test"
    seed: int = 0
    # Occluder types drawn (uniformly per sample, from its own seed).
    occluders: list[OccluderName] = Field(default_factory=lambda: list(ALL_OCCLUDERS))
    # Occluded copies per clean image: 1 keeps the clean key; more append _v<i>.
    variants: int = Field(1, ge=1, le=16)
    jpeg_quality: int = Field(95, ge=50, le=100)
    png_compression: int = Field(6, ge=0, le=9)
    # A pixel counts as covered when the occluder's opacity there is at least this.
    cover_alpha: float = Field(0.5, gt=0.0, le=1.0)
    # A facial region is listed as covered when at least this fraction of its pixels is.
    region_threshold: float = Field(0.3, gt=0.0, le=1.0)
    gallery_size: int = Field(18, ge=0, le=200)
    # Real subsets (evaluation only); their keys must all be in the `split` of the manifest.
    subsets: list[SubsetListParams] = Field(default_factory=list)
