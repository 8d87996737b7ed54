"""Training input pipeline benchmark: per-member costs, steady-state samples/s per worker, and
the loader against the orsanet-cpu training step.

Inputs: synthetic faces rendered here and GT-aligned at 224 px (align's default output size),
as ``maps`` priors shards (68 landmarks npy, parsing PNGs of both views) and as ``features``
shards (the same JPEGs with fp16 lmk/seg grids of ferpipe's default prior nets, [2,192,7,7]).

1. Per member (one process, interleaved rounds, median us/sample): JPEG decode, parsing PNG,
   landmarks npy, random-erasing box, normalisation, the whole ``transform_sample`` and the
   collate, next to the straightforward implementations they replace (PIL decode, the
   per-pixel formula, torchvision's get_params under ``fork_rng``): same outputs, checked.
2. Steady state per worker at 224 px for both prior kinds: one worker, epochs on a persistent
   ``EpochLoader``, first batch excluded; and the cost of starting workers (first batch of a
   fresh loader) against resuming persistent ones.
3. The default loader (``train.num_workers`` from params, the orsanet-cpu preset: 112 px,
   batch 32) against that preset's training step with the trainer's default settings; the two
   are timed alternately (an epoch of the loader, a few steps, ...), medians.

    python benchmarks/loader.py [--n-per-class 40] [--rounds 3] [--threads 1]
        [--out benchmarks/results/loader.json] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import interleaved, machine, write_result  # noqa: E402

from ferpipe import shards  # noqa: E402
from ferpipe.train import data as D  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "loader.json"
FEATURE_SHAPE = (2, 192, 7, 7)  # ferpipe's prior nets (benchmarks/results/priors_throughput.json)


def make_shards(work: Path, n_per_class: int, size: int = 224) -> dict[str, Path]:
    """maps and features priors shards of the same GT-aligned synthetic faces."""
    from ferpipe.sources.synthetic import render_archive
    from ferpipe.train.fixtures import priors_from_synthetic_archive

    res = render_archive(work / "synth", n_per_class=n_per_class, size=256, seed=7, workers=1, progress=False)
    maps = priors_from_synthetic_archive(res.archive, res.groundtruth, work / "maps", size=size,
                                         samples_per_shard=128)
    feats = work / "features"
    rng = np.random.default_rng(0)
    indexes = {}
    for split in D.SPLITS:
        plan = []
        for url in shards.shard_urls(maps, split):
            plan.extend(shards.iter_tar_samples(url))
        specs = shards.plan_shards([{"key": k} for k, _ in plan], 128, split)
        by_key = dict(plan)

        def fn(spec, sink):
            for k in spec.keys:
                f = by_key[k]
                sink.add({"__key__": k, "jpg": f["jpg"], "cls": f["cls"], "json": f["json"],
                          "lmk.npy": shards.encode_npy(rng.normal(0, 1, FEATURE_SHAPE).astype(np.float16)),
                          "seg.npy": shards.encode_npy(rng.normal(0, 1, FEATURE_SHAPE).astype(np.float16))})

        for spec in specs:
            shards.process_shard(spec, fn, feats, force=True)
        indexes[split] = shards.finalize_split(feats, split, specs)
    shards.write_dataset_index(feats, indexes)
    return {"maps": maps, "features": feats}


# --- the straightforward implementations the pipeline's fast paths replace (same outputs) ----------


def _jpeg_pil(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _png_pil(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.uint8)


def _erase_fork_rng(rng: np.random.Generator, img: torch.Tensor, aug: D.Augment):
    from torchvision.transforms import RandomErasing

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(0, 2**63 - 1)))
        return tuple(int(v) for v in RandomErasing.get_params(img, scale=aug.erase_scale, ratio=aug.erase_ratio,
                                                              value=[aug.erase_value])[:4])


def _normalise_formula(img: np.ndarray, aug: D.Augment) -> np.ndarray:
    scale = np.float32(1.0 / 255.0) / np.asarray(aug.std, np.float32)
    x = img.astype(np.float32) * scale - (np.asarray(aug.mean, np.float32) / np.asarray(aug.std, np.float32))
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _normalise_lut(img: np.ndarray, aug: D.Augment) -> np.ndarray:
    x, _, _ = D._augment_view(img, dataclasses.replace(aug, flip_p=0.0, erase_p=0.0), np.random.default_rng(0))
    return x


def member_costs(root: Path, kind: str, size: int, rounds: int) -> dict:
    samples = [dict(f, __key__=k) for url in shards.shard_urls(root, "train") for k, f in shards.iter_tar_samples(url)]
    aug = D.Augment(prior_kind=kind, img_size=size, seed=0, epoch=1)
    img = _jpeg_pil(samples[0]["jpg"])
    # Same outputs first: the timing compares equals.
    for s in samples[:16]:
        assert np.array_equal(D._decode_image(s["jpg"], img.shape[0])[0], _jpeg_pil(s["jpg"]))
        if kind == "maps":
            assert np.array_equal(D._png(s["parsing.png"]), _png_pil(s["parsing.png"]))
    assert np.array_equal(_normalise_lut(img, aug), _normalise_formula(img, aug))
    seeds = [np.random.default_rng(i) for i in range(len(samples))]
    box_img = torch.empty(3, size, size)
    assert all(_erase_fork_rng(np.random.default_rng(i), box_img, aug) == D._erase_box(np.random.default_rng(i), box_img, aug)
               for i in range(64))
    fns = {
        "jpeg_pil": lambda: [_jpeg_pil(s["jpg"]) for s in samples],
        "jpeg": lambda: [D._decode_image(s["jpg"], img.shape[0]) for s in samples],
        "erase_box_fork_rng": lambda: [_erase_fork_rng(r, box_img, aug) for r in seeds],
        "erase_box": lambda: [D._erase_box(r, box_img, aug) for r in seeds],
        "normalise_formula": lambda: [_normalise_formula(img, aug) for _ in samples],
        "normalise": lambda: [_normalise_lut(img, aug) for _ in samples],
        "flip_view": lambda: [np.ascontiguousarray(img[:, ::-1]) for _ in samples],
        "transform_sample": lambda: [D.transform_sample(s, aug) for s in samples],
    }
    if kind == "maps":
        fns.update({"png_pil": lambda: [_png_pil(s["parsing.png"]) for s in samples],
                    "png": lambda: [D._png(s["parsing.png"]) for s in samples],
                    "landmarks_npy": lambda: [shards.decode_npy(s["landmarks.npy"]) for s in samples]})
    else:
        fns["features_npy"] = lambda: [(shards.decode_npy(s["lmk.npy"]), shards.decode_npy(s["seg.npy"]))
                                       for s in samples]
    outs = [D.transform_sample(s, aug) for s in samples[:32]]
    fns["collate_per_sample"] = lambda: [D.collate(outs) for _ in range(max(1, len(samples) // 32))]
    n = {k: (max(1, len(samples) // 32) * 32 if k == "collate_per_sample" else len(samples)) for k in fns}
    rows = interleaved(fns, rounds)
    us = {k: round(v["median_s"] / n[k] * 1e6, 1) for k, v in rows.items()}
    return {"samples": len(samples), "image_size": int(img.shape[0]), "us_per_sample": us,
            "speedups": {"jpeg": round(us["jpeg_pil"] / us["jpeg"], 2),
                         "erase_box": round(us["erase_box_fork_rng"] / us["erase_box"], 2),
                         "normalise": round(us["normalise_formula"] / us["normalise"], 2),
                         **({"png": round(us["png_pil"] / us["png"], 2)} if kind == "maps" else {})}}


def _build(root: Path, kind: str, size: int, batch: int, seed: int = 0):
    urls = shards.shard_urls(root, "train")
    index = D.build_index(urls)
    aug = D.Augment(prior_kind=kind, img_size=size, seed=seed)
    return functools.partial(D.train_epoch_pipeline, urls=urls, aug=aug, batch_size=batch, seed=seed, index=index,
                             num_classes=7), len(index)


def steady_state(root: Path, kind: str, size: int, workers: int, epochs: int, batch: int = 32) -> dict:
    """samples/s of a persistent loader after its first batch, and the start-up costs."""
    build, n = _build(root, kind, size, batch)
    t0 = time.perf_counter()
    first = next(iter(D.make_loader(build(1), workers)))
    fresh_first_batch_s = time.perf_counter() - t0
    loader = D.EpochLoader(build, workers)
    t0 = time.perf_counter()
    it = loader.epoch(1)
    next(it)
    persistent_start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    count = sum(len(b["key"]) for b in it)
    resumes, epoch_s = [], []
    for e in range(2, epochs + 2):
        t1 = time.perf_counter()
        it = loader.epoch(e)
        b = next(it)
        resumes.append(time.perf_counter() - t1)
        count += len(b["key"]) + sum(len(b["key"]) for b in it)
        epoch_s.append(time.perf_counter() - t1)
    dt = time.perf_counter() - t0
    loader.close()
    assert len(first["key"]) > 0
    return {"workers": workers, "image_size": size, "batch": batch, "samples": count,
            "samples_per_s": count / dt, "samples_per_s_per_worker": count / dt / max(workers, 1),
            "fresh_loader_first_batch_s": fresh_first_batch_s, "persistent_first_batch_s": persistent_start_s,
            "persistent_next_epoch_first_batch_s": statistics.median(resumes),
            "epoch_samples": n, "epoch_s_median": statistics.median(epoch_s)}


def loader_vs_step(root: Path, workers: int, rounds: int, steps_per_round: int) -> dict:
    """The default loader (orsanet-cpu's input: maps at 112, batch 32) against the step."""
    from train_step import cpu_preset_batch, sam_step

    from ferpipe.train import presets
    from ferpipe.train.loop import RunOptions

    cfg = presets.get_preset("orsanet-cpu")
    build, n = _build(root, "maps", cfg.img_size, cfg.batch_size, seed=cfg.seed)
    loader = D.EpochLoader(build, workers)
    sum(1 for _ in loader.epoch(1))  # workers up (a run pays this once)
    shardset = D.probe_shards(root, splits=("train",))
    _, model, inputs, y = cpu_preset_batch(shardset, cfg.batch_size)
    fused = RunOptions().fused_optimizer
    step = sam_step(model, inputs, y, optimizer_name=cfg.optimizer, lr=cfg.lr, channels_last=cfg.channels_last,
                    fused=fused)
    epoch = [1]

    def one_epoch():
        epoch[0] += 1
        return sum(len(b["key"]) for b in loader.epoch(epoch[0]))

    def steps():
        for _ in range(steps_per_round):
            step()

    rows = interleaved({"loader_epoch": one_epoch, "train_steps": steps}, rounds)
    loader.close()
    loader_ips = n / rows["loader_epoch"]["median_s"]
    step_ips = steps_per_round * cfg.batch_size / rows["train_steps"]["median_s"]
    return {"preset": "orsanet-cpu", "image_size": cfg.img_size, "batch": cfg.batch_size, "workers": workers,
            "channels_last": cfg.channels_last, "fused_optimizer": fused, "epoch_samples": n, "timing": rows,
            "loader_images_per_s": loader_ips, "train_step_images_per_s": step_ips,
            "loader_over_step": loader_ips / step_ips}


def main(argv=None) -> int:
    from ferpipe.train.params import TrainParams

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-per-class", type=int, default=40, help="synthetic faces per class (7 classes)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the steady-state runs")
    ap.add_argument("--workers", type=int, default=TrainParams().num_workers, help="default: train.num_workers")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the step (0: torch's default)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the benchmark runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_per_class, args.rounds, args.epochs = 3, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {"machine": machine(), "smoke": args.smoke, "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        roots = make_shards(Path(tmp), args.n_per_class)
        for kind in ("maps", "features"):
            out[f"members_{kind}_224"] = member_costs(roots[kind], kind, 224, args.rounds)
            print(kind, "224 px us/sample:", out[f"members_{kind}_224"]["us_per_sample"], flush=True)
            out[f"steady_{kind}_224"] = steady_state(roots[kind], kind, 224, 1, args.epochs)
            s = out[f"steady_{kind}_224"]
            print(f"{kind} 224 px, 1 worker: {s['samples_per_s_per_worker']:.0f} samples/s steady; fresh loader first "
                  f"batch {s['fresh_loader_first_batch_s']:.2f}s, persistent next epoch "
                  f"{s['persistent_next_epoch_first_batch_s']:.2f}s", flush=True)
        # the preset reads 224 px shards at 112 (PIL bilinear resize in the worker)
        out["loader_vs_step"] = r = loader_vs_step(roots["maps"], args.workers, args.rounds,
                                                   steps_per_round=1 if args.smoke else 4)
        print(f"orsanet-cpu: loader ({args.workers} workers) {r['loader_images_per_s']:.0f} img/s vs step "
              f"{r['train_step_images_per_s']:.0f} img/s = x{r['loader_over_step']:.1f}", flush=True)
    print(f"wrote {write_result(args.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
