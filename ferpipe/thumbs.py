"""Inline JPEG thumbnails (``data:`` URIs) for the markdown galleries and artifacts."""

from __future__ import annotations

import base64

import numpy as np


def jpeg_data_uri(rgb: np.ndarray, size: int, quality: int = 85, *, area_when_enlarging: bool = False) -> str:
    """``rgb`` (HxWx3 uint8) scaled so its longer side is ``size``, as a base64 JPEG data URI.
    Shrinking uses area averaging; enlarging is bilinear unless ``area_when_enlarging``."""
    import cv2  # noqa: PLC0415

    h, w = rgb.shape[:2]
    s = size / max(h, w)
    interpolation = cv2.INTER_AREA if s < 1 or area_when_enlarging else cv2.INTER_LINEAR
    im = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interpolation)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")
