"""Decoding images as they come in the wild into RGB uint8, plus the detector's copy.

Runs on the align stage's decode threads; imports neither torch nor facenet-pytorch. Every
failure is a :class:`DecodeSkip` with a short machine reason (``missing_file``,
``corrupt_image``, ``decompression_bomb``, ``sha256_mismatch``), never a crash.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


# Transparent pixels become this colour: white is how the images are usually shown.
ALPHA_BACKGROUND = (255, 255, 255)


class DecodeSkip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    """One decoded image. ``det`` is ``rgb`` resized by (sx, sy) for the detector."""

    index: int
    rgb: np.ndarray | None = None
    det: np.ndarray | None = None
    scale: tuple[float, float] = (1.0, 1.0)
    # Source position of the detector copy's (0, 0): non-zero when it is a box's region.
    offset: tuple[float, float] = (0.0, 0.0)
    sha256: str = ""
    source_mode: str = ""
    exif_transposed: bool = False
    reason: str = ""
    detail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.reason


def _to_rgb8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit PNG (PIL gives I;16 or I): map the full 16-bit range onto 8 bits.
        a = np.asarray(img).astype(np.float32) / 257.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        hi = 1.0 if float(np.nanmax(a)) <= 1.0 else 255.0
        a = np.clip(np.rint(np.nan_to_num(a) * (255.0 / hi)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    # CMYK, YCbCr, L, 1, P, LAB, HSV, RGBX ...: PIL's own conversions.
    return np.asarray(img.convert("RGB") if mode != "RGB" else img)


def load_rgb(path: str | Path, max_image_pixels: int, expected_sha256: str | None = None,
             ) -> tuple[np.ndarray, dict]:
    """Read ``path`` into an HxWx3 uint8 RGB array, EXIF orientation applied.

    Raises :class:`DecodeSkip` for anything unusable. Images above ``max_image_pixels`` are
    refused before their pixels are decoded.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DecodeSkip("missing_file", str(path)) from None
    except OSError as e:
        raise DecodeSkip("unreadable_file", f"{type(e).__name__}: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise DecodeSkip("sha256_mismatch", f"expected {expected_sha256}, file has {digest}")
    # A global in PIL; set here (not at import) so every worker process applies it.
    Image.MAX_IMAGE_PIXELS = max_image_pixels
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit; we refuse the whole range.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            mode = img.mode
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            transposed = ImageOps.exif_transpose(img)
            was_rotated = orientation not in (0, 1, None)
            rgb = _to_rgb8(transposed)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeSkip("decompression_bomb", str(e)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            IndexError, TypeError, KeyError) as e:
        raise DecodeSkip("corrupt_image", f"{type(e).__name__}: {e}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise DecodeSkip("corrupt_image", f"unexpected decoded shape {rgb.shape}")
    return np.ascontiguousarray(rgb), {"sha256": digest, "mode": mode,
                                       "exif_transposed": bool(was_rotated)}


def detection_scale(w: int, h: int, max_side: int, min_side: int) -> float:
    """Scale for the detector's copy: longest side <= max_side, else shortest >= min_side."""
    if max(w, h) > max_side:
        return max_side / max(w, h)
    if min(w, h) < min_side:
        # Never let the upscale push the long side past max_side (extreme aspect ratios).
        return min(min_side / min(w, h), max_side / max(w, h))
    return 1.0


def detection_image(rgb: np.ndarray, max_side: int, min_side: int,
                    ) -> tuple[np.ndarray, tuple[float, float]]:
    """Resized copy for detection and its (sx, sy): det coords = source coords * (sx, sy)."""
    h, w = rgb.shape[:2]
    s = detection_scale(w, h, max_side, min_side)
    if s == 1.0:
        return rgb, (1.0, 1.0)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, (nw, nh), interpolation=interp), (nw / w, nh / h)


def box_region(box, context: float) -> tuple[float, float, float]:
    """(x0, y0, side): the square around an annotated face box, grown by ``context`` times its
    longer side on each side; the detector looks there for the labelled face."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * context)
    return (x0 + x1 - side) / 2.0, (y0 + y1 - side) / 2.0, side


def region_image(rgb: np.ndarray, region: tuple[float, float, float], size: int,
                 ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """The square ``region`` (black outside the image) resized to ``size`` x ``size``, its
    scale and its source offset. One fixed size, so every box region batches together."""
    x0, y0, side = region
    s = size / side
    m = np.array([[s, 0.0, -x0 * s], [0.0, s, -y0 * s]], np.float64)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    if s < 0.5:  # area-average first: warpAffine's bilinear sampling would alias
        h, w = rgb.shape[:2]
        k = min(1.0, 2.0 * s)
        small = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=interp)
        kx, ky = small.shape[1] / w, small.shape[0] / h
        # source pixel centres of `small` (cv2.resize's convention): x = (x' + .5) / k - .5
        m = np.array([[s / kx, 0.0, s * (0.5 / kx - 0.5 - x0)],
                      [0.0, s / ky, s * (0.5 / ky - 0.5 - y0)]], np.float64)
        rgb = small
    out = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return out, (s, s), (x0, y0)


def decode_job(job: tuple) -> Decoded:
    """Worker entry: ``(index, path, sha256 | None, max_pixels, max_side, min_side, want_det)``
    and optionally ``region`` (x0, y0, side) and ``region_size``: detect there only."""
    index, path, sha, max_pixels, max_side, min_side, want_det = job[:7]
    region, region_size = job[7:9] if len(job) >= 9 else (None, 0)
    try:
        rgb, info = load_rgb(path, max_pixels, sha)
    except DecodeSkip as e:
        return Decoded(index=index, reason=e.reason, detail=e.detail)
    out = Decoded(index=index, rgb=rgb, sha256=info["sha256"], source_mode=info["mode"],
                  exif_transposed=info["exif_transposed"])
    if want_det and region is not None:
        out.det, out.scale, out.offset = region_image(rgb, region, region_size)
    elif want_det:
        out.det, out.scale = detection_image(rgb, max_side, min_side)
    return out
