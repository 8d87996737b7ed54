"""Align, whole process, on the default dataset: ``ferpipe align --no-flow`` against a plain
facenet-pytorch script, each a fresh Python process (imports, model load, decode, detection,
warp, JPEG out), timed alternately (ferpipe, plain, ferpipe, plain, ...; medians).

The plain script is the usual way: ``MTCNN(keep_all=True)`` with its defaults, one
``detect(PIL image)`` per manifest row at full resolution, the largest face with probability
>= align.min_score, a 5-point similarity onto the ArcFace template (scikit-image) and
``cv2.warpAffine``, one JPEG file per face. Both write ``output_size`` px crops of the same rows.
Faces found by each are compared (box IoU, point distance) on the rows both aligned; CPU
seconds (user + system, the process and its children) are recorded next to wall seconds: on a
shared machine they move far less with other people's load.

    python benchmarks/align_process.py [--n-per-class 300] [--rounds 3]
        [--out benchmarks/results/align_process.json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine, write_result  # noqa: E402
from align_throughput import compare  # noqa: E402

PLAIN = r'''
import json, sys
import cv2, numpy as np, pyarrow.parquet as pq
from facenet_pytorch import MTCNN
from PIL import Image
from skimage.transform import SimilarityTransform

man, raw, out, size, min_score = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]]) * (size / 112.0)
mtcnn = MTCNN(keep_all=True, device="cpu")
found = {}
for r in pq.read_table(man, columns=["key", "path", "status", "label"]).to_pylist():
    if r["status"] != "ok" or r["label"] < 0:
        continue
    img = Image.open(f"{raw}/{r['path']}").convert("RGB")
    boxes, probs, points = mtcnn.detect(img, landmarks=True)
    if boxes is None:
        continue
    ok = np.flatnonzero(probs >= min_score)
    if not len(ok):
        continue
    k = ok[np.argmax([(boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]) for i in ok])]
    tf = SimilarityTransform.from_estimate(points[k].astype(np.float64), ARCFACE_112)
    crop = cv2.warpAffine(np.asarray(img), tf.params[:2], (size, size), flags=cv2.INTER_LINEAR)
    cv2.imwrite(f"{out}/{r['key']}.jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    found[r["key"]] = {"box": boxes[k].tolist(), "points": points[k].tolist()}
json.dump(found, open(f"{out}/found.json", "w"))
'''


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + sys of the child and everything it started)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _ferpipe_found(aligned: Path) -> dict:
    from ferpipe import shards

    found = {}
    for split in json.loads((aligned / "index.json").read_text())["splits"]:
        for s in shards.iter_samples(aligned, split, decode=None):
            meta = json.loads(s["json"])
            if meta.get("box") is not None:
                found[s["__key__"]] = {"box": meta["box"], "points": meta["points_src"]}
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-per-class", type=int, default=300, help="default dataset: 300 (2,100 images)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "align_process.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny set, one round: checks the benchmark runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_per_class, args.rounds = 2, 1
    out: dict = {"machine": machine(), "smoke": args.smoke, "n_per_class": args.n_per_class, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        proj = Path(tmp)
        shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
        sets = ["-S", f"download.synthetic.n_per_class={args.n_per_class}"]
        ferpipe = [sys.executable, "-m", "ferpipe.cli"]
        _timed([*ferpipe, "download", "--no-flow", *sets], proj)
        from ferpipe.config import load_params

        p = load_params(proj / "params.yaml", sets[1::2])
        man, raw = proj / "data/manifests/synthetic.parquet", proj / "data/raw/synthetic"
        plain_py = proj / "plain_align.py"
        plain_py.write_text(PLAIN)
        plain_out = proj / "plain_out"
        times: dict[str, list] = {"ferpipe": [], "plain": []}
        for _ in range(args.rounds):
            shutil.rmtree(proj / "data/aligned", ignore_errors=True)  # no resume: every round aligns it all
            times["ferpipe"].append(_timed([*ferpipe, "align", "--no-flow", *sets], proj))
            shutil.rmtree(plain_out, ignore_errors=True)
            plain_out.mkdir()
            times["plain"].append(_timed([sys.executable, str(plain_py), str(man), str(raw), str(plain_out),
                                          str(p.align.output_size), str(p.align.min_score)], proj))
        ours = _ferpipe_found(proj / "data/aligned/synthetic")
        plain = json.loads((plain_out / "found.json").read_text())
        # a run fact: in reports/timings/, not the DVC-tracked report (ferpipe.timings)
        timings = proj / "reports/timings/align/synthetic.json"
        images = json.loads(timings.read_text())["images_processed"] if timings.is_file() else None
    med = {k: {"wall_s": statistics.median(t[0] for t in v), "cpu_s": statistics.median(t[1] for t in v),
               "runs": [[round(a, 2), round(b, 2)] for a, b in v]} for k, v in times.items()}
    keys = sorted(set(ours) | set(plain))
    as_pair = lambda d, k: (np.asarray(d[k]["box"], np.float32), np.asarray(d[k]["points"], np.float32)) \
        if k in d else None  # noqa: E731
    out.update({
        "images": images, "faces_ferpipe": len(ours), "faces_plain": len(plain), "timing": med,
        "speedup_wall": med["plain"]["wall_s"] / med["ferpipe"]["wall_s"],
        "speedup_cpu": med["plain"]["cpu_s"] / med["ferpipe"]["cpu_s"],
        "agreement_ferpipe_vs_plain": compare([as_pair(plain, k) for k in keys], [as_pair(ours, k) for k in keys]),
    })
    print(f"align whole process, {images} images: ferpipe {med['ferpipe']['wall_s']:.1f}s wall / "
          f"{med['ferpipe']['cpu_s']:.1f}s CPU, plain facenet-pytorch {med['plain']['wall_s']:.1f}s / "
          f"{med['plain']['cpu_s']:.1f}s -> x{out['speedup_wall']:.2f} wall, x{out['speedup_cpu']:.2f} CPU; "
          f"faces {len(ours)} vs {len(plain)}")
    print(f"wrote {write_result(args.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
