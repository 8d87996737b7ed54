"""Prediction throughput and memory: ``ferpipe.load_model`` on photos and on a video, PyTorch and
onnxruntime, and peak memory on a video 10x longer (streaming: it must stay flat).

    python benchmarks/predict.py [--smoke] [--checkpoint models/train/<ds>/best.pt] [--threads 2]
        [--photos 64] [--frames 60] [--out benchmarks/results/predict.json]

Without ``--checkpoint`` a small project is made in a temporary directory exactly as the pipeline
makes it (rendered faces, MTCNN alignment, prior nets, priors) and the default model (orsanet-cpu
preset, 112 px, maps priors; ``--smoke``: a tiny ORSANet) is trained for one step: the weights do
not matter for speed. Inputs:

- photos: the rendered 256x256 one-face images, repeated to ``--photos``;
- video: ``--frames`` 640x360 frames at 25 fps (OpenCV ``mp4v``), a rendered face moving over a
  gradient background, a different face every 10 frames; the memory video is the same, 10x longer.

Everything is end to end (decode, detection, alignment, JPEG round trip, priors, network). The
PyTorch and ONNX runs are interleaved (best of ``--repeats``), so their ratio is fair on a shared
machine; absolute numbers depend on the machine's load (recorded). Peak RSS is the process's VmHWM
while one video streams through (reset before each video through /proc/self/clear_refs), on
320x180 videos of ``--mem-frames`` and 10x as many frames.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine, write_result  # noqa: E402

PYFEAT_MS_PER_FRAME = 314.0  # py-feat's published CPU figure at batch 1, as quoted in issue 17


def make_project(root: Path, smoke: bool, model: bool = True) -> Path:
    """A project made by the pipeline itself (rendered faces; with ``model``, also aligned, priors
    and a model trained one step); returns its checkpoint path."""
    from ferpipe.config import params_from_dict
    from ferpipe.pipeline import run_pipeline
    from tests.test_flow_pipeline import TINY

    raw = json.loads(json.dumps(TINY))
    raw["download"]["synthetic"]["size"] = 256
    if not smoke:
        raw["train"]["model_kwargs"] = {}          # the orsanet-cpu preset's own model
        raw["train"]["max_steps_per_epoch"] = 1
    stages = ["download", "align", "prior-nets", "priors", "train"] if model else ["download"]
    run_pipeline(params_from_dict(raw), root, stages)
    return root / "models" / "train" / "tiny" / "best.pt"


def render_video(path: Path, faces: list[np.ndarray], n: int, size=(640, 360), fps: float = 25.0) -> Path:
    import cv2

    w, h = size
    bg = np.zeros((h, w, 3), np.uint8)
    bg[..., 0] = np.linspace(40, 200, w, dtype=np.uint8)[None, :]
    bg[..., 1] = np.linspace(60, 160, h, dtype=np.uint8)[:, None]
    bg[..., 2] = 90
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not wr.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v here")
    for i in range(n):
        f = faces[(i // 10) % len(faces)]
        fh, fw = f.shape[:2]
        x = int((w - fw) * (0.5 + 0.4 * np.sin(i / 15)))
        y = int((h - fh) * (0.5 + 0.3 * np.cos(i / 20)))
        frame = bg.copy()
        frame[y:y + fh, x:x + fw] = f
        wr.write(frame[:, :, ::-1].copy())
    wr.release()
    return path


def _reset_peak_rss() -> bool:
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    for ln in Path("/proc/self/status").read_text().splitlines():
        if ln.startswith("VmHWM:"):
            return int(ln.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    for ln in Path("/proc/self/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) / 1024
    return float("nan")


def _rss_curve(model, video: Path, points: int = 10) -> list[float]:
    """RSS (MB) every 1/points of a video streamed through ``model``."""
    import cv2

    n = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
    step = max(1, n // points)
    return [round(_rss_mb(), 1) for i, _ in enumerate(model.predict_video(video)) if i % step == 0]


def _peak(model, video: Path) -> dict:
    """Stream a whole video through ``model`` (rows counted, not kept); peak RSS during it."""
    import gc

    gc.collect()
    reset = _reset_peak_rss()
    before = _peak_rss_mb()
    n = faces = 0
    t = time.perf_counter()
    for r in model.predict_video(video):
        n += 1
        faces += r["status"] == "ok"
    return {"rows": n, "faces": faces, "seconds": round(time.perf_counter() - t, 2),
            "rss_before_mb": round(before, 1), "peak_rss_mb": round(_peak_rss_mb(), 1), "peak_reset": reset}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny model and few inputs (seconds)")
    ap.add_argument("--checkpoint", help="a trained checkpoint (default: a temporary project's)")
    ap.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads (the machine has 2 cores)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--photos", type=int, default=64)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--mem-frames", type=int, default=48, help="memory video length (x1; then x10), 320x180")
    args = ap.parse_args(argv)
    if args.smoke:
        # every path runs, on a handful of inputs: the CI cost is setup plus ~60 frames in all
        args.photos, args.frames, args.repeats, args.mem_frames = (min(args.photos, 4), min(args.frames, 4), 1,
                                                                   min(args.mem_frames, 1))
    import cv2
    import torch

    import ferpipe
    from ferpipe.predict.export import export_model

    import onnxruntime

    torch.set_num_threads(args.threads)
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="ferpipe-bench-predict-"))
    t0 = time.perf_counter()
    made = make_project(tmp / "proj", args.smoke, model=not args.checkpoint)
    ckpt = Path(args.checkpoint) if args.checkpoint else made
    setup_s = time.perf_counter() - t0
    card = export_model(ckpt, "onnx", tmp / "onnx")
    onnx_path = tmp / "onnx" / card["file"]
    models = {"pytorch": ferpipe.load_model(ckpt, threads=args.threads, batch_size=args.batch_size),
              "onnxruntime": ferpipe.load_model(model=onnx_path, threads=args.threads, batch_size=args.batch_size)}
    raw = sorted((tmp / "proj" / "data" / "raw" / "tiny").rglob("*.jpg"))
    photos = [str(raw[i % len(raw)]) for i in range(args.photos)]
    faces = [cv2.imread(str(p))[:, :, ::-1] for p in raw[:8]]
    video = render_video(tmp / "clip.mp4", faces, args.frames)
    small = [cv2.resize(f, (96, 96), interpolation=cv2.INTER_AREA) for f in faces]
    mem_videos = {"1x": render_video(tmp / "mem1x.mp4", small, args.mem_frames, size=(320, 180)),
                  "10x": render_video(tmp / "mem10x.mp4", small, 10 * args.mem_frames, size=(320, 180))}

    results: dict = {"photos": {}, "video": {}}
    for name, m in models.items():  # warm-up: detector, prior nets, first-call allocations
        m.predict(photos[:2])
    for _ in range(args.repeats):
        for name, m in models.items():  # interleaved
            t = time.perf_counter()
            df = m.predict(photos)
            dt = time.perf_counter() - t
            n = int((df.status == "ok").sum())
            best = results["photos"].get(name)
            if best is None or dt < best["seconds"]:
                results["photos"][name] = {"images": len(photos), "faces": n, "seconds": round(dt, 3),
                                           "faces_per_s": round(n / dt, 2)}
            t = time.perf_counter()
            rows = list(m.predict_video(video))
            dt = time.perf_counter() - t
            best = results["video"].get(name)
            if best is None or dt < best["seconds"]:
                results["video"][name] = {"frames": len({r["frame"] for r in rows}),
                                          "faces": sum(r["status"] == "ok" for r in rows), "seconds": round(dt, 3),
                                          "frames_per_s": round(len(rows) / dt, 2),
                                          "ms_per_frame": round(1000 * dt / max(len(rows), 1), 1)}
    # Batch 1 (what py-feat's figure is measured at).
    m1 = ferpipe.load_model(ckpt, threads=args.threads, batch_size=1)
    m1.predict(photos[:1])
    t = time.perf_counter()
    n1 = sum(1 for _ in m1.predict_video(video))
    dt = time.perf_counter() - t
    results["video"]["pytorch_batch1"] = {"frames": n1, "seconds": round(dt, 3), "frames_per_s": round(n1 / dt, 2),
                                          "ms_per_frame": round(1000 * dt / n1, 1)}
    mem = {}
    for name, m in models.items():
        # First pass over the long video: RSS rises while oneDNN / the allocator meet new batch
        # shapes (MTCNN's R/O-Net batches vary with the candidate count), then saturates; the
        # peaks below are measured after it.
        first = _rss_curve(m, mem_videos["10x"])
        mem[name] = {label: {"frames": (10 if label == "10x" else 1) * args.mem_frames, **_peak(m, v)}
                     for label, v in mem_videos.items()}
        mem[name]["first_pass_rss_mb_every_10pct"] = first
        mem[name]["growth_mb"] = round(mem[name]["10x"]["peak_rss_mb"] - mem[name]["1x"]["peak_rss_mb"], 1)
    pt, ox = results["video"]["pytorch"], results["video"]["onnxruntime"]
    doc = {
        "command": "python benchmarks/predict.py" + (" --smoke" if args.smoke else "")
                   + f" --threads {args.threads} --photos {args.photos} --frames {args.frames} --mem-frames {args.mem_frames}",
        "machine": info, "onnxruntime": onnxruntime.__version__,
        "model": {"name": card["model_name"], "model_kwargs": card["model_kwargs"], "img_size": card["params"]["img_size"],
                  "prior_kind": card["recipe"]["data_prior_kind"], "weights": "trained 1 step (speed only)"
                  if not args.checkpoint else str(ckpt)},
        "inputs": {"photos": "256x256 rendered one-face images", "video": "640x360 mp4v 25 fps, rendered faces",
                   "memory_videos": f"320x180 mp4v, {args.mem_frames} and {10 * args.mem_frames} frames"},
        "batch_size": args.batch_size, "threads": args.threads, "setup_seconds": round(setup_s, 1),
        "photos": results["photos"], "video": results["video"], "memory_peak_rss": mem,
        "onnx_vs_pytorch_video": round(ox["frames_per_s"] / pt["frames_per_s"], 3),
        "pyfeat": {"published_ms_per_frame_cpu_batch1": PYFEAT_MS_PER_FRAME,
                   "ours_ms_per_frame_batch1": results["video"]["pytorch_batch1"]["ms_per_frame"],
                   "note": "py-feat's figure is from its own docs on other hardware and a different model "
                           "stack (detector + AU + emotion); a like-for-like ratio needs both on one machine"},
    }
    out = write_result(args.out or ROOT / "benchmarks" / "results" / ("predict_smoke.json" if args.smoke else "predict.json"),
                       doc)
    print(json.dumps({k: doc[k] for k in ("photos", "video", "memory_peak_rss", "onnx_vs_pytorch_video")}, indent=1))
    print(f"-> {out}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
