"""Where each stage reads and writes, relative to a project root.

One place for the directory conventions of DESIGN.md, so dvc.yaml, the stages, the flows and
the tests agree. Every path is derived from the root and the dataset name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def downloads(self) -> Path:
        """Archives as fetched or rendered (kept between runs so a download resumes)."""
        return self.data / "downloads"

    def raw(self, dataset: str) -> Path:
        return self.data / "raw" / dataset

    def manifest(self, dataset: str) -> Path:
        return self.data / "manifests" / f"{dataset}.parquet"

    def shards(self, stage: str, dataset: str) -> Path:
        return self.data / stage / dataset

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def stage_report(self, stage: str, dataset: str) -> Path:
        return self.reports / stage / f"{dataset}.json"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def ground_truth(self, dataset: str) -> Path:
        """A dataset's own ground truth (landmarks, parsing maps), when it ships one: kept inside
        the raw copy, a DVC out (the embedded synthetic set's is copied there by download)."""
        return self.raw(dataset) / "ferpipe-groundtruth.zip"
