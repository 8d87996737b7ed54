"""A tiny tree in LaPa's exact layout, built from real photos that ship inside installed packages.

Layout (as LaPa's readers expect it, e.g. microsoft/FaRL's): ``<root>/{train,val,test}/
{images/<name>.jpg, labels/<name>.png, landmarks/<name>.txt}``; a label PNG is a single-channel
map of the 11 LaPa classes; a landmark file holds ``106`` on its first line, then 106 ``x y``.

Photos: ``skimage.data.astronaut()`` and insightface's ``t1.jpg`` / ``Tom_Hanks_54745.png``.
**The ground truth is approximate**: MTCNN's 5 points place a mean 68-point face (from ferpipe's
rendered faces) by a similarity; the 106 points are those 68 at their JD-106 indices (the others
interpolated along the index), and the label map is rasterised from the 68 points
(:func:`ferpipe.priors.conventions.parsing_from_68`, no hair). It exercises the plumbing, not
the accuracy of anything trained on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = {"train": ["t1_0", "t1_1", "t1_2", "t1_3", "t1_4"], "val": ["t1_5"],
          "test": ["astronaut_0", "hanks_0"]}
OUT_SIDE = 192


def _photos() -> dict[str, np.ndarray]:
    import insightface
    import skimage.data

    d = Path(os.path.dirname(insightface.__file__)) / "data" / "images"
    return {"astronaut": skimage.data.astronaut(),
            "t1": np.asarray(Image.open(d / "t1.jpg").convert("RGB")),
            "hanks": np.asarray(Image.open(d / "Tom_Hanks_54745.png").convert("RGB"))}


def mean_shape68(archive: Path, gts: dict, size: int = 112) -> np.ndarray:
    """Mean 68 points of rendered faces, in the ArcFace-template frame of side ``size``."""
    from ferpipe.align import warp as _warp

    tpl = _warp.template(size, 0.0)
    pts = [_warp.transform_points(g.points68, _warp.estimate_similarity(g.points5, tpl, "lstsq"))
           for g in gts.values()]
    return np.mean(pts, axis=0)


def _to_106(p68: np.ndarray) -> np.ndarray:
    from ferpipe.priors.data import JD106_TO_68

    out = np.full((106, 2), np.nan)
    out[JD106_TO_68] = p68
    idx = np.arange(106)
    known = ~np.isnan(out[:, 0])
    for c in (0, 1):
        out[~known, c] = np.interp(idx[~known], idx[known], out[known, c])
    return out


def write_lapa_tree(root: Path, archive: Path, gts: dict, min_prob: float = 0.95) -> Path:
    """Write the tree under ``root`` and return it; 5 train, 1 val, 2 test faces."""
    import torch
    from facenet_pytorch import MTCNN

    from ferpipe.align import warp as _warp
    from ferpipe.priors.conventions import parsing_from_68

    mean68 = mean_shape68(archive, gts)
    tpl = _warp.template(112, 0.0)
    mtcnn = MTCNN(keep_all=True, device="cpu", min_face_size=20)
    split_of = {n: s for s, names in SPLITS.items() for n in names}
    with torch.inference_mode():
        for photo, rgb in _photos().items():
            boxes, probs, lmk = mtcnn.detect(Image.fromarray(rgb), landmarks=True)
            keep = [i for i, p in enumerate(np.asarray(probs, dtype=float)) if p >= min_prob]
            for j, i in enumerate(keep):
                name = f"{photo}_{j}"
                if name not in split_of:
                    continue
                box = np.asarray(boxes[i], dtype=np.float64)
                five = np.asarray(lmk[i], dtype=np.float64)
                c = (box[:2] + box[2:]) / 2
                side = 1.8 * max(box[2] - box[0], box[3] - box[1])
                x0, y0 = c - side / 2
                crop = Image.fromarray(rgb).crop((int(round(x0)), int(round(y0)),
                                                  int(round(x0 + side)), int(round(y0 + side))))
                k = OUT_SIDE / crop.size[0]
                crop = crop.resize((OUT_SIDE, OUT_SIDE), Image.BILINEAR)
                five_c = (five - [round(x0), round(y0)] + 0.5) * k - 0.5
                m = _warp.estimate_similarity(tpl, five_c, "lstsq")
                p68 = _warp.transform_points(mean68, m)
                split = split_of[name]
                base = root / split
                for sub in ("images", "labels", "landmarks"):
                    (base / sub).mkdir(parents=True, exist_ok=True)
                crop.save(base / "images" / f"{name}.jpg", quality=95)
                Image.fromarray(parsing_from_68(p68, (OUT_SIDE, OUT_SIDE))).save(base / "labels" / f"{name}.png")
                lines = ["106"] + [f"{x:.2f} {y:.2f}" for x, y in _to_106(p68)]
                (base / "landmarks" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root
