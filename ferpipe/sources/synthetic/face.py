"""The parametric face: a shallow 3D point model, identity, expressions (action units), pose.

Units are "face units": half the cheek-to-cheek face width is 1, x points to the image right,
y points down, z points towards the camera. The 68 landmarks follow the iBUG 300-W order with
image-left/image-right naming for the frontal face (point 0 is on the image left, 36-41 is the
image-left eye). Everything else the drawing needs (hairline, head outline, ears, nose outline,
brow lower edges, neck) are *auxiliary* points carried through the same deformation and the
same projection, so landmarks and parsing regions always come from one geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ferpipe.ibug68 import FLIP as IBUG68_FLIP

# RAF-DB native labels (1-based) and names; the archive writes these numbers.
RAF_LABELS: dict[int, str] = {
    1: "Surprise",
    2: "Fear",
    3: "Disgust",
    4: "Happiness",
    5: "Sadness",
    6: "Anger",
    7: "Neutral",
}

# --------------------------------------------------------------------------------------------
# 68-point template (frontal, neutral, average identity)
# --------------------------------------------------------------------------------------------

_JAW_HALF = np.array(
    [  # x, y, z for points 0..8 (image-left half and the chin)
        [-1.00, -0.05, -0.45],
        [-0.99, 0.15, -0.42],
        [-0.96, 0.35, -0.36],
        [-0.91, 0.54, -0.28],
        [-0.83, 0.71, -0.18],
        [-0.71, 0.86, -0.06],
        [-0.55, 0.98, 0.05],
        [-0.31, 1.07, 0.13],
        [0.00, 1.10, 0.16],
    ]
)
_BROW_L = np.array(  # 17..21, outer to inner
    [
        [-0.80, -0.36, -0.06],
        [-0.66, -0.45, 0.04],
        [-0.49, -0.485, 0.12],
        [-0.32, -0.465, 0.16],
        [-0.15, -0.41, 0.18],
    ]
)
_NOSE_BRIDGE = np.array([[0.0, -0.30, 0.20], [0.0, -0.15, 0.28], [0.0, 0.00, 0.37], [0.0, 0.16, 0.47]])
_NOSE_BASE = np.array(
    [[-0.16, 0.24, 0.22], [-0.08, 0.27, 0.29], [0.0, 0.29, 0.33], [0.08, 0.27, 0.29], [0.16, 0.24, 0.22]]
)
_EYE_L = np.array(  # 36..41: outer corner, upper x2, inner corner, lower x2
    [
        [-0.53, -0.19, -0.02],
        [-0.44, -0.265, 0.06],
        [-0.31, -0.265, 0.08],
        [-0.22, -0.18, 0.10],
        [-0.31, -0.125, 0.08],
        [-0.44, -0.125, 0.06],
    ]
)
# Lip edges by their image-left halves, from the corner side to the midline (see _lip):
# points 48..51, 59 58 57, 60..62, 67 66.
_LIP_OUTER_UPPER = np.array([[-0.36, 0.55, 0.10], [-0.24, 0.49, 0.20], [-0.10, 0.45, 0.26], [0.00, 0.47, 0.27]])
_LIP_OUTER_LOWER = np.array([[-0.24, 0.62, 0.19], [-0.11, 0.665, 0.24], [0.00, 0.675, 0.25]])
_LIP_INNER_UPPER = np.array([[-0.30, 0.55, 0.13], [-0.10, 0.538, 0.24], [0.00, 0.540, 0.25]])
_LIP_INNER_LOWER = np.array([[-0.10, 0.556, 0.24], [0.00, 0.558, 0.25]])


def _mirror(p: np.ndarray) -> np.ndarray:
    q = p.copy()
    q[..., 0] *= -1
    return q


def _left_to_right(half: np.ndarray) -> np.ndarray:
    """A contour crossing the midline, from its image-left half (ending on the midline)."""
    return np.concatenate([half, _mirror(half[:-1])[::-1]])


def _lip(upper_half: np.ndarray, lower_half: np.ndarray) -> np.ndarray:
    """A lip contour in iBUG order (the upper edge from the image-left corner to the image-right
    one, then the lower edge back, right to left) from the image-left halves of its edges."""
    return np.concatenate([_left_to_right(upper_half), _left_to_right(lower_half)[::-1]])


def _template68() -> np.ndarray:
    jaw = _left_to_right(_JAW_HALF)  # 0..16
    brow_r = _mirror(_BROW_L)[::-1]  # 22..26 inner to outer
    eye_r = _mirror(_EYE_L)[[3, 2, 1, 0, 5, 4]]  # 42 inner, 43, 44, 45 outer, 46, 47
    pts = np.concatenate(
        [jaw, _BROW_L, brow_r, _NOSE_BRIDGE, _NOSE_BASE, _EYE_L, eye_r,
         _lip(_LIP_OUTER_UPPER, _LIP_OUTER_LOWER), _lip(_LIP_INNER_UPPER, _LIP_INNER_LOWER)]
    )
    assert pts.shape == (68, 3)
    return pts


TEMPLATE68 = _template68()

# Index groups (iBUG 68).
JAW = list(range(0, 17))
BROW_L = list(range(17, 22))  # image-left brow
BROW_R = list(range(22, 27))
NOSE_BRIDGE = list(range(27, 31))
NOSE_BASE = list(range(31, 36))
EYE_L = list(range(36, 42))  # image-left eye
EYE_R = list(range(42, 48))
MOUTH_OUTER = list(range(48, 60))
MOUTH_INNER = list(range(60, 68))
UPPER_LIP_OUTER = [48, 49, 50, 51, 52, 53, 54]
LOWER_LIP_OUTER = [54, 55, 56, 57, 58, 59, 48]
UPPER_LIP_INNER = [60, 61, 62, 63, 64]
LOWER_LIP_INNER = [64, 65, 66, 67, 60]


def five_from_68(p68: np.ndarray) -> np.ndarray:
    """MTCNN's 5 points from the 68: eye centres (mean of the 6 eye points), nose tip (30),
    mouth corners (48, 54). Order: image-left eye, image-right eye, nose, left/right mouth."""
    p68 = np.asarray(p68, dtype=np.float64)
    return np.stack(
        [p68[EYE_L].mean(0), p68[EYE_R].mean(0), p68[30], p68[48], p68[54]]
    ).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Action units: displacement fields on the 68 points (face units, intensity 1)
# --------------------------------------------------------------------------------------------


def _d(**moves: tuple[float, float]) -> dict[int, tuple[float, float]]:
    return {int(k[1:]): v for k, v in moves.items()}


def _sym(left: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """Mirror a displacement given for image-left points onto their image-right partners."""
    out = dict(left)
    for i, (dx, dy) in left.items():
        j = int(IBUG68_FLIP[i])
        if j != i:
            out[j] = (-dx, dy)
    return out


AU: dict[str, dict[int, tuple[float, float]]] = {
    # inner brow raiser
    "AU1": _sym(_d(p19=(0.0, -0.04), p20=(0.01, -0.075), p21=(0.01, -0.10), p18=(0.0, -0.015))),
    # outer brow raiser
    "AU2": _sym(_d(p17=(0.0, -0.10), p18=(0.0, -0.085), p19=(0.0, -0.05), p20=(0.0, -0.02))),
    # brow lowerer: down and knitted towards the midline
    "AU4": _sym(
        _d(p17=(0.0, 0.03), p18=(0.02, 0.05), p19=(0.03, 0.07), p20=(0.045, 0.085), p21=(0.05, 0.09))
    ),
    # upper lid raiser
    "AU5": _sym(_d(p37=(0.0, -0.065), p38=(0.0, -0.065), p36=(0.0, -0.01), p39=(0.0, -0.005))),
    # cheek raiser: lower lids pushed up
    "AU6": _sym(_d(p40=(0.0, -0.035), p41=(0.0, -0.04), p36=(0.0, -0.01), p1=(0.01, -0.01))),
    # lid tightener
    "AU7": _sym(_d(p40=(0.0, -0.025), p41=(0.0, -0.025), p37=(0.0, 0.015), p38=(0.0, 0.015))),
    # nose wrinkler (also pulls the inner brows down and lifts the upper lip a little)
    "AU9": _sym(
        _d(
            p31=(0.01, -0.05), p32=(0.0, -0.05), p33=(0.0, -0.045), p30=(0.0, -0.02),
            p21=(0.02, 0.05), p20=(0.01, 0.03), p50=(0.0, -0.03), p51=(0.0, -0.03),
            p61=(0.0, -0.025), p62=(0.0, -0.025),
        )
    ),
    # upper lip raiser
    "AU10": _sym(
        _d(
            p49=(0.0, -0.05), p50=(0.0, -0.08), p51=(0.0, -0.085), p61=(0.0, -0.08),
            p62=(0.0, -0.085), p48=(0.0, -0.01),
        )
    ),
    # lip corner puller (smile)
    "AU12": _sym(
        _d(
            p48=(-0.07, -0.13), p60=(-0.07, -0.12), p49=(-0.03, -0.05), p59=(-0.03, -0.06),
            p61=(-0.01, -0.02), p67=(-0.02, -0.03), p58=(-0.01, -0.015), p3=(-0.01, -0.01),
        )
    ),
    # lip corner depressor
    "AU15": _sym(
        _d(p48=(0.0, 0.11), p60=(0.0, 0.10), p49=(0.0, 0.035), p59=(0.0, 0.05), p61=(0.0, 0.015),
           p67=(0.0, 0.02))
    ),
    # chin raiser: lower lip and chin pushed up
    "AU17": _sym(
        _d(p58=(0.0, -0.03), p57=(0.0, -0.035), p66=(0.0, -0.01), p67=(0.0, -0.01),
           p7=(0.0, -0.03), p8=(0.0, -0.035), p6=(0.0, -0.015))
    ),
    # lip stretcher: corners pulled sideways, lips thinned
    "AU20": _sym(
        _d(p48=(-0.09, 0.03), p60=(-0.09, 0.03), p49=(-0.04, 0.02), p59=(-0.05, 0.0),
           p61=(-0.02, 0.01), p67=(-0.02, 0.0), p50=(0.0, 0.015), p58=(0.0, -0.015),
           p51=(0.0, 0.01), p57=(0.0, -0.01))
    ),
    # lip tightener / pressor: narrower, thinner lips
    "AU23": _sym(
        _d(p48=(0.05, 0.0), p60=(0.05, 0.0), p49=(0.03, 0.02), p50=(0.01, 0.025),
           p51=(0.0, 0.025), p59=(0.03, -0.02), p58=(0.01, -0.03), p57=(0.0, -0.03),
           p61=(0.02, 0.0), p67=(0.02, 0.0))
    ),
    # lips part
    "AU25": _sym(
        _d(p61=(0.0, -0.01), p62=(0.0, -0.012), p67=(0.0, 0.035), p66=(0.0, 0.04),
           p58=(0.0, 0.035), p57=(0.0, 0.04), p59=(0.0, 0.015))
    ),
    # jaw drop (large intensities give AU27-like mouth stretch)
    "AU26": _sym(
        _d(
            p67=(0.02, 0.29), p66=(0.0, 0.32), p58=(0.02, 0.30), p57=(0.0, 0.32),
            p59=(0.03, 0.16), p60=(0.03, 0.06), p48=(0.03, 0.05), p61=(0.01, -0.01),
            p8=(0.0, 0.30), p7=(0.01, 0.27), p6=(0.02, 0.20), p5=(0.02, 0.12), p4=(0.01, 0.06),
            p3=(0.0, 0.02),
        )
    ),
    # upper lid droop (sadness)
    "AU43": _sym(_d(p37=(0.0, 0.02), p38=(0.0, 0.02))),
}

AU_NAMES = sorted(AU, key=lambda s: int(s[2:]))


def _au_fields() -> dict[str, np.ndarray]:
    out = {}
    for name, moves in AU.items():
        f = np.zeros((68, 2))
        for i, (dx, dy) in moves.items():
            f[i] = (dx, dy)
        out[name] = f
    return out


AU_FIELDS = _au_fields()


def expression_aus(label: int, intensity: float, rng: np.random.Generator) -> dict[str, float]:
    """AU activations for one RAF label at one intensity, with prototype variants (EMFACS-like).

    Surprise/fear share brow raise, lid raise and a parted mouth; anger/disgust share the brow
    lowerer and a raised upper lip in their open variants, so the classes overlap on purpose.
    """
    k = float(intensity)
    u = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    a: dict[str, float] = {}
    if label == 1:  # surprise
        a = {"AU1": 1.0, "AU2": 1.0, "AU5": u(0.6, 1.0), "AU25": 1.0, "AU26": u(0.6, 1.0)}
    elif label == 2:  # fear
        a = {"AU1": 1.0, "AU2": u(0.3, 0.7), "AU4": u(0.5, 0.8), "AU5": 1.0, "AU20": u(0.7, 1.0),
             "AU25": 1.0, "AU26": u(0.15, 0.5)}
        if rng.random() < 0.4:
            a["AU7"] = u(0.2, 0.5)
    elif label == 3:  # disgust
        a = {"AU9": u(0.7, 1.0), "AU10": u(0.7, 1.0), "AU4": u(0.2, 0.6), "AU17": u(0.0, 0.6)}
        if rng.random() < 0.5:
            a["AU15"] = u(0.3, 0.7)
        if rng.random() < 0.4:
            a["AU25"] = u(0.4, 1.0)
    elif label == 4:  # happiness
        a = {"AU6": u(0.6, 1.0), "AU12": 1.0}
        if rng.random() < 0.55:
            a["AU25"] = 1.0
            a["AU26"] = u(0.0, 0.35)
    elif label == 5:  # sadness
        a = {"AU1": u(0.7, 1.0), "AU4": u(0.4, 0.8), "AU15": u(0.7, 1.0), "AU17": u(0.2, 0.7),
             "AU43": u(0.3, 1.0)}
    elif label == 6:  # anger
        a = {"AU4": 1.0, "AU5": u(0.3, 0.8), "AU7": u(0.6, 1.0)}
        if rng.random() < 0.65:
            a["AU23"] = u(0.7, 1.0)
        else:
            a.update({"AU10": u(0.4, 0.8), "AU25": 1.0, "AU26": u(0.1, 0.35)})
    elif label == 7:
        a = {}
    else:
        raise ValueError(f"RAF label must be 1..7, got {label}")
    return {key: v * k for key, v in a.items()}


def apply_aus(p68: np.ndarray, aus: dict[str, float], face_scale: np.ndarray) -> np.ndarray:
    """Displace the 68 points by the weighted AU fields; keep the lips ordered."""
    p = p68.copy()
    disp = np.zeros((68, 2))
    for name, w in aus.items():
        disp += w * AU_FIELDS[name]
    p[:, :2] += disp * face_scale
    # The inner lower lip never rises above the inner upper lip; the outer lips stay outside.
    for up, lo in ((61, 67), (62, 66), (63, 65)):
        p[lo, 1] = max(p[lo, 1], p[up, 1])
    for up_in, up_out in ((61, 50), (62, 51), (63, 52)):
        p[up_out, 1] = min(p[up_out, 1], p[up_in, 1] - 0.02)
    for lo_in, lo_out in ((67, 58), (66, 57), (65, 56)):
        p[lo_out, 1] = max(p[lo_out, 1], p[lo_in, 1] + 0.02)
    return p


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------

# Skin reflectance ramp from very light to very dark (sRGB), sampled continuously.
_SKIN_RAMP = np.array(
    [
        [252, 226, 205],
        [240, 200, 172],
        [226, 178, 142],
        [203, 150, 110],
        [170, 115, 80],
        [128, 84, 56],
        [95, 60, 40],
        [66, 42, 30],
    ],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [[20, 16, 14], [45, 32, 24], [80, 55, 35], [120, 85, 50], [185, 150, 95], [150, 70, 35],
     [140, 140, 140], [215, 210, 200]],
    dtype=np.float64,
)
_HAIR_P = np.array([0.30, 0.22, 0.16, 0.09, 0.08, 0.05, 0.06, 0.04])
_EYE_COLOURS = np.array(
    [[45, 28, 18], [85, 55, 30], [110, 85, 45], [80, 110, 70], [70, 110, 160], [110, 120, 130]],
    dtype=np.float64,
)
_EYE_P = np.array([0.35, 0.25, 0.12, 0.08, 0.13, 0.07])


@dataclass
class Identity:
    width: float  # x scale of the whole face
    height: float  # y scale
    jaw: float  # width of the lower face
    chin: float  # chin length
    eye_gap: float  # extra half-distance between eye centres
    eye_size: float
    eye_y: float
    brow_y: float
    brow_thick: float
    nose_len: float
    nose_w: float
    mouth_w: float
    mouth_y: float
    lip_up: float  # upper lip thickness factor
    lip_lo: float
    forehead: float  # hairline height
    skin_tone: float  # 0 light .. 1 dark
    skin_rgb: tuple[float, float, float]
    lip_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    hair_style: str  # bald | short | medium | long
    eye_rgb: tuple[float, float, float]
    beard: str  # none | stubble | beard | moustache
    glasses: bool
    glasses_rgb: tuple[float, float, float]
    jitter: list[list[float]] = field(default_factory=list)  # 68x2 small shape noise

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d.pop("jitter")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def sample_identity(rng: np.random.Generator) -> Identity:
    n = lambda s: float(rng.normal(0.0, s))  # noqa: E731
    tone = float(rng.uniform(0.0, 1.0))
    t = tone * (len(_SKIN_RAMP) - 1)
    i0 = min(int(t), len(_SKIN_RAMP) - 2)
    skin = _SKIN_RAMP[i0] * (1 - (t - i0)) + _SKIN_RAMP[i0 + 1] * (t - i0)
    skin = np.clip(skin * (1 + rng.normal(0, 0.03, 3)) + rng.normal(0, 4, 3), 20, 255)
    lip = np.clip(skin * np.array([0.86, 0.60, 0.62]) + np.array([18, 0, 4]), 10, 255)
    hair_i = int(rng.choice(len(_HAIR_COLOURS), p=_HAIR_P))
    hair = np.clip(_HAIR_COLOURS[hair_i] * (1 + rng.normal(0, 0.08, 3)), 5, 250)
    eye = _EYE_COLOURS[int(rng.choice(len(_EYE_COLOURS), p=_EYE_P))] * (1 + rng.normal(0, 0.08, 3))
    style = str(rng.choice(["bald", "short", "medium", "long"], p=[0.08, 0.42, 0.25, 0.25]))
    beard = str(rng.choice(["none", "stubble", "beard", "moustache"], p=[0.68, 0.12, 0.12, 0.08]))
    glasses_rgb = rng.choice([[15, 15, 15], [60, 40, 25], [150, 150, 155], [110, 20, 20]])
    return Identity(
        width=1.0 + n(0.05),
        height=1.0 + n(0.05),
        jaw=1.0 + n(0.06),
        chin=1.0 + n(0.08),
        eye_gap=n(0.025),
        eye_size=1.0 + n(0.08),
        eye_y=n(0.02),
        brow_y=n(0.025),
        brow_thick=float(rng.uniform(0.045, 0.085)),
        nose_len=1.0 + n(0.08),
        nose_w=1.0 + n(0.12),
        mouth_w=1.0 + n(0.07),
        mouth_y=n(0.025),
        lip_up=1.0 + n(0.18),
        lip_lo=1.0 + n(0.18),
        forehead=float(rng.uniform(0.70, 0.90)),
        skin_tone=tone,
        skin_rgb=tuple(float(x) for x in skin),
        lip_rgb=tuple(float(x) for x in lip),
        hair_rgb=tuple(float(x) for x in hair),
        hair_style=style,
        eye_rgb=tuple(float(np.clip(x, 5, 250)) for x in eye),
        beard=beard,
        glasses=bool(rng.random() < 0.15),
        glasses_rgb=tuple(float(x) for x in glasses_rgb),
        jitter=rng.normal(0, 0.008, (68, 2)).tolist(),
    )


def identity_points(idt: Identity) -> np.ndarray:
    """The neutral 68 points (3D) of one identity."""
    p = TEMPLATE68.copy()
    y = p[:, 1]
    # lower face width and chin length
    lower = np.clip((y - 0.2) / 0.9, 0, 1)
    p[:, 0] *= 1 + (idt.jaw - 1) * lower
    chin_pts = np.array(JAW)
    p[chin_pts, 1] += (idt.chin - 1) * 0.25 * np.clip((p[chin_pts, 1] - 0.5) / 0.6, 0, 1)
    # eyes
    for grp, sgn in ((EYE_L, -1), (EYE_R, 1)):
        c = p[grp, :2].mean(0)
        p[grp, :2] = c + (p[grp, :2] - c) * idt.eye_size
        p[grp, 0] += sgn * idt.eye_gap
        p[grp, 1] += idt.eye_y
    for grp, sgn in ((BROW_L, -1), (BROW_R, 1)):
        p[grp, 0] += sgn * idt.eye_gap
        p[grp, 1] += idt.brow_y + idt.eye_y
    # nose
    nz = NOSE_BRIDGE + NOSE_BASE
    p[nz, 1] = -0.30 + (p[nz, 1] + 0.30) * idt.nose_len
    p[NOSE_BASE, 0] *= idt.nose_w
    # mouth
    m = MOUTH_OUTER + MOUTH_INNER
    p[m, 0] *= idt.mouth_w
    p[m, 1] += idt.mouth_y + (idt.nose_len - 1) * 0.1
    mid = p[[60, 64], 1].mean()
    for i in (49, 50, 51, 52, 53):
        p[i, 1] = mid + (p[i, 1] - mid) * idt.lip_up
    for i in (55, 56, 57, 58, 59):
        p[i, 1] = mid + (p[i, 1] - mid) * idt.lip_lo
    p[:, :2] += np.asarray(idt.jitter)
    p[:, 0] *= idt.width
    p[:, 1] *= idt.height
    return p


# --------------------------------------------------------------------------------------------
# Auxiliary geometry (derived after the expression, so it follows the landmarks)
# --------------------------------------------------------------------------------------------


def _arc(cx, cy, ax, ay, t0, t1, n, z0, z1):
    t = np.linspace(t0, t1, n)
    z = z0 + (z1 - z0) * np.sin(t) ** 2
    return np.stack([cx + ax * np.cos(t), cy - ay * np.sin(t), z], 1)


def aux_points(p: np.ndarray, idt: Identity) -> dict[str, np.ndarray]:
    """Named 3D polylines/polygons that complete the drawing, derived from the 68 points."""
    w, h = idt.width, idt.height
    j0, j16 = p[0], p[16]
    cy = 0.5 * (j0[1] + j16[1])
    half = 0.5 * (j16[0] - j0[0])
    aux: dict[str, np.ndarray] = {}
    # hairline: the forehead arc from jaw point 16 over the top to jaw point 0
    top = idt.forehead * h if idt.hair_style != "bald" else 1.12 * h
    aux["forehead"] = _arc(0.0, cy, half, top, 0.0, np.pi, 15, j16[2], 0.15)[1:-1]
    # head outline for the hair mass (and the skull line of bald heads)
    head = _arc(0.0, cy, half * 1.08, 1.2 * h, 0.0, np.pi, 17, -0.5, -0.1)
    if idt.hair_style in ("short", "bald"):
        sides_r = np.array([[half * 1.04, cy + 0.12 * h, -0.5]])
    elif idt.hair_style == "medium":
        sides_r = np.array([[half * 1.12, cy + 0.55 * h, -0.5], [half * 0.95, cy + 0.62 * h, -0.5]])
    else:
        sides_r = np.array([[half * 1.22, cy + 1.15 * h, -0.6], [half * 0.9, cy + 1.25 * h, -0.6]])
    sides_l = _mirror(sides_r)[::-1]
    aux["hair"] = np.concatenate([sides_r[::-1], head, sides_l[::-1]])
    # ears
    t = np.linspace(0, 2 * np.pi, 13)[:-1]
    for name, sgn in (("ear_l", -1), ("ear_r", 1)):
        cx = sgn * half * 1.0
        e = np.stack([cx + sgn * 0.07 * w + sgn * 0.07 * w * np.cos(t), cy + 0.12 * h + 0.24 * h * np.sin(t),
                      np.full_like(t, -0.45)], 1)
        aux[name] = e
    # brows: lower edge, tapered at the tail
    thick = idt.brow_thick * h
    taper = np.array([0.45, 0.8, 1.0, 1.0, 0.9])
    for name, grp in (("brow_l", BROW_L), ("brow_r", BROW_R)):
        upper = p[grp]
        tp = taper if grp == BROW_L else taper[::-1]
        lower = upper + np.stack([np.zeros(5), thick * tp, np.zeros(5)], 1)
        upper = upper - np.stack([np.zeros(5), 0.25 * thick * tp, np.zeros(5)], 1)
        aux[name] = np.concatenate([upper, lower[::-1]])
    # nose outline (LaPa's nose region: bridge between the eyes down to the alae)
    b = p[27]
    nw = 0.5 * (p[35, 0] - p[31, 0])
    aux["nose"] = np.array(
        [
            [b[0] - 0.07 * w, b[1] - 0.02, b[2] - 0.02],
            [p[29, 0] - 0.10 * w, p[29, 1], p[29, 2] - 0.08],
            [p[31, 0] - 0.28 * nw, p[31, 1] - 0.08 * h, p[31, 2] - 0.04],
            p[31], p[32], p[33], p[34], p[35],
            [p[35, 0] + 0.28 * nw, p[35, 1] - 0.08 * h, p[35, 2] - 0.04],
            [p[29, 0] + 0.10 * w, p[29, 1], p[29, 2] - 0.08],
            [b[0] + 0.07 * w, b[1] - 0.02, b[2] - 0.02],
        ]
    )
    aux["nostril_l"] = np.array([[0.55 * p[31, 0] + 0.45 * p[32, 0], p[32, 1] - 0.012 * h, p[32, 2]]])
    aux["nostril_r"] = np.array([[0.55 * p[35, 0] + 0.45 * p[34, 0], p[34, 1] - 0.012 * h, p[34, 2]]])
    # neck and shoulders
    nk = 0.52 * half
    aux["neck"] = np.array(
        [[-nk, p[8, 1] - 0.45 * h, -0.35], [nk, p[8, 1] - 0.45 * h, -0.35],
         [nk * 1.05, p[8, 1] + 0.9 * h, -0.35], [-nk * 1.05, p[8, 1] + 0.9 * h, -0.35]]
    )
    aux["torso"] = np.array(
        [[-nk * 1.1, p[8, 1] + 0.55 * h, -0.4], [nk * 1.1, p[8, 1] + 0.55 * h, -0.4],
         [half * 2.3, p[8, 1] + 0.95 * h, -0.5], [half * 2.6, p[8, 1] + 3.0 * h, -0.5],
         [-half * 2.6, p[8, 1] + 3.0 * h, -0.5], [-half * 2.3, p[8, 1] + 0.95 * h, -0.5]]
    )
    # beard region: lower jaw up to the cheeks, with a gap for the mouth drawn over it later
    bj = p[3:14].copy()
    cheek_r = p[13] + np.array([-0.22 * w, -0.08 * h, 0.1])
    cheek_l = p[3] + np.array([0.22 * w, -0.08 * h, 0.1])
    above = np.array([[p[54, 0] + 0.06, p[54, 1] - 0.02, p[54, 2]], [p[48, 0] - 0.06, p[48, 1] - 0.02, p[48, 2]]])
    aux["beard"] = np.concatenate([bj, [cheek_r], above, [cheek_l]])
    aux["moustache"] = np.array(
        [[p[48, 0] - 0.04, p[48, 1] + 0.02, p[48, 2]], [p[50, 0], p[33, 1] + 0.03, p[50, 2]],
         [p[52, 0], p[33, 1] + 0.03, p[52, 2]], [p[54, 0] + 0.04, p[54, 1] + 0.02, p[54, 2]],
         [p[52, 0], p[52, 1] - 0.005, p[52, 2]], [p[51, 0], p[51, 1] - 0.005, p[51, 2]],
         [p[50, 0], p[50, 1] - 0.005, p[50, 2]]]
    )
    return aux


# --------------------------------------------------------------------------------------------
# Pose
# --------------------------------------------------------------------------------------------


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) @ Rx(pitch) @ Ry(yaw), angles in degrees (y down, z towards the camera)."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry
