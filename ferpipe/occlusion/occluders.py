"""Procedural occluders drawn with OpenCV onto an aligned face.

Each occluder is a function ``draw(rng, geom, rgb) -> Occluder`` returning a colour layer, an
opacity map in [0, 1] and a few facts about what was drawn; :func:`composite` blends the layer
over the image. Shapes are drawn anti-aliased (``LINE_AA`` into 8-bit masks) and then feathered
with a small Gaussian, so edges look like a photographed object rather than a pasted cut-out.
All randomness comes from the ``rng`` passed in (one per sample), never the global state.

Registry: :data:`OCCLUDERS` maps a name to its drawing function; :func:`register_occluder`
adds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np

from ferpipe._registry import Registry
from ferpipe.occlusion.face import FaceGeometry

# Skin tones (RGB) for hands: light to dark.
SKIN_TONES = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 135], [198, 134, 96],
                       [160, 104, 70], [120, 76, 50], [88, 56, 38]], np.float32)
HAIR_COLOURS = np.array([[20, 16, 14], [60, 40, 28], [110, 74, 44], [180, 140, 90], [150, 70, 40],
                         [170, 170, 170]], np.float32)
LENS_TINTS = np.array([[18, 18, 20], [45, 32, 22], [22, 32, 55], [26, 46, 32], [60, 50, 20]], np.float32)
MASK_COLOURS = np.array([[170, 208, 232], [238, 240, 242], [35, 35, 38], [236, 190, 205],
                         [120, 150, 190]], np.float32)


@dataclass
class Occluder:
    layer: np.ndarray              # float32 HxWx3, 0..255
    alpha: np.ndarray              # float32 HxW, 0..1
    info: dict[str, Any] = field(default_factory=dict)


DrawFn = Callable[[np.random.Generator, FaceGeometry, np.ndarray], Occluder]
OCCLUDERS: Registry[DrawFn] = Registry("occluder", ValueError, "occlusion.occluders")


def register_occluder(name: str) -> Callable[[DrawFn], DrawFn]:
    def deco(fn: DrawFn) -> DrawFn:
        return OCCLUDERS.register(name, fn)

    return deco


def draw_occluder(name: str, rng: np.random.Generator, geom: FaceGeometry, rgb: np.ndarray) -> Occluder:
    occ = OCCLUDERS.lookup(name)(rng, geom, rgb)
    occ.info = {"occluder": name, **occ.info}
    return occ


def composite(rgb: np.ndarray, occ: Occluder) -> np.ndarray:
    a = occ.alpha[..., None]
    out = rgb.astype(np.float32) * (1.0 - a) + occ.layer * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- drawing helpers ---------------------------------------------------------------------------


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _ax(a, b) -> tuple[int, int]:
    return max(1, int(round(float(a)))), max(1, int(round(float(b))))


def _rot(pts: np.ndarray, angle_deg: float) -> np.ndarray:
    a = np.radians(angle_deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.asarray(pts, np.float64) @ r.T


def _feather(mask_u8: np.ndarray, sigma: float) -> np.ndarray:
    m = mask_u8.astype(np.float32) / 255.0
    if sigma > 0.3:
        m = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    return np.clip(m, 0.0, 1.0)


def _sigma(shape, rng: np.random.Generator, lo: float = 0.004, hi: float = 0.009) -> float:
    return float(rng.uniform(lo, hi) * max(shape[:2]))


def _noise(rng: np.random.Generator, shape, cells: int, amp: float) -> np.ndarray:
    """Smooth value noise HxW in [-amp, amp] (a low-resolution grid, bicubic upsampled)."""
    h, w = shape[:2]
    g = rng.uniform(-1, 1, (max(2, cells), max(2, cells))).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC) * amp


def _textured(rng: np.random.Generator, shape, base: np.ndarray, amp: float = 18.0) -> np.ndarray:
    base = np.asarray(base, np.float32)
    layer = np.empty((shape[0], shape[1], 3), np.float32)
    layer[:] = base
    layer += _noise(rng, shape, int(rng.integers(3, 9)), amp)[..., None]
    layer += rng.normal(0, amp / 6, layer.shape[:2]).astype(np.float32)[..., None]
    return np.clip(layer, 0, 255)


def _vgradient(shape, top: float, bottom: float) -> np.ndarray:
    return np.linspace(top, bottom, shape[0], dtype=np.float32)[:, None].repeat(shape[1], 1)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 18.0) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.normal(0, amount, 3), 0, 255).astype(np.float32)


# --- eyes ---------------------------------------------------------------------------------------


@register_occluder("sunglasses")
def sunglasses(rng: np.random.Generator, g: FaceGeometry, rgb: np.ndarray) -> Occluder:
    shape = rgb.shape[:2]
    iod, ang = g.iod, g.angle
    rx = iod * rng.uniform(0.32, 0.44)
    ry = rx * rng.uniform(0.62, 0.9)
    lens = np.zeros(shape, np.uint8)
    frame = np.zeros(shape, np.uint8)
    thick = max(1, int(round(iod * rng.uniform(0.03, 0.07))))
    shift = g.up * rng.uniform(-0.05, 0.1) * iod
    centres = [g.eye_l + shift, g.eye_r + shift]
    for c in centres:
        cv2.ellipse(lens, _pt(c), _ax(rx, ry), ang, 0, 360, 255, -1, cv2.LINE_AA)
        cv2.ellipse(frame, _pt(c), _ax(rx, ry), ang, 0, 360, 255, thick, cv2.LINE_AA)
    d = (g.eye_r - g.eye_l) / max(np.linalg.norm(g.eye_r - g.eye_l), 1e-6)
    cv2.line(frame, _pt(centres[0] + d * rx * 0.95), _pt(centres[1] - d * rx * 0.95), 255, thick, cv2.LINE_AA)
    x0, _, x1, _ = g.box
    for c, sgn, edge in ((centres[0], -1, x0), (centres[1], 1, x1)):
        start = c + sgn * d * rx
        end = start + sgn * d * max(abs(edge - start[0]), 2.0) * 1.05
        cv2.line(frame, _pt(start), _pt(end), 255, thick, cv2.LINE_AA)
    tint = _jitter(rng, LENS_TINTS[rng.integers(len(LENS_TINTS))], 6)
    layer = _textured(rng, shape, tint, 6)
    # A soft specular streak on the upper part of each lens.
    spec = np.zeros(shape, np.uint8)
    for c in centres:
        cv2.ellipse(spec, _pt(c + g.up * ry * 0.45 - d * rx * 0.2), _ax(rx * 0.45, ry * 0.18), ang - 15,
                    0, 360, 255, -1, cv2.LINE_AA)
    layer += _feather(spec, iod * 0.06)[..., None] * rng.uniform(40, 90)
    frame_col = _jitter(rng, np.array([30, 30, 30]) if rng.random() < 0.6 else rng.uniform(0, 255, 3), 10)
    fa = _feather(frame, 0.5)
    layer = layer * (1 - fa[..., None]) + frame_col * fa[..., None]
    opacity = rng.uniform(0.9, 0.98)
    alpha = np.maximum(_feather(lens, _sigma(shape, rng, 0.002, 0.005)) * opacity, fa)
    return Occluder(np.clip(layer, 0, 255), alpha, {"placement": "eyes"})


@register_occluder("eye_bar")
def eye_bar(rng: np.random.Generator, g: FaceGeometry, rgb: np.ndarray) -> Occluder:
    shape = rgb.shape[:2]
    iod = g.iod
    w, h = iod * rng.uniform(1.9, 2.6), iod * rng.uniform(0.38, 0.6)
    c = g.eyes_mid + g.up * rng.uniform(-0.04, 0.06) * iod
    box = cv2.boxPoints(((float(c[0]), float(c[1])), (float(w), float(h)), g.angle + rng.uniform(-4, 4)))
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(box).astype(np.int32)], 255, cv2.LINE_AA)
    col = np.array([8, 8, 8], np.float32) if rng.random() < 0.7 else rng.uniform(0, 255, 3).astype(np.float32)
    return Occluder(_textured(rng, shape, col, 4), _feather(m, _sigma(shape, rng, 0.001, 0.004)),
                    {"placement": "eyes"})


# --- lower face -------------------------------------------------------------------------------


@register_occluder("medical_mask")
def medical_mask(rng: np.random.Generator, g: FaceGeometry, rgb: np.ndarray) -> Occluder:
    shape = rgb.shape[:2]
    iod, up = g.iod, g.up
    side = np.array([-up[1], up[0]])         # towards the image's right of the face
    x0, _, x1, y1 = g.box
    half_w = max((x1 - x0) / 2 * rng.uniform(0.98, 1.1), iod * 0.9)
    centre_x = (g.eyes_mid + g.mouth) / 2
    top_c = g.eyes_mid + (g.nose - g.eyes_mid) * rng.uniform(0.4, 0.6)
    bottom_c = g.mouth - up * max(float((g.mouth - g.eyes_mid) @ -up) * 0.9, iod * 0.55)
    top_side = top_c - up * 0.18 * iod
    pts = []
    for s in np.linspace(-1, 1, 9):                      # top edge: peaks over the nose bridge
        pts.append(top_side + side * s * half_w + up * 0.18 * iod * (1 - s * s))
    for s in np.linspace(1, -1, 9):                      # bottom edge: rounded under the chin
        pts.append(bottom_c + side * s * half_w * 0.85 - up * 0.25 * iod * (1 - s * s))
    poly = np.round(np.array(pts)).astype(np.int32)
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [poly], 255, cv2.LINE_AA)
    col = _jitter(rng, MASK_COLOURS[rng.integers(len(MASK_COLOURS))], 8)
    layer = _textured(rng, shape, col, 5) * _vgradient(shape, 1.04, 0.9)[..., None]
    pleats = np.zeros(shape, np.uint8)
    for k in range(3):                                    # pleats: darker horizontal folds
        t = 0.3 + 0.2 * k
        a, b = top_side * (1 - t) + bottom_c * t - side * half_w * 0.8, top_side * (1 - t) + bottom_c * t + side * half_w * 0.8
        cv2.line(pleats, _pt(a), _pt(b), 255, max(1, int(iod * 0.03)), cv2.LINE_AA)
    layer *= (1 - 0.18 * _feather(pleats, iod * 0.02))[..., None]
    loops = np.zeros(shape, np.uint8)
    for s in (-1, 1):                                     # ear loops towards the face sides
        for p in (top_side + side * s * half_w, bottom_c + side * s * half_w * 0.85):
            cv2.line(loops, _pt(p), _pt(p + side * s * 0.35 * iod + up * 0.25 * iod), 255,
                     max(1, int(iod * 0.025)), cv2.LINE_AA)
    la = _feather(loops, 0.4) * 0.9
    alpha = np.maximum(_feather(m, _sigma(shape, rng, 0.002, 0.005)), la)
    layer = layer * (1 - la[..., None]) + col * 0.95 * la[..., None]
    return Occluder(np.clip(layer, 0, 255), alpha, {"placement": "nose+mouth"})


@register_occluder("scarf")
def scarf(rng: np.random.Generator, g: FaceGeometry, rgb: np.ndarray) -> Occluder:
    shape = rgb.shape[:2]
    h, w = shape
    iod, up = g.iod, g.up
    top = g.nose + (g.mouth - g.nose) * rng.uniform(-0.3, 0.4)
    xs = np.linspace(-0.1 * w, 1.1 * w, 24)
    wave = np.sin(xs / w * np.pi * rng.uniform(2, 4) + rng.uniform(0, 6.3)) * iod * rng.uniform(0.03, 0.1)
    slope = np.tan(np.radians(g.angle))
    ys = top[1] + (xs - top[0]) * slope + wave
    poly = np.concatenate([np.stack([xs, ys], 1), [[1.1 * w, h * 1.2], [-0.1 * w, h * 1.2]]])
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 255, cv2.LINE_AA)
    c1, c2 = rng.uniform(20, 235, 3).astype(np.float32), rng.uniform(20, 235, 3).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = iod * rng.uniform(0.15, 0.35)
    pattern = rng.integers(3)
    if pattern == 0:      # stripes along the scarf
        t = (np.sin(yy / period * np.pi) > 0).astype(np.float32)
    elif pattern == 1:    # checks
        t = ((np.sin(yy / period * np.pi) > 0) ^ (np.sin(xx / period * np.pi) > 0)).astype(np.float32)
    else:                 # plain knit
        t = np.zeros(shape, np.float32)
    t = cv2.GaussianBlur(t, (0, 0), 0.8)
    layer = c1 * (1 - t[..., None]) + c2 * t[..., None]
    knit = (np.sin(xx / max(period * 0.25, 1.0) * np.pi) * np.sin(yy / max(period * 0.2, 1.0) * np.pi)) * 10
    layer = np.clip(layer + knit[..., None] + _noise(rng, shape, 6, 12)[..., None], 0, 255)
    return Occluder(layer.astype(np.float32), _feather(m, _sigma(shape, rng, 0.004, 0.01)),
                    {"placement": "mouth+lower_face", "pattern": ["stripes", "checks", "plain"][pattern]})


# --- hand ---------------------------------------------------------------------------------------


def _hand_mask(shape, centre: np.ndarray, angle: float, palm_w: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A palm with four fingers and a thumb; fingers point along ``angle`` (0 = image up).
    Returns the mask, the finger-gap mask and the fingertip positions."""
    m = np.zeros(shape, np.uint8)
    gaps = np.zeros(shape, np.uint8)
    palm_h = palm_w * rng.uniform(1.0, 1.2)
    cv2.ellipse(m, _pt(centre), _ax(palm_w / 2, palm_h / 2), angle, 0, 360, 255, -1, cv2.LINE_AA)
    finger_w = palm_w / 4.2
    lengths = np.array([0.78, 0.9, 0.85, 0.66]) * palm_h * rng.uniform(0.9, 1.15)
    spread = rng.uniform(0, 6)
    tips = []
    for i, length in enumerate(lengths):
        off = (i - 1.5) * finger_w * 1.02
        base = _rot(np.array([[off, -palm_h * 0.3]]), angle)[0] + centre
        a = angle + (i - 1.5) * spread
        tip = base + _rot(np.array([[0.0, -length - palm_h * 0.2]]), a)[0]
        cv2.line(m, _pt(base), _pt(tip), 255, max(1, int(round(finger_w))), cv2.LINE_AA)
        tips.append(tip)
        if i:
            gb = _rot(np.array([[off - finger_w * 0.51, -palm_h * 0.35]]), angle)[0] + centre
            gt = gb + _rot(np.array([[0.0, -min(length, lengths[i - 1]) * 0.9]]), a)[0]
            cv2.line(gaps, _pt(gb), _pt(gt), 255, max(1, int(round(finger_w * 0.12))), cv2.LINE_AA)
    side = 1 if rng.random() < 0.5 else -1
    tb = _rot(np.array([[side * palm_w * 0.35, palm_h * 0.1]]), angle)[0] + centre
    tt = tb + _rot(np.array([[side * palm_w * 0.55, -palm_h * 0.45]]), angle)[0]
    cv2.line(m, _pt(tb), _pt(tt), 255, max(1, int(round(finger_w * 1.15))), cv2.LINE_AA)
    # Wrist leaving the image towards the hand's base.
    wr = centre + _rot(np.array([[0.0, palm_h * 1.6]]), angle)[0]
    cv2.line(m, _pt(centre), _pt(wr), 255, max(1, int(round(palm_w * 0.8))), cv2.LINE_AA)
    return m, gaps, tips


@register_occluder("hand")
def hand(rng: np.random.Generator, g: FaceGeometry, rgb: np.ndarray) -> Occluder:
    shape = rgb.shape[:2]
    iod = g.iod
    placement = ["mouth", "cheek", "eye"][int(rng.integers(3))]
    palm_w = iod * rng.uniform(0.7, 0.95)
    side = 1 if rng.random() < 0.5 else -1
    sidev = np.array([-g.up[1], g.up[0]])
    if placement == "mouth":
        centre = g.mouth + sidev * side * rng.uniform(0.0, 0.25) * iod
        angle = g.angle + side * rng.uniform(60, 110)        # fingers across the mouth
    elif placement == "cheek":
        eye = g.eye_r if side > 0 else g.eye_l
        centre = (eye + g.mouth) / 2 + sidev * side * rng.uniform(0.25, 0.45) * iod
        angle = g.angle + side * rng.uniform(-10, 25)         # fingers up along the cheek
    else:
        eye = g.eye_r if side > 0 else g.eye_l
        centre = eye - g.up * rng.uniform(0.2, 0.45) * iod
        angle = g.angle + side * rng.uniform(-20, 30)
    m, gaps, _ = _hand_mask(shape, centre, angle, palm_w, rng)
    tone = _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 10)
    layer = _textured(rng, shape, tone, 8)
    # Shading: darker towards the hand's edges (distance to the outline), finger gaps darker.
    dist = cv2.distanceTransform((m > 127).astype(np.uint8), cv2.DIST_L2, 3)
    shade = 0.72 + 0.28 * np.clip(dist / max(iod * 0.12, 1.0), 0, 1)
    layer = layer * shade[..., None] * (1 - 0.35 * _feather(gaps, 0.6))[..., None]
    alpha = _feather(m, _sigma(shape, rng, 0.003, 0.006))
    return Occluder(np.clip(layer, 0, 255).astype(np.float32), alpha,
                    {"placement": placement, "side": "right" if side > 0 else "left"})


# --- hair ---------------------------------------------------------------------------------------


@register_occluder("hair_strands")
def hair_strands(rng: np.random.Generator, g: FaceGeometry, rgb: np.ndarray) -> Occluder:
    shape = rgb.shape[:2]
    iod, up = g.iod, g.up
    x0, y0, x1, _ = g.box
    m = np.zeros(shape, np.uint8)
    brow_y = g.eyes_mid - up * 0.0 + up * 0.3 * iod      # the brow line
    # Which stretch of the forehead the fringe falls over.
    if rng.random() < 0.5:
        lo, hi = x0, x1
    else:
        mid = (x0 + x1) / 2
        lo, hi = (x0, mid + 0.2 * iod) if rng.random() < 0.5 else (mid - 0.2 * iod, x1)
    n = int(rng.integers(30, 70))
    width = max(1, int(round(iod * rng.uniform(0.04, 0.08))))
    drift = rng.normal(0, 0.25 * iod)           # the fringe's common sweep
    bend = rng.normal(0, 0.15 * iod)
    t = np.linspace(0, 1, 12)[:, None]
    for _ in range(n):
        xs = rng.uniform(lo, hi)
        start = np.array([xs, min(y0, brow_y[1]) - rng.uniform(0.3, 0.8) * iod])
        end = np.array([xs + drift + rng.normal(0, 0.06 * iod),
                        brow_y[1] + (xs - g.eyes_mid[0]) * np.tan(np.radians(g.angle)) + rng.uniform(-0.1, 0.3) * iod])
        ctrl = (start + end) / 2 + np.array([bend + rng.normal(0, 0.05 * iod), 0])
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t ** 2 * end
        cv2.polylines(m, [np.round(curve).astype(np.int32)], False, 255, width, cv2.LINE_AA)
    col = _jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 10)
    layer = _textured(rng, shape, col, 14)
    alpha = _feather(m, 0.5) * rng.uniform(0.9, 1.0)
    return Occluder(layer, alpha, {"placement": "brows"})


# --- anywhere -----------------------------------------------------------------------------------


def _random_point(rng: np.random.Generator, g: FaceGeometry) -> np.ndarray:
    x0, y0, x1, y1 = g.box
    return np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])


@register_occluder("object")
def random_object(rng: np.random.Generator, g: FaceGeometry, rgb: np.ndarray) -> Occluder:
    shape = rgb.shape[:2]
    iod = g.iod
    c = _random_point(rng, g)
    size = iod * rng.uniform(0.5, 1.1)
    kind = ["ball", "phone", "cup", "polygon"][int(rng.integers(4))]
    m = np.zeros(shape, np.uint8)
    ang = rng.uniform(-40, 40)
    if kind == "ball":
        cv2.circle(m, _pt(c), max(1, int(size * 0.6)), 255, -1, cv2.LINE_AA)
    elif kind == "phone":
        box = cv2.boxPoints(((float(c[0]), float(c[1])), (float(size * 0.9), float(size * 1.7)), ang))
        cv2.fillPoly(m, [np.round(box).astype(np.int32)], 255, cv2.LINE_AA)
    elif kind == "cup":
        body = cv2.boxPoints(((float(c[0]), float(c[1])), (float(size), float(size * 1.2)), ang * 0.3))
        cv2.fillPoly(m, [np.round(body).astype(np.int32)], 255, cv2.LINE_AA)
        cv2.ellipse(m, _pt(c + _rot([[size * 0.55, 0]], ang * 0.3)[0]), _ax(size * 0.3, size * 0.35), ang * 0.3,
                    0, 360, 255, max(1, int(size * 0.1)), cv2.LINE_AA)
    else:
        k = int(rng.integers(3, 7))
        th = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = size * rng.uniform(0.4, 0.8, k)
        poly = c + np.stack([np.cos(th) * r, np.sin(th) * r], 1)
        cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 255, cv2.LINE_AA)
    col = rng.uniform(10, 245, 3).astype(np.float32)
    layer = _textured(rng, shape, col, 20)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 1.15 - 0.3 * np.clip(np.hypot(xx - c[0] + size * 0.3, yy - c[1] + size * 0.3) / (size * 1.5), 0, 1)
    layer = np.clip(layer * light[..., None], 0, 255)
    return Occluder(layer, _feather(m, _sigma(shape, rng, 0.002, 0.006)), {"placement": "random", "shape": kind})


@register_occluder("block")
def block(rng: np.random.Generator, g: FaceGeometry, rgb: np.ndarray) -> Occluder:
    shape = rgb.shape[:2]
    x0, y0, x1, y1 = g.box
    fw, fh = x1 - x0, y1 - y0
    c = _random_point(rng, g)
    w, h = fw * rng.uniform(0.25, 0.6), fh * rng.uniform(0.2, 0.5)
    box = cv2.boxPoints(((float(c[0]), float(c[1])), (float(w), float(h)), float(rng.uniform(-20, 20))))
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(box).astype(np.int32)], 255, cv2.LINE_AA)
    if rng.random() < 0.5:
        layer = _textured(rng, shape, rng.uniform(0, 255, 3), 4)
        fill = "solid"
    else:
        layer = np.clip(rng.normal(128, 60, (*shape, 3)), 0, 255).astype(np.float32)
        fill = "noise"
    return Occluder(layer, _feather(m, _sigma(shape, rng, 0.001, 0.004)), {"placement": "random", "fill": fill})


@register_occluder("shadow")
def shadow(rng: np.random.Generator, g: FaceGeometry, rgb: np.ndarray) -> Occluder:
    shape = rgb.shape[:2]
    h, w = shape
    side = 1 if rng.random() < 0.5 else -1
    centre = (g.eyes_mid + g.mouth) / 2 + np.array([rng.normal(0, 0.08 * g.iod), 0])
    a = np.radians(g.angle + rng.uniform(-15, 15))
    normal = np.array([np.cos(a), np.sin(a)]) * side           # points into the shadowed half
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = (xx - centre[0]) * normal[0] + (yy - centre[1]) * normal[1]
    soft = g.iod * rng.uniform(0.06, 0.2)
    strength = rng.uniform(0.6, 0.85)
    alpha = (strength / (1 + np.exp(-d / max(soft, 0.5)))).astype(np.float32)
    # The shadowed face keeps its texture: the layer is the image itself, darkened and cooled.
    layer = rgb.astype(np.float32) * rng.uniform(0.05, 0.2) * np.array([0.9, 0.95, 1.1], np.float32)
    return Occluder(np.clip(layer, 0, 255), alpha,
                    {"placement": "half_face", "side": "right" if side > 0 else "left"})
