"""What the mtcnn5 prior backend sees on real faces (the 8 faces of packaged photos).

    python benchmarks/mtcnn5_real_faces.py [--out benchmarks/results/mtcnn5_real_faces.json] [--smoke]

Each face is aligned as the align stage does (MTCNN on the whole photo, similarity onto the
ArcFace template at 112). Reports, in units of the inter-ocular distance (IOD, eye centres):
- ``onet_on_crop_vs_photo``: how far O-Net's 5 points on the aligned crop (what the backend
  runs) are from the detector's points on the photo, per face;
- ``aligned_5pt_spread``: the spread (std over faces) of the 5 aligned points, per point: how
  much a 5-point prior can vary between faces at all once faces are aligned on those points;
- ``maps_spread``: mean distance of each face's 68 points from the faces' mean.
Writes benchmarks/results/mtcnn5_real_faces.json (``--smoke``: one photo, to check it runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine, write_result  # noqa: E402

from ferpipe.align import warp as W  # noqa: E402
from ferpipe.priors import PriorsParams, build_backend  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mtcnn5_real_faces.json"))
    ap.add_argument("--smoke", action="store_true", help="one photo only: checks the benchmark runs")
    args = ap.parse_args(argv)
    from facenet_pytorch import MTCNN

    from tests._lapa_tree import _photos

    torch.set_num_threads(1)
    info = machine()
    m = MTCNN(keep_all=True, device="cpu", min_face_size=20)
    tpl = W.template(112, 0.0)
    crops, aligned = [], []
    photos = list(_photos().values())
    for rgb in photos[:1] if args.smoke else photos:
        _, probs, lmk = m.detect(Image.fromarray(rgb), landmarks=True)
        for p, five in zip(np.asarray(probs, dtype=float), lmk):
            if p >= 0.95:
                mat = W.estimate_similarity(np.asarray(five, float), tpl, "lstsq")
                crops.append(W.warp(rgb, mat, 112))
                aligned.append(W.transform_points(np.asarray(five, float), mat))
    a = np.stack(aligned)
    be = build_backend(PriorsParams(backend="mtcnn5", device="cpu"), ROOT)
    five = be.five_points(crops)
    pts, _ = be.maps(crops)
    iod = float(np.linalg.norm(tpl[0] - tpl[1]))
    err = np.linalg.norm(five - a, axis=2).mean(1) / iod
    doc = {"command": "python benchmarks/mtcnn5_real_faces.py" + (" --smoke" if args.smoke else ""),
           "machine": info, "smoke": args.smoke, "faces": len(crops),
           "onet_on_crop_vs_photo": {"per_face": [round(float(e), 3) for e in err],
                                     "median": round(float(np.median(err)), 3)},
           "aligned_5pt_spread": dict(zip(["eye_l", "eye_r", "nose", "mouth_l", "mouth_r"],
                                          [round(float(v), 3) for v in a.std(0).mean(1) / iod])),
           "maps_spread": round(float(np.linalg.norm(pts - pts.mean(0), axis=2).mean() / iod), 3)}
    print(write_result(args.out, doc).read_text(), end="")


if __name__ == "__main__":
    main()
