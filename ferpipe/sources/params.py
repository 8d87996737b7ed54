"""The ``download.*`` section of params.yaml."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from ferpipe._schema import StrictModel

DATASET_FORMATS = ("rafdb", "affectnet", "ferplus", "sfew", "occlufer", "imagefolder")


class SyntheticParams(StrictModel):
    """The embedded default dataset (``download.source: synthetic``)."""

    n_per_class: int = Field(300, ge=2, le=100_000, description="images per expression class")
    size: int = Field(256, ge=64, le=1024, description="image side in pixels")
    seed: int = Field(0, ge=0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="RAF-DB's 80/20 train/test split")
    workers: int = Field(2, ge=1, le=64, description="render processes; output does not depend on it")
    difficulty: Literal["default", "hard"] = Field(
        "default", description="hard: weaker expressions, stronger pose, heavier noise and compression")


class DownloadParams(StrictModel):
    dataset: str = Field(
        "synthetic",
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="name used for data/raw/<dataset>, the manifest and every later shard directory",
    )
    format: Literal["rafdb", "affectnet", "ferplus", "sfew", "occlufer", "imagefolder"] = Field(
        "rafdb", description="which dataset reader parses the raw copy"
    )
    source: str = Field(
        "synthetic",
        min_length=1,
        description="'synthetic', a local directory, a local archive (zip/tar/tar.gz), or an http(s) URL",
    )
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-f]{64}$", description="expected sha256 of an archive/URL")
    password_env: Optional[str] = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="environment variable holding a zip password"
    )
    label_space: Literal["basic7", "basic8"] = "basic7"
    rafdb_images: Literal["original", "aligned"] = "original"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="val carved from train when a set has none")
    seed: int = Field(0, ge=0)
    max_unpacked_gb: float = Field(64.0, gt=0.0, description="refuse archives that unpack to more than this")
    max_image_pixels: int = Field(
        100_000_000, ge=1024, description="larger images are listed as decompression bombs and skipped"
    )
    retries: int = Field(5, ge=0, le=50, description="http download attempts after the first")
    workers: int = Field(2, ge=1, le=64, description="processes decoding images for the manifest")
    synthetic: SyntheticParams = SyntheticParams()

    @field_validator("source")
    @classmethod
    def _no_other_schemes(cls, value: str) -> str:
        if "://" in value and not value.startswith(("http://", "https://")):
            raise ValueError("only http(s) URLs, local paths or 'synthetic' are supported")
        if value.startswith(("http://", "https://")):
            from urllib.parse import urlsplit  # noqa: PLC0415

            parts = urlsplit(value)
            if not parts.hostname:
                raise ValueError("the URL has no host")
            if any(seg in (".", "..") for seg in parts.path.split("/")):
                raise ValueError("the URL's path has a '.' or '..' segment; give the file's own URL")
        return value
