"""The ``download.*`` section of params.yaml."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator

from ferpipe._schema import StrictModel


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
    format: Literal["rafdb", "affectnet", "ferplus", "sfew", "occlufer", "imagefolder", "expw",
                    "ckplus"] = Field(
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
    label_space: Literal["basic7", "basic8", "compound11"] = Field(
        "basic7", description="basic7 (RAF-DB order), basic8 (+ contempt) or compound11 (RAF-DB compound)")
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

    # --- dataset variants (issue 14) ---------------------------------------------------------
    rafdb_variant: Literal["auto", "basic", "compound"] = Field(
        "auto", description="RAF-DB basic (labels 1-7) or compound (1-11); auto: by train-name digits")
    class_order: Optional[Union[str, list[str], dict[int, str]]] = Field(
        None, description="numbered ImageFolder class folders: a numbered dataset (rafdb, fer2013, "
                          "affectnet, expw, ckplus), class names for folders 0, 1, ..., or {number: class}")
    ferplus_mode: Literal["majority", "plurality", "probability", "crossentropy"] = Field(
        "majority", description="FERPlus label for the train split (microsoft/FERPlus's modes)")
    ferplus_eval_mode: Literal["majority", "plurality", "probability", "crossentropy"] = Field(
        "majority", description="FERPlus label for val/test (FERPlus's train.py uses majority)")
    folds: int = Field(10, ge=2, le=100, description="ExpW/CK+: seeded folds by photo/subject")
    fold: int = Field(0, ge=0, description="ExpW/CK+: the fold that is the test split")
    ckplus_last_frames: int = Field(3, ge=1, le=20, description="CK+: last frames = the expression")
    ckplus_neutral_first: bool = Field(True, description="CK+: a sequence's first frame as neutral")

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
