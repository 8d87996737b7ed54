"""Where occluders go: from the data alone, never from a trained network.

An evaluation set must not move when a network is retrained (prior nets trained on another CPU
give other float results, and the test set would change with them). So the synthetic-occlusion
set places its occluders, and measures the regions they cover, from the first of these a sample
has; none comes from a model's output:

1. ``groundtruth``: the dataset's own ground-truth 68 points and parsing map (the embedded
   synthetic set ships them: ``Layout.ground_truth``, in the raw copy), mapped into the
   aligned image by the align stage's recorded ``matrix``;
2. ``dataset-68``: the dataset's annotated 68 points: in aligned pixels with the aligned sample
   (``points68_aligned``), or a manifest ``landmarks`` column of 68 iBUG points (136 values, source
   pixels) through the align ``matrix``;
3. ``dataset-5``: the dataset's annotated 5 points (the manifest's ``landmarks5``) through the
   align ``matrix``;
4. ``aligned-5``: the 5 points the sample was aligned on (``points_aligned``).

Without a ground-truth parsing map the regions are measured on a coarse map rasterised from the
points (:func:`ferpipe.occlusion.face.approx_parsing`). Each sample records which source placed it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ferpipe.shards import sha256_file

@dataclass(frozen=True)
class Placement:
    parsing: np.ndarray | None       # HxW LaPa-order map in aligned pixels
    landmarks68: np.ndarray | None   # (68, 2) aligned pixels
    points5: np.ndarray | None       # (5, 2) aligned pixels
    geometry_source: str             # groundtruth | dataset-68 | dataset-5 | aligned-5
    parsing_source: str              # groundtruth | approximated-from-points


def _matrix(meta: Mapping[str, Any]) -> np.ndarray | None:
    m = meta.get("matrix")
    if m is None:
        return None
    a = np.asarray(m, np.float64)
    return a if a.shape == (2, 3) and np.isfinite(a).all() else None


def _points(v: Any, n: int) -> np.ndarray | None:
    if v is None:
        return None
    a = np.asarray(v, np.float64).reshape(-1)
    return a.reshape(n, 2) if a.size == 2 * n and np.isfinite(a).all() else None


def _source_name(meta: Mapping[str, Any]) -> str | None:
    src = meta.get("source")
    path = src.get("path") if isinstance(src, Mapping) else src
    return Path(str(path)).name if path else None


class PlacementSource:
    """``placement(meta, shape) -> Placement`` for the samples of one dataset.

    ``ground_truth``: a ground-truth zip as the synthetic renderer writes it (or None);
    ``manifest``: the dataset's manifest (its ``landmarks5`` column), or None. Both are read on
    first use and dropped when pickled (a flow ships this object to its tasks)."""

    def __init__(self, ground_truth: str | os.PathLike | None = None, manifest: str | os.PathLike | None = None):
        self.ground_truth = Path(ground_truth) if ground_truth and Path(ground_truth).is_file() else None
        self.manifest = Path(manifest) if manifest and Path(manifest).is_file() else None
        self._gt: dict | None = None
        self._points: dict[int, dict[str, np.ndarray]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_gt": None, "_points": None}

    def describe(self) -> dict[str, Any]:
        """What identifies the placements (goes into the shards' fingerprint)."""
        return {"ground_truth": sha256_file(self.ground_truth) if self.ground_truth else None,
                "manifest": sha256_file(self.manifest) if self.manifest else None}

    def _ground_truth(self) -> dict:
        if self._gt is None:
            self._gt = {}
            if self.ground_truth is not None:
                from ferpipe.sources.synthetic import load_ground_truth  # noqa: PLC0415

                self._gt = load_ground_truth(self.ground_truth)
        return self._gt

    def _dataset_points(self, n: int) -> dict[str, np.ndarray]:
        """key -> the manifest's ``n``-point landmarks in source pixels (68: ``landmarks``,
        5: ``landmarks5``)."""
        if self._points is None:
            self._points = {68: {}, 5: {}}
            if self.manifest is not None:
                import pyarrow.parquet as pq  # noqa: PLC0415

                names = pq.read_schema(self.manifest).names
                for count, col in ((68, "landmarks"), (5, "landmarks5")):
                    if col in names:
                        t = pq.read_table(self.manifest, columns=["key", col]).to_pydict()
                        for k, v in zip(t["key"], t[col]):
                            p = _points(v, count)
                            if p is not None:
                                self._points[count][str(k)] = p
        return self._points[n]

    def __call__(self, meta: Mapping[str, Any], shape: tuple[int, int]) -> Placement:
        import cv2  # noqa: PLC0415

        from ferpipe.align.warp import transform_points  # noqa: PLC0415

        m = _matrix(meta)
        name = _source_name(meta)
        gt = self._ground_truth().get(name) if name else None
        if gt is not None and m is not None:
            h, w = shape
            parsing = cv2.warpAffine(gt.parsing, m, (w, h), flags=cv2.INTER_NEAREST,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            return Placement(parsing, transform_points(gt.points68, m), None, "groundtruth", "groundtruth")
        key = str(meta.get("key", ""))
        p68 = _points(meta.get("points68_aligned"), 68)
        if p68 is None and m is not None and key in self._dataset_points(68):
            p68 = transform_points(self._dataset_points(68)[key], m)
        if p68 is not None:
            return Placement(None, p68, None, "dataset-68", "approximated-from-points")
        lm5 = self._dataset_points(5).get(key)
        if lm5 is not None and m is not None:
            return Placement(None, None, transform_points(lm5, m), "dataset-5", "approximated-from-points")
        p5 = _points(meta.get("points_aligned"), 5)
        if p5 is not None:
            return Placement(None, None, p5, "aligned-5", "approximated-from-points")
        raise ValueError("no ground truth, dataset landmarks or aligned 5 points to place an occluder on")


def placement_source(layout, dataset: str) -> PlacementSource:
    """The dataset's placement source under a project ``layout``."""
    return PlacementSource(layout.ground_truth(dataset), layout.manifest(dataset))
