"""The GPU run: what a lent CUDA machine measures in one go (< 8 minutes), into one JSON.

1. align on CUDA: the align stage end to end (decode pool, batched MTCNN on the GPU, warp, JPEG,
   tars) on 256x256 one-face images, against the same stage on the CPU on a subset (same faces
   found, largest point difference).
2. ORSANet large, SAM step, AMP bf16 + channels-last + torch.compile: cached priors
   (``priors="features"``) against the release's online frozen nets (``priors="online"``), and
   the same pair in plain fp32 NCHW eager (the release's own settings). Interleaved, medians.
3. The training loader (224 px, maps and features priors) against that cached step: samples/s
   with all but one core as workers, per worker, and the cores a GPU step of that speed needs.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json] [--batch 64] [--align-images 1024]
    python benchmarks/gpu.py --smoke   # CPU, tiny sizes: every part runs; CUDA-only parts say why not

Every part records its own error instead of stopping the others; the exit status is 1 when one
failed (after the JSON is written), so a smoke run in CI catches an interface change.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import interleaved, machine, write_result  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def part_align(work: Path, device: str, n: int, n_cpu: int, out: dict) -> None:
    import json

    from align_throughput import compare, make_small, write_manifest

    from ferpipe import shards
    from ferpipe.align import AlignParams, align_stage

    raw = work / "raw"
    raw.mkdir()
    files = make_small(raw, n, np.random.default_rng(0))

    def run(name: str, files_: list[str], dev: str) -> tuple[float, list]:
        man = write_manifest(work / f"{name}.parquet", raw, files_)
        params = AlignParams(device=dev, decode_workers=max(1, min(4, (os.cpu_count() or 2) - 1)),
                             batch_size=64 if dev == "cuda" else 32)
        t0 = time.perf_counter()
        rep = align_stage(man, raw, work / f"out_{name}", params, progress=False)
        dt = time.perf_counter() - t0
        got = [None] * len(files_)
        for s in shards.iter_samples(work / f"out_{name}", "train", decode=None):
            meta = json.loads(s["json"])
            if meta.get("box") is not None:
                got[int(s["__key__"][1:])] = (np.asarray(meta["box"], np.float32),
                                              np.asarray(meta["points_src"], np.float32))
        out[f"align_{name}"] = {"device": dev, "images": len(files_), "seconds": dt, "images_per_s": len(files_) / dt,
                                "written": rep.splits["train"]["written"]}
        return dt, got

    _, cpu = run("cpu", files[:n_cpu], "cpu")
    if device == "cuda":
        _, gpu = run("cuda", files, "cuda")
        out["align_cuda_vs_cpu_agreement"] = compare(cpu, gpu[:n_cpu])
        out["align_cuda_over_cpu"] = out["align_cuda"]["images_per_s"] / out["align_cpu"]["images_per_s"]
    else:
        out["align_cuda_skipped"] = "no CUDA device: align ran on the CPU only"


def part_step(device: torch.device, batch: int, rounds: int, compile_: bool, out: dict, smoke: bool = False) -> dict:
    from ferpipe.losses.criterion import create_criterion
    from ferpipe.models import create_model
    from ferpipe.train.loop import _train_step
    from ferpipe.train.optim import build_optimizer

    # Smoke: ORSANet large's trunk and frozen nets with one fusion block (the code path, not the cost).
    create = functools.partial(create_model, "orsanet", variant="large", **({"depth": 1} if smoke else {}))
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 7, (batch,), device=device)
    online = create(priors="online").to(device)
    with torch.no_grad():
        lmk, seg = online.compute_priors(x)
    amp = torch.bfloat16 if device.type == "cuda" else None
    if amp is None:
        out["step_amp_skipped"] = "bf16 autocast only timed on CUDA"
    if compile_ and device.type != "cuda":
        out["step_compile_skipped"] = "torch.compile only timed on CUDA (minutes on a CPU)"
        compile_ = False

    def make(priors: str, fast: bool):
        torch.manual_seed(0)
        m = create(priors=priors).to(device)
        m.load_state_dict(online.state_dict(), strict=False)
        xi = x
        if fast:
            m.to(memory_format=torch.channels_last)
            xi = x.contiguous(memory_format=torch.channels_last)
        net = torch.compile(m) if (fast and compile_) else m
        opt = build_optimizer("sam-adam", [p for p in m.parameters() if p.requires_grad], lr=4e-5, device=device,
                              fused=fast and device.type == "cuda")
        crit = create_criterion("orsanet", 7)
        crit.set_epoch(6)
        inputs = [lmk, seg] if priors == "features" else []
        m.train()

        def step():
            _train_step(net, opt, None, crit, xi, inputs, y, device, amp if fast else None, 6, 1, [])
            _sync(device)

        return step

    variants = {"online_release": ("online", False), "cached_release_settings": ("features", False),
                "online_fast": ("online", True), "cached_fast": ("features", True)}
    if smoke:  # two Swin-B passes per online step: its priors ran above; timed only in a real run
        variants = {k: v for k, v in variants.items() if v[0] == "features"}
        out["step_online_skipped"] = "--smoke"
    fns = {k: make(*v) for k, v in variants.items()}
    t0 = time.perf_counter()
    for fn in fns.values():  # compile + warm-up outside the timing
        fn()
    out["step_warmup_s"] = time.perf_counter() - t0
    rows = interleaved(fns, rounds, warmup=0)
    r = {k: v["median_s"] for k, v in rows.items()}
    res = out["step"] = {"batch": batch, "rounds": rounds, "amp": str(amp), "compile": compile_, "timing": rows,
                         "cached_fast_images_per_s": batch / r["cached_fast"],
                         "fast_settings_gain_cached": r["cached_release_settings"] / r["cached_fast"]}
    if "online_release" in r:
        res.update(cached_fast_vs_online_release=r["online_release"] / r["cached_fast"],
                   cached_fast_vs_online_fast=r["online_fast"] / r["cached_fast"],
                   cached_vs_online_release_settings=r["online_release"] / r["cached_release_settings"])
    return res


def part_loader(work: Path, step_ips: float | None, workers: int, epochs: int, n_per_class: int, out: dict) -> None:
    from loader import make_shards, steady_state

    roots = make_shards(work, n_per_class)
    for kind in ("maps", "features"):
        one = steady_state(roots[kind], kind, 224, 1, epochs)
        many = steady_state(roots[kind], kind, 224, workers, epochs)
        res = out[f"loader_{kind}_224"] = {"one_worker": one, "workers": many}
        if step_ips:  # the cached step's images/s (part 2)
            res.update(loader_over_step=many["samples_per_s"] / step_ips,
                       cores_to_feed_step=step_ips / one["samples_per_s_per_worker"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--batch", type=int, default=64, help="ORSANet-large step batch on the GPU")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--align-images", type=int, default=1024)
    ap.add_argument("--align-cpu-images", type=int, default=128)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--loader-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--n-per-class", type=int, default=40)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks every part runs")
    args = ap.parse_args(argv)
    dev = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    dev = "cpu" if dev == "auto" else dev
    if args.smoke:
        dev, args.batch, args.rounds, args.align_images, args.align_cpu_images = "cpu", 2, 1, 4, 4
        args.no_compile, args.loader_workers, args.n_per_class = True, 1, 3
        torch.set_num_threads(1)
    device = torch.device(dev)
    out: dict = {"machine": machine(), "smoke": args.smoke, "device": dev, "args": vars(args), "errors": {},
                 "part_seconds": {}}
    step_ips = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, fn in (
            ("align", lambda: part_align(work / "align", dev, args.align_images, args.align_cpu_images, out)),
            ("step", lambda: part_step(device, args.batch, args.rounds, not args.no_compile, out, args.smoke)),
            ("loader", lambda: part_loader(work / "loader", step_ips, args.loader_workers,
                                           1 if args.smoke else 2, args.n_per_class, out)),
        ):
            t0 = time.perf_counter()
            (work / name).mkdir()
            try:
                res = fn()
                if name == "step":
                    step_ips = res["cached_fast_images_per_s"]
            except Exception as exc:  # noqa: BLE001 - one part failing must not lose the others
                out["errors"][name] = "".join(traceback.format_exception(exc))[-2000:]
                print(f"[{name}] failed: {exc}", flush=True)
            out["part_seconds"][name] = time.perf_counter() - t0
            print(f"[{name}] {out['part_seconds'][name]:.1f}s", flush=True)
            write_result(args.out, out)  # after every part: a run cut short keeps what it measured
    print(f"wrote {args.out}")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
