"""Rasterise one parametric face: image, 11-class LaPa-order parsing map, landmarks, box.

Each region is one polygon in pixel space, drawn twice from the same vertices: anti-aliased
into the colour image (OpenCV ``LINE_AA`` with 4 bits of sub-pixel precision) and hard-edged
into the label map, so the parsing map and the landmarks agree by construction. Shading is a
Lambert term on a head ellipsoid ray-cast under the same pose, plus blurred occlusion
shading (eye sockets, the nose's shadow side and cast shadow, under the lip and chin).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image

from . import face as F

# LaPa 11-class order. "left"/"right" are as seen in the image (like MTCNN's 5 points).
PARSING_CLASSES = (
    "background", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "nose",
    "upper_lip", "inner_mouth", "lower_lip", "hair",
)
_L = {name: i for i, name in enumerate(PARSING_CLASSES)}

JPEG_SUBSAMPLING = 2  # 4:2:0, fixed
_SUB = 16  # OpenCV shift=4


@dataclass(frozen=True)
class RenderStyle:
    """Ranges the scene sampler draws from. ``DEFAULT`` is the main set, ``HARD`` a harder
    held-out split: weaker expressions, more pose, heavier degradations, more stray actions."""

    intensity: tuple[float, float] = (0.45, 1.0)
    yaw: float = 18.0
    pitch: float = 10.0
    roll: float = 15.0
    face_half_width: tuple[float, float] = (0.19, 0.27)  # fraction of the image size
    offset: float = 0.07
    nuisance_p: float = 0.15
    nuisance_w: float = 0.2
    noise_sigma: tuple[float, float] = (1.0, 5.0)
    blur_sigma: tuple[float, float] = (0.0, 0.7)
    jpeg_quality: tuple[int, int] = (75, 95)
    ambient: tuple[float, float] = (0.35, 0.6)
    exposure: tuple[float, float] = (0.85, 1.15)


DEFAULT = RenderStyle()
HARD = RenderStyle(
    intensity=(0.15, 0.5),
    yaw=32.0,
    pitch=18.0,
    roll=28.0,
    face_half_width=(0.16, 0.28),
    offset=0.1,
    nuisance_p=0.35,
    nuisance_w=0.35,
    noise_sigma=(3.0, 10.0),
    blur_sigma=(0.3, 1.4),
    jpeg_quality=(45, 80),
    ambient=(0.2, 0.55),
    exposure=(0.7, 1.25),
)
STYLES = {"default": DEFAULT, "hard": HARD}


@dataclass
class Scene:
    label: int
    intensity: float
    aus: dict
    identity: F.Identity
    yaw: float
    pitch: float
    roll: float
    face_half_width: float  # px per face unit
    centre: tuple[float, float]
    light_dir: tuple[float, float, float]
    ambient: float
    light_tint: tuple[float, float, float]
    exposure: float
    background: str
    clothes_rgb: tuple[float, float, float]
    gaze: tuple[float, float]
    teeth_rgb: tuple[float, float, float]
    noise_sigma: float
    blur_sigma: float
    jpeg_quality: int
    seed_bg: int

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "identity"}
        d["identity"] = self.identity.to_json()
        return d


def sample_scene(rng: np.random.Generator, label: int, size: int, style: RenderStyle = DEFAULT) -> Scene:
    u = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    idt = F.sample_identity(rng)
    intensity = u(*style.intensity) if label != 7 else 0.0
    aus = F.expression_aus(label, intensity, rng)
    # stray actions make the classes overlap a little (real faces are never pure prototypes)
    for name in F.AU_NAMES:
        if rng.random() < style.nuisance_p:
            aus[name] = aus.get(name, 0.0) + u(0.0, style.nuisance_w)
    lx, ly = rng.normal(0, 0.55, 2)
    l = np.array([lx, ly - 0.25, u(0.6, 1.2)])
    l /= np.linalg.norm(l)
    half = u(*style.face_half_width) * size
    off = style.offset * size
    return Scene(
        label=int(label),
        intensity=intensity,
        aus={k: float(v) for k, v in sorted(aus.items())},
        identity=idt,
        yaw=u(-style.yaw, style.yaw),
        pitch=u(-style.pitch, style.pitch),
        roll=u(-style.roll, style.roll),
        face_half_width=half,
        centre=(size / 2 + u(-off, off), size / 2 + u(-off, off)),
        light_dir=tuple(float(x) for x in l),
        ambient=u(*style.ambient),
        light_tint=tuple(float(x) for x in 1 + rng.normal(0, 0.05, 3)),
        exposure=u(*style.exposure),
        background=str(rng.choice(["plain", "gradient", "clutter"], p=[0.25, 0.35, 0.4])),
        clothes_rgb=tuple(float(x) for x in rng.uniform(20, 235, 3)),
        gaze=(u(-0.02, 0.02), u(-0.01, 0.01)),
        teeth_rgb=tuple(float(x) for x in np.array([238, 232, 215]) * u(0.85, 1.0)),
        noise_sigma=u(*style.noise_sigma),
        blur_sigma=u(*style.blur_sigma),
        jpeg_quality=int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1)),
        seed_bg=int(rng.integers(0, 2**31 - 1)),
    )


@dataclass
class Rendered:
    image: np.ndarray  # HxWx3 uint8 RGB, before JPEG
    jpeg: bytes
    parsing: np.ndarray  # HxW uint8, LaPa order
    points68: np.ndarray  # 68x2 float32, pixels
    points5: np.ndarray  # 5x2 float32
    box: np.ndarray  # x0, y0, x1, y1 float32


# --------------------------------------------------------------------------------------------
# drawing helpers
# --------------------------------------------------------------------------------------------


def _ipts(p: np.ndarray, origin=(0, 0)) -> np.ndarray:
    return np.round((np.asarray(p)[:, :2] - np.asarray(origin, dtype=np.float64)) * _SUB).astype(np.int32)


def _roi(polys, shape, pad=3):
    allp = np.concatenate([np.asarray(p)[:, :2] for p in polys])
    x0 = int(max(0, np.floor(allp[:, 0].min()) - pad))
    y0 = int(max(0, np.floor(allp[:, 1].min()) - pad))
    x1 = int(min(shape[1], np.ceil(allp[:, 0].max()) + pad))
    y1 = int(min(shape[0], np.ceil(allp[:, 1].max()) + pad))
    return x0, y0, x1, y1


class _Canvas:
    def __init__(self, size: int):
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.cover = np.zeros((size, size), np.float32)
        self.label = np.zeros((size, size), np.uint8)
        self.shape = (size, size)

    def fill(self, polys, color, label: int | None = None, alpha: float = 1.0, cover=True, clip=None):
        """Anti-aliased fill into rgb (and cover); hard fill into the label map."""
        polys = [np.asarray(p) for p in polys]
        x0, y0, x1, y1 = _roi(polys, self.shape)
        if x1 <= x0 or y1 <= y0:
            return None
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(m, [_ipts(p, (x0, y0)) for p in polys], 255, cv2.LINE_AA, shift=4)
        a = m.astype(np.float32) * (alpha / 255.0)
        if clip is not None:
            a *= clip[y0:y1, x0:x1]
        self._blend(a, color, x0, y0, x1, y1, cover)
        if label is not None:
            lab = self.label[y0:y1, x0:x1]
            cv2.fillPoly(lab, [_ipts(p, (x0, y0)) for p in polys], int(label), cv2.LINE_8, shift=4)
        return a, (x0, y0, x1, y1)

    def line(self, pts, color, thick: int, alpha: float = 1.0, closed=False, clip=None):
        pts = np.asarray(pts)
        x0, y0, x1, y1 = _roi([pts], self.shape, pad=thick + 3)
        if x1 <= x0 or y1 <= y0:
            return
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.polylines(m, [_ipts(pts, (x0, y0))], closed, 255, max(1, int(thick)), cv2.LINE_AA, shift=4)
        a = m.astype(np.float32) * (alpha / 255.0)
        if clip is not None:
            a *= clip[y0:y1, x0:x1]
        self._blend(a, color, x0, y0, x1, y1, cover=False)

    def _blend(self, a, color, x0, y0, x1, y1, cover):
        sub = self.rgb[y0:y1, x0:x1]
        col = np.asarray(color, np.float32)
        if col.ndim == 3:
            col = col[y0:y1, x0:x1]
        sub += (col - sub) * a[..., None]
        if cover:
            c = self.cover[y0:y1, x0:x1]
            np.maximum(c, a, out=c)


def _mask(size, polys, aa=True) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [_ipts(p) for p in polys], 255, cv2.LINE_AA if aa else cv2.LINE_8, shift=4)
    return m.astype(np.float32) / 255.0


def _smooth_noise(rng, size, cells, aniso=(1, 1)) -> np.ndarray:
    n = rng.standard_normal((max(2, cells // aniso[0]), max(2, cells // aniso[1]))).astype(np.float32)
    return cv2.resize(n, (size, size), interpolation=cv2.INTER_CUBIC)


def _background(sc: Scene, size: int) -> np.ndarray:
    rng = np.random.default_rng(sc.seed_bg)
    c0 = rng.uniform(15, 240, 3)
    if sc.background == "plain":
        bg = np.broadcast_to(c0, (size, size, 3)).astype(np.float32).copy()
        bg *= (1 + 0.04 * _smooth_noise(rng, size, 4))[..., None]
    elif sc.background == "gradient":
        c1 = rng.uniform(15, 240, 3)
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        t = np.clip(0.5 + (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang), 0, 1)
        bg = (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.float32)
    else:
        bg = np.broadcast_to(c0, (size, size, 3)).astype(np.float32).copy()
        for _ in range(int(rng.integers(8, 25))):
            col = tuple(float(x) for x in rng.uniform(0, 255, 3))
            kind = rng.integers(0, 3)
            x, y = rng.uniform(-0.1, 1.1, 2) * size
            r = rng.uniform(0.03, 0.3) * size
            if kind == 0:
                w, h = rng.uniform(0.05, 0.5, 2) * size
                cv2.rectangle(bg, (int(x), int(y)), (int(x + w), int(y + h)), col, -1, cv2.LINE_AA)
            elif kind == 1:
                cv2.ellipse(bg, (int(x), int(y)), (int(r), int(r * rng.uniform(0.3, 1))),
                            float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
            else:
                x2, y2 = rng.uniform(-0.1, 1.1, 2) * size
                cv2.line(bg, (int(x), int(y)), (int(x2), int(y2)), col, int(rng.integers(1, max(2, size // 40))),
                         cv2.LINE_AA)
        bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(0.5, 3.0) * size / 256)
        bg *= (1 + 0.08 * _smooth_noise(rng, size, 24))[..., None]
    return bg


def _head_shading(sc: Scene, size: int, R, s, t2, axes, centre3, low=48) -> np.ndarray:
    """Lambert shading of the head ellipsoid, ray-cast orthographically at low resolution."""
    g = (np.arange(low, dtype=np.float64) + 0.5) * size / low
    xx, yy = np.meshgrid(g, g)
    q = np.stack([(xx - t2[0]) / s, (yy - t2[1]) / s, np.zeros_like(xx)], -1)
    a = (q @ R - centre3) / axes  # R^T q, in the ellipsoid's unit frame
    b = (R.T @ np.array([0.0, 0.0, 1.0])) / axes
    bb = b @ b
    ab = a @ b
    aa = (a * a).sum(-1)
    disc = ab**2 - bb * (aa - 1)
    inside = disc > 0
    tt = (-ab + np.sqrt(np.maximum(disc, 0))) / bb
    hit = a + tt[..., None] * b
    n_local = hit / axes
    n = n_local @ R.T
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-9
    lam = np.clip(n @ np.asarray(sc.light_dir), 0, 1)
    k = 1.0 - sc.ambient
    flat = sc.ambient + k * 0.75 * sc.light_dir[2]
    shade = np.where(inside, sc.ambient + k * lam, flat).astype(np.float32)
    return cv2.resize(shade, (size, size), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------------------------
# the renderer
# --------------------------------------------------------------------------------------------


def _lid_thickness(u: float) -> int:
    return max(1, int(round(0.028 * u)))


def _ellipse(c, rx, ry, roll_deg, n):
    """``n`` points of an ellipse around ``c`` with radii ``rx``, ``ry``, turned by the head roll."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rot = np.deg2rad(roll_deg)
    el = np.stack([rx * np.cos(t), ry * np.sin(t)], 1)
    return c + el @ np.array([[np.cos(rot), np.sin(rot)], [-np.sin(rot), np.cos(rot)]])


def _place(sc: Scene):
    """Pose the face and put its box centre on ``sc.centre``: the 68 points and auxiliary
    polygons in pixels, the face outline, and the projection (R, scale, 2-D shift)."""
    idt = sc.identity
    scale = np.array([idt.width, idt.height])
    p3 = F.apply_aus(F.identity_points(idt), sc.aus, scale)
    aux = F.aux_points(p3, idt)
    R = F.rotation(sc.yaw, sc.pitch, sc.roll)
    s = sc.face_half_width

    def proj(p, t2):
        q = np.asarray(p, np.float64) @ R.T
        return q[:, :2] * s + t2

    face_poly3 = np.concatenate([p3[F.JAW], aux["forehead"]])
    fp = proj(face_poly3, np.zeros(2))
    t2 = np.asarray(sc.centre) - 0.5 * (fp.min(0) + fp.max(0))
    A = {k: proj(v, t2) for k, v in aux.items()}
    return proj(p3, t2), A, proj(face_poly3, t2), (R, s, t2)


def _paint_head(cv_: _Canvas, sc: Scene, A, face_poly, rng, size: int) -> None:
    """Clothes, neck, ears, hair, face skin, facial hair and brows (draws from ``rng``)."""
    idt = sc.identity
    skin = np.asarray(idt.skin_rgb, np.float32)
    hair = np.asarray(idt.hair_rgb, np.float32)
    cv_.fill([A["torso"]], sc.clothes_rgb)
    cv_.fill([A["neck"]], skin * 0.93)
    cv_.fill([A["ear_l"]], skin * 0.97, label=_L["skin"])
    cv_.fill([A["ear_r"]], skin * 0.97, label=_L["skin"])
    # hair mass behind the face
    if idt.hair_style != "bald":
        streak = 1 + 0.18 * _smooth_noise(rng, size, max(8, size // 6), aniso=(8, 1))
        cv_.fill([A["hair"]], hair[None, None] * streak[..., None], label=_L["hair"])
    # face skin, with a little low-frequency blotchiness
    blot = 1 + 0.035 * _smooth_noise(rng, size, 10)
    cv_.fill([face_poly], skin[None, None] * blot[..., None], label=_L["skin"])

    # facial hair (labelled skin, see the package docstring)
    if idt.beard in ("beard", "stubble"):
        grain = 1 + 0.12 * _smooth_noise(rng, size, max(8, size // 2))
        col = hair[None, None] * grain[..., None]
        cv_.fill([A["beard"]], col, alpha=0.8 if idt.beard == "beard" else 0.3,
                 clip=_mask(size, [face_poly]))
    if idt.beard in ("beard", "moustache"):
        cv_.fill([A["moustache"]], hair, alpha=0.9)

    brow_col = np.minimum(hair, skin * 0.45) * 0.9 + 8
    cv_.fill([A["brow_l"]], brow_col, label=_L["left_brow"], alpha=0.92)
    cv_.fill([A["brow_r"]], brow_col, label=_L["right_brow"], alpha=0.92)


def _clip_of(cv_: _Canvas, res) -> np.ndarray:
    """A full-size coverage mask from what ``_Canvas.fill`` returned, to clip the parts inside."""
    m = np.zeros(cv_.shape, np.float32)
    a, (x0, y0, x1, y1) = res
    m[y0:y1, x0:x1] = a
    return m


def _paint_eyes(cv_: _Canvas, sc: Scene, p68, u: float) -> None:
    idt = sc.identity
    skin = np.asarray(idt.skin_rgb, np.float32)
    lid_t = _lid_thickness(u)
    for grp, lab in ((F.EYE_L, "left_eye"), (F.EYE_R, "right_eye")):
        e = p68[grp]
        # the eyelid crease above the eye
        crease = e[[0, 1, 2, 3]] + np.array([0, -0.055 * u])
        cv_.line(crease, skin * 0.7, max(1, lid_t - 1), alpha=0.5)
        res = cv_.fill([e], (236, 232, 226), label=_L[lab])
        if res is None:
            continue
        eye_mask = _clip_of(cv_, res)
        width = np.linalg.norm(e[3] - e[0])
        c = e.mean(0) + np.asarray(sc.gaze) * u
        r_iris = 0.36 * width
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        circ = lambda r: c + r * np.stack([np.cos(t), np.sin(t)], 1)  # noqa: E731
        cv_.fill([circ(r_iris)], idt.eye_rgb, clip=eye_mask, cover=False)
        cv_.fill([circ(r_iris * 0.45)], (12, 10, 10), clip=eye_mask, cover=False)
        cv_.fill([circ(r_iris * 0.14) + np.array([r_iris * 0.25, -r_iris * 0.3])], (250, 250, 250),
                 clip=eye_mask, cover=False, alpha=0.8)
        # lashes on the upper lid, a softer lower lid
        cv_.line(e[[0, 1, 2, 3]], (20, 14, 12), lid_t + 1)
        cv_.line(e[[3, 4, 5, 0]], skin * 0.55, max(1, lid_t - 1), alpha=0.7)


def _paint_nose_and_mouth(cv_: _Canvas, sc: Scene, p68, A, u: float) -> None:
    idt = sc.identity
    skin = np.asarray(idt.skin_rgb, np.float32)
    # nose region (label only) and nostrils
    cv_.fill([A["nose"]], (0, 0, 0), label=_L["nose"], alpha=0.0, cover=False)
    for k in ("nostril_l", "nostril_r"):
        cv_.fill([_ellipse(A[k][0], 0.05 * u * idt.nose_w, 0.022 * u, sc.roll, 14)], skin * 0.28, alpha=0.9)

    # mouth: inner mouth, teeth, lips
    inner = p68[F.MOUTH_INNER]
    res = cv_.fill([inner], (70, 18, 22), label=_L["inner_mouth"])
    if res is not None:
        mouth_mask = _clip_of(cv_, res)
        up = p68[F.UPPER_LIP_INNER]
        opening = float(np.mean(p68[[67, 66, 65], 1] - p68[[61, 62, 63], 1]))
        tooth = min(0.07 * u, 0.5 * max(opening, 0))
        teeth = np.concatenate([up, (up + np.array([0, tooth]))[::-1]])
        cv_.fill([teeth], sc.teeth_rgb, clip=mouth_mask, cover=False)
    upper = np.concatenate([p68[F.UPPER_LIP_OUTER], p68[F.UPPER_LIP_INNER][::-1]])
    lower = np.concatenate([p68[F.LOWER_LIP_OUTER], p68[F.LOWER_LIP_INNER][::-1]])
    lip = np.asarray(idt.lip_rgb, np.float32)
    cv_.fill([upper], lip * 0.92, label=_L["upper_lip"])
    cv_.fill([lower], lip, label=_L["lower_lip"])
    # the lip parting line runs into the commissures, where the corners read as corners
    cv_.line(p68[[48, 60, 61, 62, 63, 64, 54]], lip * 0.35, max(1, _lid_thickness(u) - 1), alpha=0.85)
    for k in (48, 54):
        cv_.fill([p68[k] + 0.018 * u * np.stack([np.cos(np.linspace(0, 6.2, 10)), np.sin(np.linspace(0, 6.2, 10))], 1)],
                 lip * 0.4, alpha=0.6, cover=False)


def _fill_band(dst, edge, depth, value) -> None:
    """Fill the band between the polyline ``edge`` and itself moved down by ``depth`` px."""
    cv2.fillPoly(dst, [np.round(np.concatenate([edge, edge[::-1] + np.array([0, depth])])).astype(np.int32)], value)


def _occlusion_darkening(sc: Scene, size: int, p68, A, u: float) -> np.ndarray:
    """Blurred darkening where the ellipsoid's Lambert term is blind: eye sockets, the nose's
    shadow side and cast shadow, under the lower lip and the chin."""
    dark = np.zeros((size, size), np.float32)
    lx = sc.light_dir[0]
    for grp in (F.EYE_L, F.EYE_R):
        c = p68[grp].mean(0)
        cv2.ellipse(dark, (int(c[0]), int(c[1] - 0.03 * u)), (int(0.2 * u), int(0.13 * u)),
                    float(sc.roll), 0, 360, 0.22, -1)
    side = 1 if lx < 0 else -1  # the side facing away from the light
    nb = p68[[27, 28, 29, 30]]
    ref = A["nose"][2 if side < 0 else 8]
    cv2.fillPoly(dark, [np.round(np.concatenate([nb, [ref], [p68[31 if side < 0 else 35]]])).astype(np.int32)],
                 0.18 + 0.25 * abs(lx))
    _fill_band(dark, p68[[31, 32, 33, 34, 35]] + np.array([-lx * 0.06 * u, 0.03 * u]), 0.07 * u, 0.35)
    _fill_band(dark, p68[[55, 56, 57, 58, 59]], 0.08 * u, 0.18)
    _fill_band(dark, p68[3:14], 0.35 * u, 0.4)
    return cv2.GaussianBlur(dark, (0, 0), 0.06 * u)


def _expression_lines(sc: Scene, size: int, p68, A, u: float) -> np.ndarray:
    """Brow knit (AU4), nose wrinkles (AU9) and nasolabial folds (AU12), kept sharp."""
    fine = np.zeros((size, size), np.float32)
    au = sc.aus
    lid_t = _lid_thickness(u)
    mid = 0.5 * (p68[21] + p68[22])
    if au.get("AU4", 0) > 0.2:
        for dx in (-0.04, 0.04):
            a0 = mid + np.array([dx * u, -0.02 * u])
            cv2.line(fine, tuple(int(v) for v in a0), tuple(int(v) for v in a0 + np.array([0, 0.13 * u])),
                     0.35 * min(1, au["AU4"]), max(1, lid_t - 1), cv2.LINE_AA)
    if au.get("AU9", 0) > 0.2:
        for k in range(3):
            y = p68[27, 1] + (0.03 + 0.045 * k) * u
            cv2.line(fine, (int(p68[27, 0] - 0.07 * u), int(y)), (int(p68[27, 0] + 0.07 * u), int(y)),
                     0.3 * min(1, au["AU9"]), 1, cv2.LINE_AA)
    if au.get("AU12", 0) > 0.25:
        for a_, b_ in ((31, 48), (35, 54)):
            pa = A["nose"][2 if a_ == 31 else 8]
            pb = p68[b_] + (p68[b_] - p68[51]) * 0.12
            mid2 = 0.5 * (pa + pb) + (pb - p68[51]) * 0.06
            curve = np.array([pa, mid2, pb])
            cv2.polylines(fine, [np.round(curve).astype(np.int32)], False, 0.3 * min(1, au["AU12"]),
                          max(1, lid_t), cv2.LINE_AA)
    return cv2.GaussianBlur(fine, (0, 0), max(0.6, 0.012 * u))


def _shading(sc: Scene, size: int, p68, A, u: float, projection) -> np.ndarray:
    """The multiplicative light map: head Lambert term, occlusion darkening, expression lines
    and the highlight along the nose bridge."""
    idt = sc.identity
    R, s, t2 = projection
    axes = np.array([1.02 * idt.width, 1.25 * idt.height, 0.85])
    centre3 = np.array([0.0, 0.05 * idt.height, -0.3])
    shade = _head_shading(sc, size, R, s, t2, axes, centre3)
    dark = _occlusion_darkening(sc, size, p68, A, u)
    fine = _expression_lines(sc, size, p68, A, u)
    hi = np.zeros((size, size), np.float32)
    cv2.polylines(hi, [np.round(p68[[27, 28, 29, 30]]).astype(np.int32)], False, 0.12, max(1, int(0.05 * u)))
    hi = cv2.GaussianBlur(hi, (0, 0), 0.04 * u)
    return shade * (1 - dark - fine) + hi * sc.light_dir[2]


def _paint_glasses(img: np.ndarray, sc: Scene, size: int, p68, u: float) -> np.ndarray:
    """Lenses and frames over the shaded image (they are shaded like the rest, so drawn last)."""
    idt = sc.identity
    gl = _Canvas(size)
    gl.rgb[:] = img
    ipd = np.linalg.norm(p68[F.EYE_R].mean(0) - p68[F.EYE_L].mean(0))
    for grp in (F.EYE_L, F.EYE_R):
        rim = _ellipse(p68[grp].mean(0), 0.36 * ipd, 0.24 * ipd, sc.roll, 28)
        gl.fill([rim], (200, 215, 225), alpha=0.12, cover=False)
        gl.line(rim, idt.glasses_rgb, max(1, int(round(0.03 * u))), closed=True)
    bridge = np.array([p68[39] + np.array([0.02 * u, -0.02 * u]), p68[27] + np.array([0, 0.02 * u]),
                       p68[42] + np.array([-0.02 * u, -0.02 * u])])
    gl.line(bridge, idt.glasses_rgb, max(1, int(round(0.03 * u))))
    return gl.rgb


def _sensor(img: np.ndarray, sc: Scene, size: int, rng) -> tuple[np.ndarray, bytes]:
    """Defocus, noise (draws from ``rng``), quantisation and JPEG."""
    if sc.blur_sigma > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), sc.blur_sigma * size / 256)
    img = img + rng.normal(0, sc.noise_sigma, img.shape).astype(np.float32)
    img8 = np.clip(np.round(img), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, format="JPEG", quality=int(sc.jpeg_quality), subsampling=JPEG_SUBSAMPLING,
                               optimize=False, progressive=False)
    return img8, buf.getvalue()


def render_face(sc: Scene, size: int) -> Rendered:
    # one generator for the face's own noise; the order of its draws (hair, skin, beard,
    # sensor) is part of the output, so the painters run in this order
    rng = np.random.default_rng(sc.seed_bg + 1)
    p68, A, face_poly, projection = _place(sc)
    u = sc.face_half_width  # px per face unit

    cv_ = _Canvas(size)
    _paint_head(cv_, sc, A, face_poly, rng, size)
    _paint_eyes(cv_, sc, p68, u)
    _paint_nose_and_mouth(cv_, sc, p68, A, u)

    total = _shading(sc, size, p68, A, u, projection)
    person = cv_.rgb * np.clip(total, 0.05, 1.6)[..., None]
    bg = _background(sc, size)
    cover = cv_.cover[..., None]
    img = bg * (1 - cover) + person * cover
    if sc.identity.glasses:
        img = _paint_glasses(img, sc, size, p68, u)
    img = img * np.asarray(sc.light_tint, np.float32) * sc.exposure
    img8, jpeg = _sensor(img, sc, size, rng)

    box = np.array([*face_poly.min(0), *face_poly.max(0)], np.float32)
    box[[0, 2]] = np.clip(box[[0, 2]], 0, size)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, size)
    return Rendered(
        image=img8,
        jpeg=jpeg,
        parsing=cv_.label,
        points68=p68.astype(np.float32),
        points5=F.five_from_68(p68),
        box=box,
    )
