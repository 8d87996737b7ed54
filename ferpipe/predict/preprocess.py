"""Raw RGB frames -> aligned faces -> the network's input tensors, exactly as at training.

Every step calls the function the pipeline stage itself calls, with the params the checkpoint
recorded:

1. detection copy (:func:`ferpipe.align.decode.detection_image`), batched MTCNN
   (:class:`ferpipe.align.detect.FaceDetector`), back to source coordinates, ``min_score``;
2. the face the align stage would keep (:func:`ferpipe.align.detect.choose_face`) is marked
   ``chosen``; every face above ``min_score`` is aligned and predicted (one row per face);
3. 5-point similarity onto the template (:mod:`ferpipe.align.warp`), ``no_face: center_crop``
   and ``method: passthrough`` as in the stage;
4. the crop is JPEG-encoded at ``align.jpeg_quality`` and decoded again (the shards store JPEG:
   the priors and the network only ever saw the decoded crop);
5. priors by the recorded backend (:func:`ferpipe.priors.backends.build_backend`, prior nets
   sha256-checked), view 0 (no flip);
6. the trainer's own evaluation transform (:func:`ferpipe.train.data.transform_sample`:
   resize, normalisation, priors scaling) and collate.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ferpipe import shards as _shards
from ferpipe.align import decode as _decode
from ferpipe.align import warp as _warp
from ferpipe.predict.recipe import Recipe, check_prior_checkpoints

POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Face:
    """One face of one frame, in source-image pixel coordinates."""

    index: int
    box: np.ndarray | None          # x1, y1, x2, y2
    score: float | None
    points: np.ndarray | None       # (5, 2)
    chosen: bool                    # the face the align stage would have kept
    method: str                     # mtcnn | center_crop | passthrough
    crop: np.ndarray | None = None  # aligned RGB crop (after the JPEG round trip)
    jpg: bytes = b""


@dataclass
class FrameFaces:
    faces: list[Face] = field(default_factory=list)
    status: str = "ok"              # ok | no_face
    detail: str = ""


class Preprocessor:
    """Holds the detector and the prior backend for one recipe."""

    def __init__(self, recipe: Recipe, models_dir: str | Path, device: str = "cpu"):
        self.recipe = recipe
        self.align = recipe.align.model_copy(update={"device": device})
        if self.align.method == "similarity" and self.align.points != "mtcnn":
            # New photos carry no dataset landmarks: MTCNN finds the 5 points, as for the rows of
            # the training set that had none (points=auto) or, with points=dataset, never.
            warnings.warn(f"{recipe.source}: trained with align.points={self.align.points!r}; on new photos the "
                          f"5 points come from MTCNN", stacklevel=2)
        self.aug = recipe.augment()
        self._detector = None
        self.backend = None
        if recipe.prior_kind != "none":
            from ferpipe.priors.backends import build_backend  # noqa: PLC0415

            pp = recipe.priors.model_copy(update={"device": device})
            self.backend = build_backend(pp, models_dir)
            check_prior_checkpoints(recipe, self.backend.describe())

    @property
    def detector(self):
        if self._detector is None:
            from ferpipe.align.detect import FaceDetector  # noqa: PLC0415

            self._detector = FaceDetector(self.align)
        return self._detector

    # -- faces -----------------------------------------------------------------------------------

    def faces(self, frames: Sequence[np.ndarray]) -> list[FrameFaces]:
        """Detect and align the faces of RGB uint8 frames (any sizes)."""
        from ferpipe.align.detect import choose_face  # noqa: PLC0415

        p = self.align
        if p.method == "passthrough":
            return [FrameFaces([self._finish(Face(0, None, None, None, True, "passthrough"), f,
                                             _warp.resize_matrix(f.shape[1], f.shape[0], p.output_size))])
                    for f in frames]
        dets_in, scales = [], []
        for f in frames:
            d, s = _decode.detection_image(f, p.detect_max_side, p.detect_min_side)
            dets_in.append(d)
            scales.append(s)
        dets = self.detector.detect(dets_in)
        tpl = _warp.template(p.output_size, p.margin)
        out = []
        for f, det, s in zip(frames, dets, scales):
            h, w = f.shape[:2]
            det = det.scaled(*s).filtered(p.min_score)
            k = choose_face(det, w, h, p)
            ff = FrameFaces()
            for i in range(len(det)):
                pts = det.points[i].astype(np.float64)
                face = Face(i, det.boxes[i].astype(np.float64), float(det.scores[i]), pts, i == k, "mtcnn")
                try:
                    m = _warp.estimate_similarity(pts, tpl, p.estimator)
                except _warp.AlignError as e:
                    face.method, ff.detail = "bad_points", str(e)
                    ff.faces.append(face)
                    continue
                ff.faces.append(self._finish(face, f, m))
            if not any(x.crop is not None for x in ff.faces):
                ff.status = "no_face"
                ff.detail = ff.detail or f"no face with score >= {p.min_score}"
                if p.no_face == "center_crop":
                    # The stage keeps a centre square of such an image; so do we, flagged.
                    ff.faces.append(self._finish(Face(len(ff.faces), None, None, None, True, "center_crop"), f,
                                                 _warp.center_crop_matrix(w, h, p.output_size)))
            out.append(ff)
        return out

    def _finish(self, face: Face, rgb: np.ndarray, m: np.ndarray) -> Face:
        from ferpipe.align.stage import _encode_jpeg  # noqa: PLC0415  (the stage's own encoder)

        size = self.align.output_size
        crop = _warp.resize(rgb, size) if face.method == "passthrough" else _warp.warp(rgb, m, size)
        face.jpg = _encode_jpeg(crop, self.align.jpeg_quality)
        # As the priors stage reads the aligned shard: PIL, RGB.
        face.crop = np.asarray(Image.open(io.BytesIO(face.jpg)).convert("RGB"))
        return face

    # -- network inputs --------------------------------------------------------------------------

    def samples(self, faces: Sequence[Face]) -> list[dict[str, Any]]:
        """Shard-format samples (what the priors stage writes) for aligned faces."""
        crops = [f.crop for f in faces]
        samples = [{"__key__": f"face{i}", "jpg": f.jpg, "cls": "0"} for i, f in enumerate(faces)]
        if not faces or self.recipe.prior_kind == "none":
            return samples
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(crops):
            groups.setdefault(c.shape, []).append(i)
        for idx in groups.values():
            batch = [crops[i] for i in idx]
            if self.recipe.prior_kind == "features":
                lmk, seg = self.backend.features(batch)
                for j, i in enumerate(idx):
                    samples[i]["lmk.npy"] = _shards.encode_npy(lmk[j][None].astype(np.float16))
                    samples[i]["seg.npy"] = _shards.encode_npy(seg[j][None].astype(np.float16))
            else:
                pts, parsing = self.backend.maps(batch)
                for j, i in enumerate(idx):
                    samples[i]["landmarks.npy"] = _shards.encode_npy(pts[j][None].astype(np.float32))
                    samples[i]["parsing.png"] = _shards.encode_png(parsing[j], 1)  # lossless at any level
        return samples

    def tensors(self, faces: Sequence[Face]):
        """(image [N,3,S,S] float32, priors tuple) through the trainer's evaluation transform."""
        from ferpipe.train import data as D  # noqa: PLC0415

        batch = D.collate([D.transform_sample(s, self.aug) for s in self.samples(faces)])
        return batch["image"], tuple(batch["priors"])
