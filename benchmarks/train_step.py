"""Training-step benchmark for the trainer (CPU; random weights).

1. ORSANet large, batch 8, 224 px, SAM (two forward/backward passes per step):
   cached priors (``priors="features"``, lmk/seg tensors as the shards hold them) against the
   release's online frozen nets (``priors="online"``: MobileFaceNet + SegFace Swin-B inside both
   passes). Identical model output is checked first: the features model given the online
   model's trainable weights and ``compute_priors(x)`` gives the same logits (eval mode).
2. The trainer's speedups on the same step: channels_last, fused optimiser step, torch.compile
   (on the CPU preset model; compiling the large model takes minutes here), host syncs.
3. CPU preset (orsanet-cpu, 112 px): training throughput (images/s) and the loader alone
   (must be >= 5x the training step).

    .venv/bin/python benchmarks/train_step.py [--shards DIR] [--steps 2] [--threads 0] [--skip-large]

Prints a table and writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ferpipe.models import create_model
from ferpipe.train import data as D
from ferpipe.train import presets
from ferpipe.train.fixtures import write_random_priors
from ferpipe.train.loop import _train_step, build_model
from ferpipe.train.optim import build_optimizer
from ferpipe.losses import orsanet_loss_schedule

RESULTS = Path(__file__).parent / "results" / "train_step.json"
BATCH_LARGE = 8


def _interleaved(steps: dict, rounds: int) -> dict:
    """Median seconds per step of each config, timed round-robin (one step of each per round) so
    that load from other processes on a shared machine hits every config alike."""
    for fn in steps.values():
        fn()  # warm-up (allocator, oneDNN primitive cache)
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _sam_step(model, inputs, y, optimizer_name="sam-adam", fused=False, channels_last=False, lr=4e-5):
    if channels_last:
        model.to(memory_format=torch.channels_last)
        inputs = [inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:]]
    opt = build_optimizer(optimizer_name, [p for p in model.parameters() if p.requires_grad], lr=lr, fused=fused)
    loss_fn = orsanet_loss_schedule(6)
    model.train()

    def step():
        _train_step(model, opt, None, loss_fn, inputs[0], list(inputs[1:]), y, torch.device("cpu"), None, 1, 1, [])

    return step


def bench_large(steps: int, out: dict) -> None:
    torch.manual_seed(0)
    x = torch.randn(BATCH_LARGE, 3, 224, 224)
    y = torch.randint(0, 7, (BATCH_LARGE,))
    online = create_model("orsanet", variant="large", priors="online").eval()
    feats = create_model("orsanet", variant="large", priors="features").eval()
    feats.load_state_dict(online.state_dict(), strict=False)
    with torch.no_grad():
        lmk, seg = online.compute_priors(x)
        diff = (online(x) - feats(x, lmk, seg)).abs().max().item()
    out["large_identical_output_max_abs_diff"] = diff
    print(f"large: |online(x) - features(x, priors(x))|_max = {diff:.2e}  (lmk {tuple(lmk.shape)}, seg {tuple(seg.shape)})")
    # Cached priors arrive as fp16 from the shards and are cast on the device, as the loop does.
    lmk16, seg16 = lmk.half(), seg.half()
    models = {"features_sam": feats}
    for name in ("channels_last", "fused_adam"):
        m = create_model("orsanet", variant="large", priors="features")
        m.load_state_dict(feats.state_dict())
        models[name] = m
    fns = {
        "features_sam": _sam_step(models["features_sam"], [x, lmk16.float(), seg16.float()], y),
        "online_sam": _sam_step(online, [x], y),
        "channels_last": _sam_step(models["channels_last"], [x, lmk, seg], y, channels_last=True),
        "fused_adam": _sam_step(models["fused_adam"], [x, lmk, seg], y, fused=True),
    }
    rows = _interleaved(fns, steps)
    out["large_sam_step_s"] = rows
    out["large_cached_speedup"] = rows["online_sam"] / rows["features_sam"]
    print(f"large features (cached priors) SAM step: {rows['features_sam']:.2f}s ({BATCH_LARGE / rows['features_sam']:.2f} img/s)")
    print(f"large online (frozen nets, release) SAM step: {rows['online_sam']:.2f}s "
          f"({BATCH_LARGE / rows['online_sam']:.2f} img/s); cached priors x{out['large_cached_speedup']:.2f} faster")
    for name in ("channels_last", "fused_adam"):
        print(f"large features SAM step + {name}: {rows[name]:.2f}s (x{rows['features_sam'] / rows[name]:.2f})")


def _cpu_model_and_batch(shards: D.ShardSet, batch: int):
    cfg = dataclasses.replace(presets.get_preset("orsanet-cpu"), batch_size=batch)
    model, kw = build_model(cfg, shards, 0)
    aug = D.Augment(prior_kind=shards.prior_kind, img_size=cfg.img_size, seed=0, epoch=1)
    b = next(iter(D.make_loader(D.train_pipeline(shards.urls("train"), aug, batch, seed=0, epoch=1), 0)))
    inputs = [b["image"], *[p.float() if p.is_floating_point() else p for p in b["priors"]]]
    return cfg, model, inputs, b["label"]


def bench_cpu_preset(shards: D.ShardSet, steps: int, workers: int, out: dict) -> None:
    cfg, model, inputs, y = _cpu_model_and_batch(shards, 32)
    fns = {"base": _sam_step(model, inputs, y, optimizer_name=cfg.optimizer, lr=cfg.lr)}
    _, m, _, _ = _cpu_model_and_batch(shards, 32)
    fns["sam_adam"] = _sam_step(m, inputs, y, optimizer_name="sam-adam", lr=cfg.lr)
    for name, kw in (("channels_last", {"channels_last": True}), ("fused", {"fused": True})):
        _, m, _, _ = _cpu_model_and_batch(shards, 32)
        fns[name] = _sam_step(m, inputs, y, optimizer_name=cfg.optimizer, lr=cfg.lr, **kw)
    t = _interleaved(fns, steps)
    base = t["base"]
    res = {"step_s": base, "train_images_per_s": 32 / base, "sam_step_s": t["sam_adam"],
           "channels_last_step_s": t["channels_last"], "fused_step_s": t["fused"]}
    print(f"orsanet-cpu ({shards.prior_kind}, batch 32, {cfg.optimizer}): {base:.3f}s/step, {32 / base:.1f} img/s")
    print(f"orsanet-cpu with SAM-Adam instead: {t['sam_adam']:.3f}s/step (x{t['sam_adam'] / base:.2f} the cost)")
    for name in ("channels_last", "fused"):
        print(f"orsanet-cpu + {name}: {t[name]:.3f}s/step (x{base / t[name]:.2f})")
    # torch.compile: outputs compared with eager in eval mode.
    _, m, _, _ = _cpu_model_and_batch(shards, 32)
    try:
        t0 = time.perf_counter()
        cm = torch.compile(m)
        with torch.no_grad():
            m.eval()
            diff = (cm(*inputs) - m(*inputs)).abs().max().item()
        compile_s = time.perf_counter() - t0
        m.train()
        t = _interleaved({"compiled": _sam_step(cm, inputs, y, optimizer_name=cfg.optimizer, lr=cfg.lr)}, steps)["compiled"]
        res.update(compile_step_s=t, compile_seconds=compile_s, compile_max_abs_diff=diff)
        print(f"orsanet-cpu + torch.compile: {t:.3f}s/step (x{base / t:.2f}); compile+first call {compile_s:.0f}s; "
              f"|compiled - eager|_max = {diff:.1e}")
    except Exception as exc:  # noqa: BLE001
        res["compile_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"torch.compile failed on this CPU: {res['compile_error']}")
    # Loader alone.
    aug = D.Augment(prior_kind=shards.prior_kind, img_size=cfg.img_size, seed=0, epoch=1)
    urls = shards.urls("train")
    idx = D.build_index(urls)
    t0 = time.perf_counter()
    n = 0
    for b in D.make_loader(D.train_pipeline(urls, aug, 32, seed=0, epoch=1,
                                            draws=D.epoch_draws(idx, shards.num_classes, 0, 1)), workers):
        n += len(b["key"])
        if n >= 1024:
            break
    dt = time.perf_counter() - t0
    res["loader_images_per_s"] = n / dt
    res["loader_workers"] = workers
    res["loader_over_train"] = res["loader_images_per_s"] / res["train_images_per_s"]
    print(f"loader alone ({workers} workers, incl. start-up): {n / dt:.0f} img/s = x{res['loader_over_train']:.1f} "
          f"the training step")
    out["cpu_preset"] = res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", help="priors shards for the CPU preset (default: random maps shards at 112)")
    ap.add_argument("--steps", type=int, default=3, help="timed rounds per configuration (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "load_average_start": os.getloadavg(), "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            shards = D.probe_shards(args.shards)
        else:
            shards = D.probe_shards(write_random_priors(Path(tmp) / "p", "maps", counts=(256, 16, 16), size=112,
                                                        samples_per_shard=64))
        out["cpu_preset_shards"] = str(args.shards or "random maps shards, 112 px")
        bench_cpu_preset(shards, args.steps, args.workers, out)
    if not args.skip_large:
        bench_large(args.steps, out)
    out["load_average_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
