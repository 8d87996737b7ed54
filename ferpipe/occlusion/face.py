"""Where the face's parts are in an aligned image: geometry for placing occluders, and the
semantic regions an occluder is measured against.

Geometry comes from the best source a sample has: the 68 landmarks of a ``maps`` priors sample,
else the centroids of its parsing map, else the 5 aligned points every aligned sample records
(``points_aligned``; ``features`` priors have no map). Regions always come from a parsing map;
without one, :func:`approx_parsing` rasterises a coarse LaPa-order map from the geometry (and the
sample records that it did).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# LaPa classes (ferpipe.priors): 0 background, 1 skin, 2/3 brows, 4/5 eyes, 6 nose,
# 7 upper lip, 8 inner mouth, 9 lower lip, 10 hair. 2/4 are on the image's left.
SKIN, BROW_L, BROW_R, EYE_L, EYE_R, NOSE, ULIP, IMOUTH, LLIP, HAIR = range(1, 11)
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9)          # "the face": not background, not hair
REGIONS = ("forehead", "brows", "eyes", "nose", "cheeks", "mouth", "chin")
MIN_REGION_PIXELS = 4


@dataclass(frozen=True)
class FaceGeometry:
    """Image-pixel positions (x, y) of the parts occluders are placed on."""

    eye_l: np.ndarray
    eye_r: np.ndarray
    nose: np.ndarray       # nose tip
    mouth: np.ndarray      # mouth centre
    mouth_w: float
    box: tuple[float, float, float, float]  # face x0, y0, x1, y1
    source: str            # landmarks68 | parsing | points5

    @property
    def iod(self) -> float:
        return float(max(np.linalg.norm(self.eye_r - self.eye_l), 4.0))

    @property
    def angle(self) -> float:
        """Eye-line angle in degrees (image coordinates, y down)."""
        d = self.eye_r - self.eye_l
        return float(np.degrees(np.arctan2(d[1], d[0])))

    @property
    def eyes_mid(self) -> np.ndarray:
        return (self.eye_l + self.eye_r) / 2

    @property
    def up(self) -> np.ndarray:
        """Unit vector from the mouth towards the eyes (the face's 'up')."""
        a = np.radians(self.angle)
        return np.array([np.sin(a), -np.cos(a)])


def _centroid(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(xs) < MIN_REGION_PIXELS:
        return None
    return np.array([xs.mean(), ys.mean()], np.float64)


def geometry_from_landmarks68(pts: np.ndarray) -> FaceGeometry | None:
    pts = np.asarray(pts, np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        return None
    allp = pts[:27]
    x0, y0 = allp.min(0)
    x1, y1 = allp.max(0)
    return FaceGeometry(eye_l=pts[36:42].mean(0), eye_r=pts[42:48].mean(0), nose=pts[30].copy(),
                        mouth=pts[48:68].mean(0), mouth_w=float(np.linalg.norm(pts[54] - pts[48])),
                        box=(float(x0), float(y0), float(x1), float(y1)), source="landmarks68")


def geometry_from_parsing(parsing: np.ndarray) -> FaceGeometry | None:
    p = np.asarray(parsing)
    face = np.isin(p, FACE_CLASSES)
    el = _centroid(p == EYE_L)
    er = _centroid(p == EYE_R)
    mouth_mask = np.isin(p, (ULIP, IMOUTH, LLIP))
    mo = _centroid(mouth_mask)
    nose_mask = p == NOSE
    if el is None or er is None or mo is None or nose_mask.sum() < MIN_REGION_PIXELS or face.sum() < 16:
        return None
    ys, xs = np.nonzero(nose_mask)
    tip_y = np.percentile(ys, 85)
    nose = np.array([xs[ys >= tip_y - 1].mean(), tip_y])
    mx = np.nonzero(mouth_mask)[1]
    fy, fx = np.nonzero(face)
    return FaceGeometry(eye_l=el, eye_r=er, nose=nose, mouth=mo, mouth_w=float(mx.max() - mx.min() + 1),
                        box=(float(fx.min()), float(fy.min()), float(fx.max()), float(fy.max())),
                        source="parsing")


def geometry_from_points5(points: np.ndarray | list) -> FaceGeometry:
    """From the aligned 5 points (eye, eye, nose, mouth corner, mouth corner); the face box is
    the usual proportions around them."""
    p = np.asarray(points, np.float64).reshape(5, 2)
    el, er = sorted([p[0], p[1]], key=lambda q: q[0])
    iod = max(float(np.linalg.norm(er - el)), 4.0)
    mouth = (p[3] + p[4]) / 2
    cx = (el[0] + er[0]) / 2
    top = min(el[1], er[1]) - 0.95 * iod
    bottom = mouth[1] + 0.8 * iod
    return FaceGeometry(eye_l=el, eye_r=er, nose=p[2].copy(), mouth=mouth,
                        mouth_w=float(np.linalg.norm(p[4] - p[3])),
                        box=(cx - 1.05 * iod, top, cx + 1.05 * iod, bottom), source="points5")


def approx_parsing(geom: FaceGeometry, shape: tuple[int, int]) -> np.ndarray:
    """A coarse LaPa-order map from the geometry (skin ellipse, brows, eyes, nose, lips)."""
    h, w = shape
    p = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = geom.box
    iod, ang = geom.iod, geom.angle

    def ell(c, ax, cls, a=ang):
        cv2.ellipse(p, (int(round(c[0])), int(round(c[1]))), (max(1, int(round(ax[0]))), max(1, int(round(ax[1])))),
                    a, 0, 360, int(cls), -1)

    ell(((x0 + x1) / 2, (y0 + y1) / 2), ((x1 - x0) / 2, (y1 - y0) / 2), SKIN)
    up = geom.up
    for eye, brow, ecls in ((geom.eye_l, BROW_L, EYE_L), (geom.eye_r, BROW_R, EYE_R)):
        ell(eye + up * 0.32 * iod, (0.28 * iod, 0.06 * iod), brow)
        ell(eye, (0.2 * iod, 0.09 * iod), ecls)
    top = geom.eyes_mid + (geom.nose - geom.eyes_mid) * 0.35
    ell((top + geom.nose) / 2, (0.13 * iod, float(np.linalg.norm(geom.nose - top)) / 2 + 0.06 * iod), NOSE, ang)
    mw = max(geom.mouth_w / 2, 0.2 * iod)
    ell(geom.mouth - up * 0.06 * iod, (mw, 0.08 * iod), LLIP)
    ell(geom.mouth + up * 0.05 * iod, (mw * 0.95, 0.07 * iod), ULIP)
    return p


def face_geometry(parsing: np.ndarray | None, landmarks68: np.ndarray | None,
                  points5: np.ndarray | list | None) -> FaceGeometry:
    """The best geometry available (landmarks68 > parsing > points5)."""
    g = geometry_from_landmarks68(landmarks68) if landmarks68 is not None else None
    if g is None and parsing is not None:
        g = geometry_from_parsing(parsing)
    if g is None and points5 is not None:
        g = geometry_from_points5(points5)
    if g is None:
        raise ValueError("no usable landmarks, parsing map or aligned 5 points")
    return g


def region_masks(parsing: np.ndarray, geom: FaceGeometry) -> dict[str, np.ndarray]:
    """Boolean masks of the semantic regions: parts from the parsing classes, and skin split
    along the face's vertical axis into forehead (above the eyes), cheeks (eyes to mouth) and
    chin (below the mouth)."""
    p = np.asarray(parsing)
    h, w = p.shape
    ys, xs = np.mgrid[0:h, 0:w]
    up = geom.up
    # Height along the face's up axis, 0 at the eye line.
    t = -((xs - geom.eyes_mid[0]) * up[0] + (ys - geom.eyes_mid[1]) * up[1])
    t_mouth = -float((geom.mouth - geom.eyes_mid) @ up)
    skin = p == SKIN
    return {
        "forehead": skin & (t < 0),
        "brows": np.isin(p, (BROW_L, BROW_R)),
        "eyes": np.isin(p, (EYE_L, EYE_R)),
        "nose": p == NOSE,
        "cheeks": skin & (t >= 0) & (t < t_mouth),
        "mouth": np.isin(p, (ULIP, IMOUTH, LLIP)),
        "chin": skin & (t >= t_mouth),
    }


def coverage(alpha: np.ndarray, parsing: np.ndarray, geom: FaceGeometry, cover_alpha: float = 0.5,
             region_threshold: float = 0.3) -> dict:
    """What an occluder's opacity map covers: the occluded fraction of the face (non-background,
    non-hair pixels whose opacity is at least ``cover_alpha``), each region's covered fraction
    and the regions covered by at least ``region_threshold`` of their pixels."""
    covered = np.asarray(alpha) >= cover_alpha
    face = np.isin(parsing, FACE_CLASSES)
    n_face = int(face.sum())
    frac = float((covered & face).sum() / n_face) if n_face else 0.0
    per_region = {}
    for name, m in region_masks(parsing, geom).items():
        n = int(m.sum())
        if n >= MIN_REGION_PIXELS:
            per_region[name] = round(float((covered & m).sum() / n), 4)
    regions = [r for r in REGIONS if per_region.get(r, 0.0) >= region_threshold]
    return {"occluded_fraction": round(frac, 4), "region_coverage": per_region, "regions": regions,
            "face_pixels": n_face}
