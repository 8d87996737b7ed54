"""Does the real detector see the synthetic faces? Render the default set, run facenet-pytorch
MTCNN on every image, compare its 5 points with the ground truth.

    python benchmarks/synthetic_mtcnn.py [--n-per-class 300] [--size 256] [--workers 2]
        [--difficulty default|hard] [--out benchmarks/results/synthetic_mtcnn.json]

Prints and writes: render time, detection rate (a detection counts when one of MTCNN's faces has
its 5 points within 0.5 inter-ocular distances of the ground truth on average), and the median
and 90th percentile of the per-image mean 5-point error normalised by the ground-truth
inter-ocular distance.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np


def mtcnn_errors(archive, groundtruth, limit: int | None = None) -> dict:
    """Run MTCNN over an archive's images; returns per-image normalised errors (nan = missed)."""
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    from ferpipe.sources.synthetic import load_ground_truth, read_labels

    torch.manual_seed(0)
    gt = load_ground_truth(groundtruth)
    det = MTCNN(keep_all=True, device="cpu")
    names = [nm for nm, _ in read_labels(archive)][:limit]
    errs = {}
    with zipfile.ZipFile(archive) as zf:
        for nm in names:
            img = Image.open(io.BytesIO(zf.read("Image/original/" + nm))).convert("RGB")
            boxes, _, lms = det.detect(img, landmarks=True)
            g = gt[nm].points5
            iod = float(np.linalg.norm(g[1] - g[0]))
            if boxes is None:
                errs[nm] = float("nan")
                continue
            lms = np.asarray(lms, dtype=np.float32).reshape(-1, 5, 2)
            e = np.linalg.norm(lms - g[None], axis=2).mean(1) / iod
            best = float(e.min())
            errs[nm] = best if best <= 0.5 else float("nan")
    return errs


def summarise(errs: dict) -> dict:
    v = np.array(list(errs.values()), dtype=np.float64)
    hit = v[~np.isnan(v)]
    return {
        "n_images": int(len(v)),
        "detected": int(len(hit)),
        "detection_rate": float(len(hit) / max(len(v), 1)),
        "median_nme_iod": float(np.median(hit)) if len(hit) else float("nan"),
        "p90_nme_iod": float(np.percentile(hit, 90)) if len(hit) else float("nan"),
        "missed": sorted(k for k, x in errs.items() if np.isnan(x)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-per-class", type=int, default=300)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--difficulty", default="default")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "synthetic_mtcnn.json"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    a = p.parse_args(argv)
    if a.smoke:
        a.n_per_class, a.size, a.workers = 1, 128, 1
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import machine, write_result

    mach = machine()

    import torch

    from ferpipe.sources.synthetic import render_archive

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        res = render_archive(tmp, n_per_class=a.n_per_class, size=a.size, seed=a.seed, workers=a.workers,
                             difficulty=a.difficulty)
        t0 = time.perf_counter()
        errs = mtcnn_errors(res.archive, res.groundtruth)
        det_s = time.perf_counter() - t0
    out = summarise(errs)
    out.update(
        {
            "n_per_class": a.n_per_class,
            "size": a.size,
            "seed": a.seed,
            "workers": a.workers,
            "difficulty": a.difficulty,
            "render_s": round(res.elapsed_s, 2),
            "render_images_per_s": round(res.images_per_s, 1),
            "detect_s": round(det_s, 2),
        }
    )
    print(
        f"rendered {out['n_images']} images in {out['render_s']:.1f}s ({out['render_images_per_s']} img/s, "
        f"{a.workers} workers); MTCNN detection rate {out['detection_rate']:.3f}; 5-point NME/IOD median "
        f"{out['median_nme_iod']:.4f}, p90 {out['p90_nme_iod']:.4f}; missed {len(out['missed'])}"
    )
    out["machine"], out["smoke"] = mach, a.smoke
    write_result(a.out, out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
