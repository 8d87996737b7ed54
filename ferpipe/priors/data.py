"""Training data for ferpipe's prior nets, in the aligned frame the priors stage sees.

Sources: ferpipe's synthetic renderer (a dedicated set with its own seed, so nothing trained
here has seen the FER test images) and LaPa (``train|val|test/{images/*.jpg, labels/*.png,
landmarks/*.txt}``, 106 JD-landmark points per face, the count on the first line).

Every face is aligned exactly like the align stage does it: the 5 points go onto the ArcFace
template with :func:`ferpipe.align.warp.estimate_similarity` and the image is warped with
:func:`ferpipe.align.warp.warp` to ``aligned_size``, then PIL-bilinear resized to the nets'
``input_size``. The parsing map is warped with the same function as a one-hot stack (then
arg-maxed, so borders are area-weighted, not a nearest lookup) and the 68 points with the same
matrix. Training faces get a seeded random similarity jitter around the true 5 points, which
stands in for detector noise; held-out faces are aligned on their exact 5 points.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ferpipe.align import warp as _warp
from ferpipe.errors import DataError
from ferpipe.priors.conventions import NUM_CLASSES

# JD-106 (the LaPa / 106-point challenge markup) -> iBUG 68: every other contour point, the
# upper brow arcs, bridge, nose base, six eye-contour points per eye, all 20 mouth points.
# The group ranges agree with how public LaPa readers draw the markup (microsoft/FaRL's LaPa
# dataset: contour 0-32, brows 33-41 / 42-50 as closed rings, bridge 51-54, lower nose 55-65,
# eyes 66-73 / 75-82 with pupils 74 / 83, outer lips 84-95, inner lips 96-103); the order
# inside a group is the usual one for this markup. [No real LaPa file was available to check
# the order within groups; which side is "left" is normalised per face by :func:`image_side`.]
JD106_TO_68 = np.array(
    list(range(0, 33, 2)) + [33, 34, 35, 36, 37, 42, 43, 44, 45, 46] + [51, 52, 53, 54]
    + [58, 59, 60, 61, 62] + [66, 67, 69, 70, 71, 73] + [75, 76, 78, 79, 80, 82]
    + list(range(84, 104)), dtype=np.int64)
assert JD106_TO_68.size == 68


@dataclass
class FaceSet:
    """Aligned faces at ``input_size``: images uint8 [N,S,S,3], parsing uint8 [N,S,S],
    points float32 [N,68,2] normalised to [0,1] of the crop (x = (px + 0.5) / S)."""

    images: np.ndarray
    parsing: np.ndarray
    points: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def five_from_68(p68: np.ndarray) -> np.ndarray:
    """MTCNN-order 5 points from 68: eye centres (means of 36-41, 42-47), nose tip 30,
    mouth corners 48 and 54 (the synthetic ground truth's own definition)."""
    p = np.asarray(p68, np.float64).reshape(68, 2)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def _jitter(rng: np.random.Generator, scale: float, rot_deg: float, shift: float,
            size: int) -> np.ndarray:
    """A random similarity (3x3) about the crop centre, in output pixels."""
    s = float(np.exp(rng.uniform(-scale, scale)))
    a = np.deg2rad(rng.uniform(-rot_deg, rot_deg))
    tx, ty = rng.uniform(-shift, shift, size=2) * size
    c = (size - 1) / 2.0
    ca, sa = s * np.cos(a), s * np.sin(a)
    return np.array([[ca, -sa, c - ca * c + sa * c + tx],
                     [sa, ca, c - sa * c - ca * c + ty], [0, 0, 1]], np.float64)


def align_face(rgb: np.ndarray, parsing: np.ndarray | None, points68: np.ndarray,
               points5: np.ndarray, aligned_size: int, margin: float, input_size: int,
               jitter: np.ndarray | None = None):
    """(image [S,S,3], parsing [S,S] | None, points [68,2] normalised) at ``input_size``."""
    tpl = _warp.template(aligned_size, margin)
    m = _warp.estimate_similarity(points5, tpl, "lstsq")
    if jitter is not None:
        m = (jitter @ np.vstack([m, [0, 0, 1]]))[:2]
    crop = _warp.warp(rgb, m, aligned_size)
    img = np.asarray(Image.fromarray(crop).resize((input_size, input_size), Image.BILINEAR))
    pts = _warp.transform_points(points68, m)
    pts_n = ((pts + 0.5) / aligned_size).astype(np.float32)
    lab = None
    if parsing is not None:
        # Straight to input_size: scale the matrix (pixel centres at integers on both sides).
        k = input_size / aligned_size
        s = np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1]])
        mi = (s @ np.vstack([m, [0, 0, 1]]))[:2]
        onehot = (np.asarray(parsing)[..., None] == np.arange(NUM_CLASSES)).astype(np.float32)
        warped = _warp.warp(onehot, mi, input_size)
        lab = warped.argmax(axis=-1).astype(np.uint8)
        lab[warped.max(axis=-1) <= 0] = 0  # outside the source: background
    return img, lab, pts_n


def _stack(rows, names) -> FaceSet:
    return FaceSet(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]),
                   np.stack([r[2] for r in rows]), list(names))


def synthetic_faces(archive: str | Path, groundtruth: str | Path, aligned_size: int,
                    margin: float, input_size: int, seed: int, jitter: tuple[float, float, float],
                    split: str) -> FaceSet:
    """Faces of one split of a rendered synthetic archive, aligned on their ground truth.

    ``jitter`` = (log-scale, rotation degrees, shift fraction); all zeros for none.
    """
    from ferpipe.sources.synthetic import load_ground_truth  # noqa: PLC0415

    gts = load_ground_truth(groundtruth)
    names = sorted(n for n, g in gts.items() if g.split == split)
    rows = []
    with zipfile.ZipFile(archive) as zf:
        for i, nm in enumerate(names):
            g = gts[nm]
            rgb = np.asarray(Image.open(io.BytesIO(zf.read(f"Image/original/{nm}"))).convert("RGB"))
            jit = None
            if any(jitter):
                rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A7, i]))
                jit = _jitter(rng, jitter[0], jitter[1], jitter[2], aligned_size)
            rows.append(align_face(rgb, g.parsing, g.points68, g.points5, aligned_size, margin,
                                   input_size, jit))
    return _stack(rows, names)


# --------------------------------------------------------------------------------------------
# LaPa


def read_lapa_landmarks(path: str | Path) -> np.ndarray:
    """A LaPa landmark file: first line the point count (106), then one ``x y`` per line."""
    path = Path(path)
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        n = int(lines[0][0])
        pts = np.array([[float(a), float(b)] for a, b in lines[1:1 + n]], np.float64)
    except (IndexError, ValueError) as e:
        raise DataError(f"{path}: expected the point count on line 1 and then 'x y' per line "
                        f"({e})") from None
    if n != 106 or pts.shape != (106, 2):
        raise DataError(f"{path}: expected 106 points (LaPa's JD-106 markup), found count {n} "
                        f"and {len(pts)} point lines")
    return pts


def image_side(p68: np.ndarray, parsing: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Put 68 points and a LaPa map into ferpipe's image-side semantics (:mod:`.conventions`).

    Each mirrored group (jaw, brows, eyes, nose base, mouth) whose "left" member lies on the
    image's right is re-labelled with its mirror partners; likewise classes 2/3 and 4/5 when
    their centroids are the wrong way round. A dataset already in image-side semantics passes
    through unchanged, so ferpipe does not depend on which convention a LaPa copy uses.
    """
    from ferpipe.priors.conventions import IBUG68_FLIP  # noqa: PLC0415

    p = np.asarray(p68, np.float64).copy()
    x = p[:, 0]
    for group, left, right in ((range(0, 17), [0], [16]), (range(17, 27), range(17, 22), range(22, 27)),
                               (range(36, 48), range(36, 42), range(42, 48)), (range(31, 36), [31], [35]),
                               (range(48, 68), [48], [54])):
        if x[list(left)].mean() > x[list(right)].mean():
            g = np.array(group)
            p[g] = np.asarray(p68, np.float64)[IBUG68_FLIP[g]]
    if parsing is not None:
        lab = np.asarray(parsing).copy()
        for a, b in ((2, 3), (4, 5)):
            ya, xa = np.nonzero(lab == a)
            yb, xb = np.nonzero(lab == b)
            if len(xa) and len(xb) and xa.mean() > xb.mean():
                ma, mb = lab == a, lab == b
                lab[ma], lab[mb] = b, a
        parsing = lab
    return p, parsing


def lapa_items(root: str | Path, split: str) -> list[tuple[str, Path, Path, Path]]:
    """(stem, image, label png, landmark txt) of a LaPa split; a stem missing a file is an
    error naming it (a LaPa copy is expected to be complete)."""
    base = Path(root) / split
    img_dir = base / "images"
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: not found; LaPa layout is <root>/{{train,val,test}}/"
                        f"{{images/*.jpg, labels/*.png, landmarks/*.txt}}")
    out = []
    for img in sorted(img_dir.glob("*.jpg")):
        lab = base / "labels" / f"{img.stem}.png"
        lmk = base / "landmarks" / f"{img.stem}.txt"
        for p in (lab, lmk):
            if not p.is_file():
                raise DataError(f"{p}: missing (LaPa image {img} has no matching file)")
        out.append((img.stem, img, lab, lmk))
    return out


def lapa_faces(root: str | Path, split: str, aligned_size: int, margin: float, input_size: int,
               seed: int, jitter: tuple[float, float, float], limit: int | None = None) -> FaceSet:
    """A LaPa split, aligned on 5 points derived from its 106 (via the 68 mapping)."""
    items = lapa_items(root, split)[:limit]
    rows, names = [], []
    for i, (stem, img, lab, lmk) in enumerate(items):
        rgb = np.asarray(Image.open(img).convert("RGB"))
        parsing = np.asarray(Image.open(lab))
        if parsing.ndim != 2 or parsing.max(initial=0) >= NUM_CLASSES:
            raise DataError(f"{lab}: expected a single-channel map with classes 0..10")
        p68, parsing = image_side(read_lapa_landmarks(lmk)[JD106_TO_68], parsing)
        jit = None
        if any(jitter):
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A9, i]))
            jit = _jitter(rng, jitter[0], jitter[1], jitter[2], aligned_size)
        rows.append(align_face(rgb, parsing, p68, five_from_68(p68), aligned_size, margin,
                               input_size, jit))
        names.append(stem)
    if not rows:
        raise DataError(f"{root}/{split}/images: no .jpg images")
    return _stack(rows, names)
