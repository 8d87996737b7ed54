"""insightface 106-point landmarks -> iBUG 68 points (and, through them, parsing regions).

Groups of insightface's ``2d106det`` markup (from its published markup figure, "ordered by
point names"): contour 0-32, one eye 33-42, one brow 43-51, mouth 52-71, nose 72-86, the
other eye 87-96, the other brow 97-105. [Group ranges as commonly used with that model; the
figure itself is not stored here, and no real model pack was available to check them.]

Only group membership is relied on, never the order of points inside a group: within each
region the 68 scheme's points are re-derived geometrically (corners = extreme points of the
region's hull, lid/lip/brow points = the hull's upper or lower edge at fixed fractions of the
corner-to-corner span, the jaw = the contour resampled at 17 equal arc-length steps from the
image-left end to the image-right end). Which eye/brow is "left" is decided by position, so
the result is in iBUG's image-side semantics whatever the model's own naming.
"""

from __future__ import annotations

import numpy as np

GROUPS_2D106 = {
    "contour": list(range(0, 33)),
    "eye_a": list(range(33, 43)),
    "brow_a": list(range(43, 52)),
    "mouth": list(range(52, 72)),
    "nose": list(range(72, 87)),
    "eye_b": list(range(87, 97)),
    "brow_b": list(range(97, 106)),
}


def _hull(pts: np.ndarray) -> np.ndarray:
    import cv2  # noqa: PLC0415

    return cv2.convexHull(np.asarray(pts, np.float32))[:, 0].astype(np.float64)


def _edge_y(pts: np.ndarray, xs: np.ndarray, upper: bool) -> np.ndarray:
    """y of the hull's upper (min y) or lower (max y) boundary at each x."""
    hull = _hull(pts)
    out = []
    for x in xs:
        ys = []
        for a, b in zip(hull, np.roll(hull, -1, axis=0)):
            lo, hi = min(a[0], b[0]), max(a[0], b[0])
            if lo - 1e-9 <= x <= hi + 1e-9:
                if abs(b[0] - a[0]) < 1e-9:
                    ys += [a[1], b[1]]
                else:
                    t = (x - a[0]) / (b[0] - a[0])
                    ys.append(a[1] + t * (b[1] - a[1]))
        if not ys:  # degenerate hull: nearest point
            ys = [pts[np.argmin(np.abs(pts[:, 0] - x)), 1]]
        out.append(min(ys) if upper else max(ys))
    return np.asarray(out)


def _corners(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return pts[np.argmin(pts[:, 0])], pts[np.argmax(pts[:, 0])]


def _ring(pts: np.ndarray, upper_fr, lower_fr) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Left corner, upper-edge points, right corner, lower-edge points (lower listed
    right-to-left, iBUG's clockwise order)."""
    lc, rc = _corners(pts)
    xu = lc[0] + np.asarray(upper_fr) * (rc[0] - lc[0])
    xl = lc[0] + np.asarray(lower_fr) * (rc[0] - lc[0])
    up = np.stack([xu, _edge_y(pts, xu, True)], 1)
    lo = np.stack([xl, _edge_y(pts, xl, False)], 1)
    return lc, up, rc, lo


def _resample(poly: np.ndarray, n: int) -> np.ndarray:
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    t = np.linspace(0, s[-1], n)
    return np.stack([np.interp(t, s, poly[:, 0]), np.interp(t, s, poly[:, 1])], 1)


def to_68(p106: np.ndarray, groups: dict[str, list[int]] = GROUPS_2D106) -> np.ndarray:
    """[106,2] -> [68,2] iBUG order, image-side semantics."""
    p = np.asarray(p106, np.float64).reshape(-1, 2)
    g = {k: p[v] for k, v in groups.items()}
    eyes = sorted((g["eye_a"], g["eye_b"]), key=lambda a: a[:, 0].mean())
    brows = sorted((g["brow_a"], g["brow_b"]), key=lambda a: a[:, 0].mean())
    out = np.zeros((68, 2))
    # jaw: contour ordered by angle around the face centre, image-left end -> chin -> right
    c = np.concatenate([eyes[0], eyes[1], g["nose"]]).mean(0)
    phi = (np.degrees(np.arctan2(g["contour"][:, 1] - c[1], g["contour"][:, 0] - c[0])) + 90) % 360
    jaw = g["contour"][np.argsort(-phi)]
    out[0:17] = _resample(jaw, 17)
    # brows: 5 points on the band's mid-line, left to right (17-21 outer->inner, 22-26 inner->outer)
    for b, sl in zip(brows, (slice(17, 22), slice(22, 27))):
        lc, rc = _corners(b)
        xs = lc[0] + np.linspace(0.1, 0.9, 5) * (rc[0] - lc[0])
        out[sl] = np.stack([xs, 0.5 * (_edge_y(b, xs, True) + _edge_y(b, xs, False))], 1)
    # nose: bridge 27-30 down the centre line, base 31-35 along the lower edge
    n = g["nose"]
    lc, rc = _corners(n)
    xm = float(np.median(n[:, 0]))
    y0, y1 = n[:, 1].min(), n[:, 1].max()
    out[27:31] = np.stack([np.full(4, xm), y0 + np.array([0, 0.25, 0.5, 0.75]) * (y1 - y0)], 1)
    xs = lc[0] + np.linspace(0.15, 0.85, 5) * (rc[0] - lc[0])
    out[31:36] = np.stack([xs, _edge_y(n, xs, False)], 1)
    # eyes: 36 outer, 37-38 upper, 39 inner, 40-41 lower (image-left eye); mirrored for 42-47
    lc, up, rc, lo = _ring(eyes[0], [1 / 3, 2 / 3], [2 / 3, 1 / 3])
    out[36], out[37:39], out[39], out[40:42] = lc, up, rc, lo
    lc, up, rc, lo = _ring(eyes[1], [1 / 3, 2 / 3], [2 / 3, 1 / 3])
    out[42], out[43:45], out[45], out[46:48] = lc, up, rc, lo
    # mouth: outer ring = the 12 points farthest out (elliptic radius), inner = the other 8
    m = g["mouth"]
    mc = m.mean(0)
    ax = np.maximum(np.ptp(m, axis=0) / 2, 1e-6)
    r = np.linalg.norm((m - mc) / ax, axis=1)
    order = np.argsort(-r, kind="stable")
    outer, inner = m[order[:12]], m[order[12:]]
    lc, up, rc, lo = _ring(outer, np.arange(1, 6) / 6, np.arange(5, 0, -1) / 6)
    out[48], out[49:54], out[54], out[55:60] = lc, up, rc, lo
    lc, up, rc, lo = _ring(inner, np.arange(1, 4) / 4, np.arange(3, 0, -1) / 4)
    out[60], out[61:64], out[64], out[65:68] = lc, up, rc, lo
    return out
