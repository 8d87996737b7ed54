"""Align throughput: the batched, streaming align stage against one MTCNN call per image.

    python benchmarks/align_throughput.py [--n-small 1024] [--n-photo 24] [--threads 2]
        [--mem-sizes 2000 20000] [--mem-mode mtcnn|dataset] [--skip-mem]

(a) 256x256 one-face images (astronaut crops with jitter), (b) 640x480 photos (crops of
insightface's group photo t1.jpg when installed, and the astronaut pasted onto them).
Methods, all on the same files and torch thread count:
  naive       facenet-pytorch's usual way: MTCNN(keep_all=True) defaults, one
              detect(PIL image) per file at full resolution (decode included)
  per_image   ferpipe's detection settings (detection size, snapped min face), but one image
              per MTCNN call: isolates what batching gives at identical output
  stage       ferpipe.align.align_stage end to end (decode pool, batches, warp, JPEG, tars)
  stage_nchw  the same with align.channels_last false: detections bitwise equal to
              facenet-pytorch's own NCHW call with the stage's settings
The default 1,024 small images keep start-up (decode pool, first batch) from dominating; the
embedded default dataset has 2,100.
Outputs are compared on the chosen face (same rule for all): box IoU and landmark distance.
Peak RSS of the stage on 2k and 20k manifest rows (in fresh subprocesses) shows streaming.
Writes benchmarks/results/align_throughput.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine, write_result  # noqa: E402

LABEL_SPACE = {"name": "basic7", "classes": ["surprise", "fear", "disgust", "happiness",
                                             "sadness", "anger", "neutral"]}


def write_manifest(path: Path, raw: Path, files: list[str], n_rows: int | None = None,
                   landmarks: dict[str, list[float]] | None = None) -> Path:
    n_rows = n_rows or len(files)
    sha = {f: hashlib.sha256((raw / f).read_bytes()).hexdigest() for f in set(files)}
    lms = landmarks or {}
    rows = [{"key": f"s{i:07d}", "dataset": "bench", "split": "train",
             "path": files[i % len(files)], "sha256": sha[files[i % len(files)]],
             "width": 0, "height": 0, "native_label": "0", "label": i % 7, "status": "ok",
             "landmarks5": lms.get(files[i % len(files)])} for i in range(n_rows)]
    schema = pa.schema([("key", pa.string()), ("dataset", pa.string()), ("split", pa.string()),
                        ("path", pa.string()), ("sha256", pa.string()), ("width", pa.int32()),
                        ("height", pa.int32()), ("native_label", pa.string()),
                        ("label", pa.int16()), ("status", pa.string()),
                        ("landmarks5", pa.list_(pa.float32()))])
    t = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(
        {b"ferpipe.label_space": json.dumps(LABEL_SPACE).encode()})
    pq.write_table(t, path)
    return path


def make_small(raw: Path, n: int, rng) -> list[str]:
    from skimage import data

    a = data.astronaut()
    files = []
    for i in range(n):
        s = int(rng.integers(240, 340))
        y = int(rng.integers(0, 512 - s + 1)) if s < 512 else 0
        x = int(np.clip(224 - s // 2 + rng.integers(-40, 41), 0, 512 - s))
        y = int(np.clip(110 - s // 2 + rng.integers(-30, 31), 0, 512 - s))
        crop = cv2.resize(a[y:y + s, x:x + s], (256, 256), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        f = f"small_{i:05d}.jpg"
        Image.fromarray(np.ascontiguousarray(crop)).save(raw / f, quality=92)
        files.append(f)
    return files


def make_photos(raw: Path, n: int, rng) -> list[str]:
    from skimage import data

    a = data.astronaut()
    try:
        import insightface

        bg = np.asarray(Image.open(Path(insightface.__file__).parent / "data/images/t1.jpg")
                        .convert("RGB"))
    except ImportError:
        bg = cv2.resize(data.coffee(), (1280, 886))
    files = []
    h, w = bg.shape[:2]
    for i in range(n):
        cw = int(rng.integers(900, w + 1))
        ch = int(cw * 0.75)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, max(1, h - ch + 1)))
        photo = cv2.resize(bg[y:y + ch, x:x + cw], (640, 480), interpolation=cv2.INTER_AREA)
        if i % 2 == 0:  # the labelled face: the astronaut, large and near the centre
            s = int(rng.integers(260, 360))
            face = cv2.resize(a, (s, s), interpolation=cv2.INTER_AREA)
            px = int(np.clip(320 - s // 2 + rng.integers(-60, 61), 0, 640 - s))
            py = int(np.clip(240 - s // 2 + rng.integers(-40, 41), 0, 480 - s))
            photo[py:py + s, px:px + s] = face
        f = f"photo_{i:05d}.jpg"
        Image.fromarray(photo).save(raw / f, quality=92)
        files.append(f)
    return files


def _chosen(boxes, scores, points, w, h, params):
    from ferpipe.align.detect import Detections, choose_face

    if boxes is None or len(boxes) == 0:
        return None
    d = Detections(np.asarray(boxes, np.float32).reshape(-1, 4),
                   np.asarray(scores, np.float32).reshape(-1),
                   np.asarray(points, np.float32).reshape(-1, 5, 2)).filtered(params.min_score)
    k = choose_face(d, w, h, params)
    return None if k is None else (d.boxes[k], d.points[k])


def _iou(a, b):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0


def compare(ref: list, got: list) -> dict:
    both = [(r, g) for r, g in zip(ref, got) if r is not None and g is not None]
    only_ref = sum(1 for r, g in zip(ref, got) if r is not None and g is None)
    only_got = sum(1 for r, g in zip(ref, got) if r is None and g is not None)
    if not both:
        return {"both": 0, "only_reference": only_ref, "only_candidate": only_got}
    ious = [float(_iou(r[0], g[0])) for r, g in both]
    # landmark error relative to the inter-ocular distance (the usual NME).
    nme = [float(np.linalg.norm(r[1] - g[1], axis=1).mean()
                 / max(1e-6, np.linalg.norm(r[1][0] - r[1][1]))) for r, g in both]
    px = [float(np.linalg.norm(r[1] - g[1], axis=1).max()) for r, g in both]
    return {"both": len(both), "only_reference": only_ref, "only_candidate": only_got,
            "box_iou_min": round(min(ious), 4), "box_iou_mean": round(float(np.mean(ious)), 4),
            "points_nme_mean": round(float(np.mean(nme)), 4),
            "points_maxpx_max": round(max(px), 3)}


def bench_set(name: str, raw: Path, files: list[str], threads: int, work: Path,
              decode_workers: int = 1) -> dict:
    import torch
    from facenet_pytorch import MTCNN

    from ferpipe import shards
    from ferpipe.align import AlignParams, align_stage
    from ferpipe.align.decode import detection_image, load_rgb
    from ferpipe.align.detect import FaceDetector

    torch.set_num_threads(threads)
    params = AlignParams(threads=threads, decode_workers=decode_workers, batch_size=32,
                         samples_per_shard=1000)
    n = len(files)

    # naive: defaults, one call per image, full resolution
    naive_m = MTCNN(keep_all=True)
    naive_m.detect(np.zeros((64, 64, 3), np.uint8))
    t0 = time.perf_counter()
    naive = []
    for f in files:
        img = Image.open(raw / f).convert("RGB")
        b, p, pt = naive_m.detect(img, landmarks=True)
        naive.append(_chosen(b, p, pt, img.width, img.height, params))
    t_naive = time.perf_counter() - t0

    # per_image: ferpipe's detection settings, one image per call
    det = FaceDetector(params)
    t0 = time.perf_counter()
    per_image = []
    for f in files:
        rgb, _ = load_rgb(raw / f, params.max_image_pixels)
        d_img, (sx, sy) = detection_image(rgb, params.detect_max_side, params.detect_min_side)
        d = det.detect([d_img])[0].scaled(sx, sy)
        per_image.append(_chosen(d.boxes, d.scores, d.points, rgb.shape[1], rgb.shape[0],
                                 params))
    t_per = time.perf_counter() - t0

    # stage: end to end
    man = write_manifest(work / f"{name}.parquet", raw, files)
    out = work / f"out_{name}"
    t0 = time.perf_counter()
    rep = align_stage(man, raw, out, params, progress=False)
    t_stage = time.perf_counter() - t0
    stage = [None] * n
    for s in shards.iter_samples(out, "train", decode=None):
        meta = json.loads(s["json"])
        i = int(s["__key__"][1:])
        if meta.get("box") is not None:
            stage[i] = (np.asarray(meta["box"], np.float32),
                        np.asarray(meta["points_src"], np.float32))
    faces = rep.splits["train"]["written"]

    # stage with align.channels_last false: detections bitwise equal to facenet-pytorch's own
    # NCHW call with the same settings (the default's channels-last nets move points ~1e-4 px)
    out_nchw = work / f"out_{name}_nchw"
    t0 = time.perf_counter()
    rep_nchw = align_stage(man, raw, out_nchw, params.model_copy(update={"channels_last": False}), progress=False)
    t_nchw = time.perf_counter() - t0
    stage_nchw = [None] * n
    for s in shards.iter_samples(out_nchw, "train", decode=None):
        meta = json.loads(s["json"])
        if meta.get("box") is not None:
            stage_nchw[int(s["__key__"][1:])] = (np.asarray(meta["box"], np.float32),
                                               np.asarray(meta["points_src"], np.float32))
    res_nchw = {"seconds": round(t_nchw, 3), "images_per_s": round(n / t_nchw, 2),
              "faces_per_s": round(rep_nchw.splits["train"]["written"] / t_nchw, 2),
              "speedup_vs_naive": round(t_naive / t_nchw, 2),
              "agreement_vs_stage": compare(stage, stage_nchw), "agreement_vs_naive": compare(naive, stage_nchw)}
    res = {
        "stage_nchw": res_nchw,
        "images": n, "faces_aligned": faces,
        "naive": {"seconds": round(t_naive, 3), "images_per_s": round(n / t_naive, 2),
                  "faces_found": sum(x is not None for x in naive)},
        "per_image_same_settings": {"seconds": round(t_per, 3),
                                    "images_per_s": round(n / t_per, 2)},
        "stage": {"seconds": round(t_stage, 3), "images_per_s": round(n / t_stage, 2),
                  "faces_per_s": round(faces / t_stage, 2),
                  "skipped_by_reason": rep.skipped_by_reason},
        "speedup_vs_naive": round(t_naive / t_stage, 2),
        "speedup_vs_per_image": round(t_per / t_stage, 2),
        "agreement_stage_vs_per_image": compare(per_image, stage),
        "agreement_stage_vs_naive": compare(naive, stage),
    }
    if name.startswith("b_"):
        # Even photos hold the labelled face (the astronaut, large, near the centre); odd
        # ones are crowd crops where min_face_frac drops the smaller faces naive still finds.
        ev = slice(0, None, 2)
        res["agreement_stage_vs_naive_labelled_face_photos"] = compare(naive[ev], stage[ev])
        res["agreement_stage_vs_naive_crowd_photos"] = compare(naive[1::2], stage[1::2])
    return res


_MEM_SCRIPT = """
import resource, sys, time
sys.path.insert(0, sys.argv[5])
from ferpipe.align import AlignParams, align_stage
p = AlignParams(threads=int(sys.argv[4]), decode_workers=1, batch_size=32,
                samples_per_shard=1000, points=sys.argv[6])
t = time.perf_counter()
r = align_stage(sys.argv[1], sys.argv[2], sys.argv[3], p, progress=False)
dt = time.perf_counter() - t
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, kids, dt, r.splits["train"]["written"])
"""


def bench_memory(raw: Path, files: list[str], sizes: list[int], threads: int, work: Path,
                 mode: str) -> dict:
    """Peak RSS for growing manifests. ``mode="mtcnn"`` is the full path; ``"dataset"``
    gives every row landmarks (detected once per distinct file) so only decode, warp, JPEG
    and tar writing run: the same streaming machinery, fast enough for 20k rows here."""
    out = {"mode": mode}
    landmarks = None
    if mode == "dataset":
        from ferpipe.align import AlignParams
        from ferpipe.align.decode import load_rgb
        from ferpipe.align.detect import FaceDetector

        det = FaceDetector(AlignParams(threads=threads))
        landmarks = {}
        for f in files:
            rgb, _ = load_rgb(raw / f, 10**8)
            d = det.detect([rgb])[0]
            landmarks[f] = d.points[int(d.scores.argmax())].ravel().tolist()
    for n in sizes:
        man = write_manifest(work / f"mem{n}.parquet", raw, files, n_rows=n,
                             landmarks=landmarks)
        r = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(man), str(raw),
                            str(work / f"mem_out{n}"), str(threads), str(ROOT), mode],
                           capture_output=True, text=True, check=True)
        main_kb, child_kb, dt, written = r.stdout.split()[-4:]
        out[str(n)] = {"peak_rss_main_mb": round(int(main_kb) / 1024, 1),
                       "peak_rss_decode_worker_mb": round(int(child_kb) / 1024, 1),
                       "seconds": round(float(dt), 2), "written": int(written),
                       "faces_per_s": round(int(written) / float(dt), 2)}
        print(f"  memory {n:>6} rows: {out[str(n)]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-small", type=int, default=1024)
    ap.add_argument("--n-photo", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mem-sizes", type=int, nargs="*", default=[2000, 20000])
    ap.add_argument("--mem-mode", default="mtcnn", choices=["mtcnn", "dataset"])
    ap.add_argument("--mem-files", type=int, default=64, help="distinct files the rows cycle")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-mem", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/align_throughput.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    args = ap.parse_args()
    if args.smoke:
        args.n_small, args.n_photo, args.mem_sizes, args.mem_mode, args.mem_files = 4, 2, [8], "dataset", 4

    rng = np.random.default_rng(0)
    results: dict = {"machine": machine(), "smoke": args.smoke, "threads": args.threads,
                     "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        raw = work / "raw"
        raw.mkdir()
        small = make_small(raw, max(args.n_small, args.mem_files), rng)
        photos = make_photos(raw, args.n_photo, rng)
        if not args.skip_speed:
            for name, files in (("a_256x256_one_face", small[:args.n_small]),
                                ("b_640x480_photos", photos)):
                print(f"[{name}] {len(files)} images ...", flush=True)
                results[name] = bench_set(name, raw, files, args.threads, work,
                                          decode_workers=0 if args.smoke else 1)
                print(json.dumps(results[name], indent=1), flush=True)
                _save(args.out, results)
        if not args.skip_mem:
            print("[memory] streaming check ...", flush=True)
            results["memory"] = bench_memory(raw, small[:args.mem_files], args.mem_sizes,
                                             args.threads, work, args.mem_mode)
    _save(args.out, results)
    print(f"wrote {args.out}")


def _save(path: str, results: dict) -> None:
    # Saved after every section: a long run cut short still leaves its figures.
    results["load_average_1m"] = round(os.getloadavg()[0], 2)
    results["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                        / 1024, 1)
    write_result(path, results)


if __name__ == "__main__":
    main()
