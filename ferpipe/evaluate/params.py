"""The ``evaluate.*`` section of params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ferpipe._schema import StrictModel


class EvaluateParams(StrictModel):
    """Which model is evaluated on which sets, and what is reported (see
    :mod:`ferpipe.evaluate.stage`). Relative paths are under the project root."""

    # A ferpipe training checkpoint (default models/train/<dataset>/best.pt).
    checkpoint: str | None = None
    # Clean shards (default data/priors/<dataset>) and the occlusion stage's output
    # (default data/occlusion/<dataset>).
    shards_dir: str | None = None
    occlusion_dir: str | None = None
    split: str = Field("test", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # a shard split name, never a path
    # Evaluation sets: the clean split, the real subsets (occlusion.subsets) and the
    # synthetic-occlusion set; a set whose inputs are absent is skipped and reported.
    sets: list[Literal["clean", "subsets", "synthetic-occlusion"]] = ["clean", "subsets", "synthetic-occlusion"]
    # Occluded-fraction bin edges of the robustness curve (the last bin includes its right edge).
    fraction_bins: list[float] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0]
    tsne: bool = False
    tsne_max_points: int = Field(2000, ge=10)
    # 95% intervals: Wilson for accuracies; this many seeded (``seed``) bootstrap resamples for
    # mean class accuracy, macro-F1 and the accuracy drop (0: no bootstrap intervals).
    bootstrap_resamples: int = Field(1000, ge=0)
    # Groups and robustness bins with fewer samples are flagged ``few`` (and drawn as such).
    min_group_n: int = Field(30, ge=1)
    # The mistakes gallery: the most confident wrong predictions shown per true class.
    mistakes_per_class: int = Field(4, ge=0)
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(0, ge=0)

    @field_validator("fraction_bins")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if len(v) < 2 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("fraction_bins must be at least two strictly increasing edges")
        return v
