"""5-point similarity alignment onto the ArcFace template, centre crops and resizes."""

from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

# ArcFace's 5-point template for 112x112 crops: eyes, nose tip, mouth corners (x, y).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


class AlignError(ValueError):
    """The points do not define a usable similarity (degenerate or non-finite)."""


def template(output_size: int, margin: float = 0.0) -> np.ndarray:
    """The template scaled to ``output_size``; ``margin`` shrinks it towards the centre by
    ``1 / (1 + margin)`` so the crop keeps more of the surroundings."""
    pts = ARCFACE_112 * (output_size / 112.0)
    c = output_size / 2.0
    return c + (pts - c) / (1.0 + margin)


def estimate_similarity(src: np.ndarray, dst: np.ndarray, estimator: str = "lstsq") -> np.ndarray:
    """2x3 matrix of the similarity taking ``src`` points onto ``dst``."""
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise AlignError("non-finite landmark coordinates")
    if estimator == "lstsq":
        tf = SimilarityTransform.from_estimate(src, dst)
        if not tf:
            raise AlignError(f"similarity estimate failed: {tf}")
        m = tf.params[:2].copy()
    elif estimator == "lmeds":
        m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
        if m is None:
            raise AlignError("estimateAffinePartial2D found no similarity")
    else:
        raise ValueError(f"unknown estimator {estimator!r}")
    scale = math.hypot(m[0, 0], m[1, 0])
    if not np.isfinite(m).all() or scale < 1e-6:
        raise AlignError(f"degenerate similarity (scale {scale:g})")
    return m


def transform_points(pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]


def warp(rgb: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Apply the 2x3 ``m`` (source -> output pixels) to get a ``size`` x ``size`` crop.

    A strong downscale would alias with warpAffine's bilinear sampling: the source region the
    crop covers is first cut out and area-resized, then warped with the adjusted matrix.
    """
    scale = math.hypot(m[0, 0], m[1, 0])
    if scale < 0.5:
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
        src = transform_points(corners, inv)
        h, w = rgb.shape[:2]
        x0, y0 = np.floor(src.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(src.max(axis=0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 > x0 and y1 > y0:
            k = 1.0 / (2.0 * scale)  # leave 2x for the bilinear warp
            region = rgb[y0:y1, x0:x1]
            nw, nh = max(1, round(region.shape[1] * k)), max(1, round(region.shape[0] * k))
            small = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
            kx, ky = nw / region.shape[1], nh / region.shape[0]
            # output = m @ source; source pixel centres of `small` (cv2.resize's convention).
            pre = np.array([[1 / kx, 0, x0 + 0.5 / kx - 0.5], [0, 1 / ky, y0 + 0.5 / ky - 0.5],
                            [0, 0, 1]], np.float64)
            m = (np.vstack([m, [0, 0, 1]]) @ pre)[:2]
            rgb = small
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def center_crop_matrix(width: int, height: int, size: int) -> np.ndarray:
    """2x3 matrix mapping the largest centred square of the image onto ``size`` x ``size``."""
    side = min(width, height)
    s = size / side
    return np.array([[s, 0, -(width - side) / 2 * s], [0, s, -(height - side) / 2 * s]],
                    np.float64)


def resize_matrix(width: int, height: int, size: int) -> np.ndarray:
    """2x3 matrix of a plain (aspect-changing) resize to ``size`` x ``size``: passthrough."""
    return np.array([[size / width, 0, 0], [0, size / height, 0]], np.float64)


def resize(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if size < min(w, h) else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def box_crop_matrix(box, size: int, margin: float = 0.0) -> np.ndarray:
    """2x3 matrix mapping the square around an annotated face box (side: the box's longer side
    times ``1 + margin``, same centre) onto ``size`` x ``size``: the fallback when no detected
    face overlaps the box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1.0 + margin)
    s = size / side
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return np.array([[s, 0, size / 2.0 - cx * s], [0, s, size / 2.0 - cy * s]], np.float64)
