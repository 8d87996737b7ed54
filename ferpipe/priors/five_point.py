"""68 points from MTCNN's 5: a mean face placed and bent by the 5 detected points.

For the ``mtcnn5`` prior backend (:class:`ferpipe.priors.backends.Mtcnn5Backend`): the only
real-face landmark model that ships inside an installed wheel here is facenet-pytorch's MTCNN
(O-Net: eye centres, nose tip, mouth corners). The mean face is the renderer's frontal neutral
68-point template (:data:`ferpipe.sources.synthetic.face.TEMPLATE68`, x/y only).

1. a least-squares similarity takes the template's 5 points (:func:`.data.five_from_68`) onto
   the detected ones (head position, size, roll);
2. what the similarity leaves over is applied per region: each eye and its brow move with
   their eye point, the nose (29-35, half at 28) with the nose tip, the chin (5-11, half) with
   the mouth centre, and the mouth (48-67) is mapped exactly onto the two mouth corners
   (its width, tilt and position follow the corners; yaw shows as a shifted nose and mouth).

What 5 points cannot give, and these maps therefore do not show: an open mouth, lip shape,
raised or lowered brows, closed eyes, the jaw outline. The result is a face-shaped prior that
follows pose, eye and mouth-corner positions, nothing finer.
"""

from __future__ import annotations

import numpy as np

from ferpipe.align import warp as _warp


def _mean68() -> np.ndarray:
    from ferpipe.sources.synthetic.face import TEMPLATE68  # noqa: PLC0415

    return np.asarray(TEMPLATE68, np.float64)[:, :2].copy()


def _two_point_similarity(s0, s1, d0, d1):
    """z -> a z + b taking s0 -> d0 and s1 -> d1 (complex numbers: rotation + scale + shift)."""
    zs0, zs1, zd0, zd1 = (complex(*p) for p in (s0, s1, d0, d1))
    a = (zd1 - zd0) / (zs1 - zs0) if abs(zs1 - zs0) > 1e-9 else 1.0
    b = zd0 - a * zs0

    def apply(pts: np.ndarray) -> np.ndarray:
        z = a * (pts[:, 0] + 1j * pts[:, 1]) + b
        return np.stack([z.real, z.imag], axis=1)

    return apply


def face_from_5(p5: np.ndarray) -> np.ndarray:
    """MTCNN-order 5 points [5,2] (image-left eye, image-right eye, nose, mouth left, mouth
    right) -> 68 iBUG points [68,2] in the same pixel frame."""
    from ferpipe.priors.data import five_from_68  # noqa: PLC0415

    p5 = np.asarray(p5, np.float64).reshape(5, 2)
    t = _mean68()
    t5 = five_from_68(t)
    m = _warp.estimate_similarity(t5, p5, "lstsq")
    q = _warp.transform_points(t, m)
    q5 = _warp.transform_points(t5, m)
    r = p5 - q5
    q[17:22] += r[0]
    q[36:42] += r[0]
    q[22:27] += r[1]
    q[42:48] += r[1]
    q[29:36] += r[2]
    q[28] += 0.5 * r[2]
    q[5:12] += 0.5 * (r[3] + r[4]) / 2
    q[48:68] = _two_point_similarity(q5[3], q5[4], p5[3], p5[4])(q[48:68])
    return q
