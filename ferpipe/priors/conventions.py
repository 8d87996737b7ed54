"""Class orders, the flip convention, and geometry shared by every prior backend.

**Semantic order.** Parsing maps use LaPa's 11 classes (0 background, 1 skin, 2 left brow,
3 right brow, 4 left eye, 5 right eye, 6 nose, 7 upper lip, 8 inner mouth, 9 lower lip,
10 hair); landmarks use the iBUG 300-W 68-point order. "Left" is the **image** left, as in
iBUG (points 36-41 are the eye on the image's left) and as in ferpipe's synthetic ground truth.

**Flip convention (view 1).** The flipped view is what a prior network gives for the
horizontally flipped image, in the same image-side semantics as view 0: class 2 is the brow on
the image's left *of the flipped image*, point 36 the outer corner of the eye on the image's
left *of the flipped image*. So a flipped training sample (flipped image + view 1) looks
exactly like an unflipped one, which is what a model that sees eval-time priors (always
computed on unflipped images) needs. Expressed on view 0 (for ground truth, or a perfectly
flip-equivariant prior): mirror x (``x' = W - 1 - x``, pixel centres at integers, OpenCV's
convention), then re-order points with :data:`IBUG68_FLIP` and swap classes with
:data:`LAPA_FLIP`: point i then means the same facial point in both views (e.g. 36 is
always "outer corner of the image-left eye") and class 2 is always "image-left brow". The
cached view 1 itself is always computed from the flipped image, never derived from view 0.
"""

from __future__ import annotations

import cv2
import numpy as np

from ferpipe.ibug68 import FLIP, NUM_POINTS
from ferpipe.models.segface import LAPA_CLASSES

NUM_CLASSES = len(LAPA_CLASSES)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: ``flipped[i] = mirrored[IBUG68_FLIP[i]]``: the mirror partner of every iBUG point.
IBUG68_FLIP = FLIP
#: Class relabelling of a mirrored LaPa map: left/right brow and eye swap.
LAPA_FLIP = np.array([0, 1, 3, 2, 5, 4, 6, 7, 8, 9, 10], dtype=np.uint8)


def flip_landmarks(points: np.ndarray, width: int) -> np.ndarray:
    """View-0 points [68,2] (pixels) -> the flipped image's points in the same semantics."""
    p = np.asarray(points, dtype=np.float64).reshape(NUM_POINTS, 2).copy()
    p[:, 0] = (width - 1) - p[:, 0]
    return p[IBUG68_FLIP]


def flip_parsing(parsing: np.ndarray) -> np.ndarray:
    """View-0 LaPa map [H,W] -> the flipped image's map in the same semantics."""
    return LAPA_FLIP[np.ascontiguousarray(np.asarray(parsing)[:, ::-1])]


def inter_ocular(points: np.ndarray) -> np.ndarray:
    """Outer-eye-corner distance (iBUG 36 to 45), the usual NME normaliser; [..., 68, 2]."""
    p = np.asarray(points, dtype=np.float64)
    return np.linalg.norm(p[..., 36, :] - p[..., 45, :], axis=-1)


# --------------------------------------------------------------------------------------------
# 68 points -> parsing regions (polygons), for landmark-only backends


def _poly(points: np.ndarray, idx) -> np.ndarray:
    return np.round(points[list(idx)] * 16).astype(np.int32)  # shift=4 sub-pixel


def parsing_from_68(points: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Rasterise a LaPa-order map [H,W] uint8 from 68 iBUG points (image-side semantics).

    Skin: the jaw contour closed over a forehead band (the brows lifted by 0.4 of the
    brow-to-chin height); nose: hull of points 27-35; brows: the 17-21 / 22-26 polylines
    thickened to 0.6 of the eye height (at least 2 px); eyes: polygons 36-41 / 42-47; upper
    lip: 48-54 closed by 64-60; lower lip: 54-59,48 closed by 60,67-64; inner mouth: 60-67.
    Hair is not recoverable from landmarks and stays background.
    """
    h, w = (size, size) if isinstance(size, int) else size
    p = np.asarray(points, dtype=np.float64).reshape(NUM_POINTS, 2)
    out = np.zeros((h, w), np.uint8)
    if not np.isfinite(p).all():
        return out
    brows = p[17:27]
    lift = 0.4 * max(1.0, p[8, 1] - brows[:, 1].mean())
    forehead = brows[::-1].copy()
    forehead[:, 1] -= lift
    skin = np.concatenate([p[0:17], forehead])
    fill = lambda poly, c: cv2.fillPoly(out, [poly], int(c), lineType=cv2.LINE_8, shift=4)  # noqa: E731
    fill(np.round(cv2.convexHull(skin.astype(np.float32))[:, 0] * 16).astype(np.int32), 1)
    fill(np.round(cv2.convexHull(p[27:36].astype(np.float32))[:, 0] * 16).astype(np.int32), 6)
    eye_h = max(np.ptp(p[36:42, 1]), np.ptp(p[42:48, 1]), 1.0)
    thick = max(2, int(round(0.6 * eye_h)))
    for idx, c in ((range(17, 22), 2), (range(22, 27), 3)):
        cv2.polylines(out, [_poly(p, idx)], False, c, thick, lineType=cv2.LINE_8, shift=4)
    fill(_poly(p, range(36, 42)), 4)
    fill(_poly(p, range(42, 48)), 5)
    fill(_poly(p, [48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60]), 7)
    fill(_poly(p, [54, 55, 56, 57, 58, 59, 48, 60, 67, 66, 65, 64]), 9)
    fill(_poly(p, range(60, 68)), 8)
    return out
