"""Training-step benchmark for the trainer (CPU; random weights).

1. ORSANet large, batch 8, 224 px, SAM (two forward/backward passes per step): cached priors
   (``priors="features"``, lmk/seg tensors as the shards hold them) with the trainer's default
   settings (channels-last, fused Adam, ``train.retain_heap``) against the release's online
   frozen nets (``priors="online"``: MobileFaceNet + SegFace Swin-B inside both passes, NCHW,
   torch's default Adam, glibc's default malloc). Each variant runs in a process of its own
   (the heap setting is per process); steps go round-robin over them. The release's step is
   also timed with the retained heap, so the allocator's share of the ratio is on record.
   Identical model output is checked first: the features model given the online model's
   trainable weights and ``compute_priors(x)`` gives the same logits (eval mode); channels-last
   logits are compared with NCHW ones.
2. The trainer's speed settings one at a time on the same step: channels_last, fused optimiser
   step; torch.compile on the CPU preset model (compiling the large one takes minutes here).
3. CPU preset (orsanet-cpu, 112 px, batch 32): step time and images/s, NCHW vs channels-last
   (the loader against this step: benchmarks/loader.py).

Every comparison is timed interleaved (A, B, A, B, ...; medians), so load from other processes
hits all variants alike: read the ratios, not the absolute times, on a shared machine.

    python benchmarks/train_step.py [--steps 3] [--threads 0] [--skip-large] [--compile]
        [--out benchmarks/results/train_step.json] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import interleaved, machine, summarize, write_result  # noqa: E402

from ferpipe.heap import retain_freed_memory  # noqa: E402
from ferpipe.losses.criterion import create_criterion  # noqa: E402
from ferpipe.models import create_model  # noqa: E402
from ferpipe.train import data as D  # noqa: E402
from ferpipe.train import presets  # noqa: E402
from ferpipe.train.fixtures import write_random_priors  # noqa: E402
from ferpipe.train.loop import RunOptions, _train_step, build_model  # noqa: E402
from ferpipe.train.optim import build_optimizer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "train_step.json"


def sam_step(model, inputs, y, *, optimizer_name="sam-adam", fused=False, channels_last=False, lr=4e-5,
             epoch=6):
    """One trainer step (``loop._train_step``, the criterion the ORSANet presets use)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
        inputs = [inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:]]
    opt = build_optimizer(optimizer_name, [p for p in model.parameters() if p.requires_grad], lr=lr, fused=fused)
    criterion = create_criterion("orsanet", 7)
    criterion.set_epoch(epoch)  # past the LSCE warm-up: the DARE phase, most of a run
    model.train()

    def step():
        _train_step(model, opt, None, criterion, inputs[0], list(inputs[1:]), y, torch.device("cpu"), None,
                    epoch, 1, [])

    return step


def _ratio(rows, a, b) -> float:
    return rows[a]["median_s"] / rows[b]["median_s"]


# The large step's variants, each timed in a process of its own, so each runs under its own
# allocator settings: the release's step under glibc's defaults (as its train.py runs), the
# trainer's defaults with train.retain_heap. name -> (priors, channels_last, fused, retain_heap);
# None: the trainer's default for that setting.
LARGE_VARIANTS = {
    "online_release": ("online", False, False, False),
    "online_retained_heap": ("online", False, False, True),
    "features_nchw": ("features", False, False, False),
    "features_channels_last": ("features", True, False, False),
    "features_default": ("features", None, None, None),
}


def _large_model(smoke: bool, batch: int):
    """The seeded inputs and ORSANet large (online), as every process of the benchmark builds them."""
    create = functools.partial(create_model, "orsanet", variant="large", **({"depth": 1} if smoke else {}))
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 7, (batch,))
    return create, x, y, create(priors="online").eval()


def _large_worker(conn, name: str, batch: int, smoke: bool, threads: int) -> None:
    """One variant's process: build its step, then time one step per request from the parent."""
    priors, channels_last, fused, retain = LARGE_VARIANTS[name]
    defaults = RunOptions()
    channels_last = presets.get_preset("orsanet-large").channels_last if channels_last is None else channels_last
    fused = defaults.fused_optimizer if fused is None else fused
    retain = defaults.retain_heap if retain is None else retain
    if threads:
        torch.set_num_threads(threads)
    if retain:
        retain_freed_memory()  # what the trainer's _setup does
    create, x, y, online = _large_model(smoke, batch)
    if priors == "online":
        model, inputs = online, [x]
    else:
        with torch.no_grad():
            lmk, seg = online.compute_priors(x)
        model = create(priors="features")
        model.load_state_dict(online.state_dict(), strict=False)
        del online
        # Cached priors arrive as fp16 from the shards and are cast to float on the device, as the loop does.
        inputs = [x, lmk.half().float(), seg.half().float()]
    step = sam_step(model, inputs, y, channels_last=channels_last, fused=fused)
    conn.send({"channels_last": channels_last, "fused_optimizer": fused, "retain_heap": retain})
    while conn.recv():
        t0 = time.perf_counter()
        step()
        conn.send(time.perf_counter() - t0)
    conn.close()


def _timed_in_processes(names, batch: int, rounds: int, warmup: int, smoke: bool, threads: int):
    """Round-robin steps (A, B, A, B, ...) over one process per variant; each step is timed in
    its own process. Returns (timing rows, each variant's settings)."""
    ctx = mp.get_context("spawn")  # fresh interpreters: glibc's malloc settings are per process
    workers = {}
    try:
        for name in names:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_large_worker, args=(child, name, batch, smoke, threads), daemon=True)
            proc.start()
            workers[name] = (proc, parent)
        settings = {name: conn.recv() for name, (_, conn) in workers.items()}  # built one by one
        times = {name: [] for name in names}
        for r in range(warmup + rounds):
            for name, (_, conn) in workers.items():
                conn.send(True)
                seconds = conn.recv()
                if r >= warmup:
                    times[name].append(seconds)
        return {k: summarize(v) for k, v in times.items()}, settings
    except EOFError as exc:
        dead = [n for n, (p, _) in workers.items() if not p.is_alive()]
        raise RuntimeError(f"benchmark process(es) {dead} died (memory?)") from exc
    finally:
        for proc, conn in workers.values():
            try:
                conn.send(False)
            except OSError:
                pass
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def bench_large(batch: int, rounds: int, out: dict, smoke: bool = False, threads: int = 1) -> None:
    # Smoke: ORSANet large's trunk and frozen nets with one fusion block (the code path, not the cost).
    create, x, y, online = _large_model(smoke, batch)
    feats = create(priors="features").eval()
    feats.load_state_dict(online.state_dict(), strict=False)
    with torch.no_grad():
        lmk, seg = online.compute_priors(x)
        ref = feats(x, lmk, seg)
        diff = (online(x) - ref).abs().max().item()
        cl = create(priors="features").eval()
        cl.load_state_dict(feats.state_dict())
        cl.to(memory_format=torch.channels_last)
        diff_cl = (cl(x.contiguous(memory_format=torch.channels_last), lmk, seg) - ref).abs().max().item()
    out["large_identical_output_max_abs_diff"] = diff
    out["large_channels_last_logits_max_abs_diff"] = diff_cl
    out["large_logits_max_abs"] = ref.abs().max().item()
    print(f"large: |online(x) - features(x, priors(x))|_max = {diff:.2e}; channels_last vs NCHW logits "
          f"{diff_cl:.2e} (logits up to {out['large_logits_max_abs']:.2f})")
    del online, feats, cl
    names = list(LARGE_VARIANTS)
    if smoke:
        # Smoke: the online step (two Swin-B passes per step) is built and its output checked
        # above, but not timed: it alone would take most of the smoke budget.
        names = [n for n in names if not n.startswith("online")]
        out["large_online_step_skipped"] = "--smoke"
    rows, settings = _timed_in_processes(names, batch, rounds, 0 if smoke else 1, smoke, threads)
    r = out["large"] = {"batch": batch, "rounds": rounds, "variants": settings, "sam_step": rows,
                        "timing": "one process per variant, steps round-robin, each timed in its process",
                        "channels_last_gain": _ratio(rows, "features_nchw", "features_channels_last"),
                        "fused_and_heap_gain": _ratio(rows, "features_channels_last", "features_default"),
                        "defaults_gain": _ratio(rows, "features_nchw", "features_default")}
    # Ratios of the fastest round too: on a shared machine the least-disturbed round is the
    # closest to the step's own cost.
    mins = {k: v["min_s"] for k, v in rows.items()}
    r["min_based"] = {"channels_last_gain": mins["features_nchw"] / mins["features_channels_last"],
                      "defaults_gain": mins["features_nchw"] / mins["features_default"]}
    msg = ""
    if "online_release" in rows:
        for key, online_name in (("cached_default_vs_online_release", "online_release"),
                                 ("cached_default_vs_online_same_heap", "online_retained_heap")):
            r[key] = _ratio(rows, online_name, "features_default")
            r["min_based"][key] = mins[online_name] / mins["features_default"]
        r["cached_nchw_vs_online_release"] = _ratio(rows, "online_release", "features_nchw")
        msg = (f"online (release) {rows['online_release']['median_s']:.2f}s -> cached default "
               f"x{r['cached_default_vs_online_release']:.2f} the release (x{r['cached_default_vs_online_same_heap']:.2f} "
               f"against the release given the same heap setting; cached NCHW x{r['cached_nchw_vs_online_release']:.2f}); ")
    print(f"large SAM step, batch {batch}: {msg}cached NCHW {rows['features_nchw']['median_s']:.2f}s, cached default "
          f"{rows['features_default']['median_s']:.2f}s (channels_last x{r['channels_last_gain']:.2f}, "
          f"then fused Adam + retained heap x{r['fused_and_heap_gain']:.2f})")


def cpu_preset_batch(shards: D.ShardSet, batch: int, cfg=None):
    """orsanet-cpu's model (seeded) and one real batch of the shards through the training pipeline."""
    cfg = dataclasses.replace(cfg or presets.get_preset("orsanet-cpu"), batch_size=batch)
    model, _ = build_model(cfg, shards, 0)
    aug = D.Augment(prior_kind=shards.prior_kind, img_size=cfg.img_size, seed=0, epoch=1)
    b = next(iter(D.make_loader(D.train_pipeline(shards.urls("train"), aug, batch, seed=0, epoch=1), 0)))
    inputs = [b["image"], *[p.float() if p.is_floating_point() else p for p in b["priors"]]]
    return cfg, model, inputs, b["label"]


def bench_cpu_preset(shards: D.ShardSet, batch: int, rounds: int, compile_: bool, out: dict) -> None:
    cfg, model, inputs, y = cpu_preset_batch(shards, batch)
    fns = {"nchw": sam_step(model, inputs, y, optimizer_name=cfg.optimizer, lr=cfg.lr)}
    for name, kw in (("channels_last", {"channels_last": True}), ("fused", {"fused": True}),
                     ("sam_adam", {"optimizer_name": "sam-adam"})):
        _, m, _, _ = cpu_preset_batch(shards, batch)
        fns[name] = sam_step(m, inputs, y, **{"optimizer_name": cfg.optimizer, "lr": cfg.lr, **kw})
    _, m, _, _ = cpu_preset_batch(shards, batch)  # the trainer's defaults: preset channels_last, fused optimiser
    fns["default"] = sam_step(m, inputs, y, optimizer_name=cfg.optimizer, lr=cfg.lr, channels_last=cfg.channels_last,
                              fused=RunOptions().fused_optimizer)
    rows = interleaved(fns, rounds)
    default = "default"
    res = {"batch": batch, "rounds": rounds, "optimizer": cfg.optimizer, "default_channels_last": cfg.channels_last,
           "step": rows, "default_step_s": rows[default]["median_s"],
           "train_images_per_s": batch / rows[default]["median_s"],
           "default_gain": _ratio(rows, "nchw", "default"),
           "channels_last_gain": _ratio(rows, "nchw", "channels_last"),
           "fused_gain": _ratio(rows, "nchw", "fused"), "sam_cost": _ratio(rows, "sam_adam", "nchw")}
    print(f"orsanet-cpu ({shards.prior_kind}, batch {batch}, {cfg.optimizer}): default step "
          f"{res['default_step_s']:.3f}s = {res['train_images_per_s']:.1f} img/s (x{res['default_gain']:.2f} NCHW); channels_last "
          f"x{res['channels_last_gain']:.2f}, fused x{res['fused_gain']:.2f}, SAM costs x{res['sam_cost']:.2f}")
    if compile_:
        _, m, _, _ = cpu_preset_batch(shards, batch)
        try:
            t0 = time.perf_counter()
            cm = torch.compile(m)
            with torch.no_grad():
                m.eval()
                diff = (cm(*inputs) - m(*inputs)).abs().max().item()
            compile_s = time.perf_counter() - t0
            m.train()
            t = interleaved({"compiled": sam_step(cm, inputs, y, optimizer_name=cfg.optimizer, lr=cfg.lr),
                             "eager": fns["nchw"]}, rounds)
            res.update(compile_step=t, compile_seconds=compile_s, compile_max_abs_diff=diff,
                       compile_gain=_ratio(t, "eager", "compiled"))
            print(f"orsanet-cpu + torch.compile: x{res['compile_gain']:.2f}; compile + first call {compile_s:.0f}s; "
                  f"|compiled - eager|_max = {diff:.1e}")
        except Exception as exc:  # noqa: BLE001 - a compiler missing on this machine is a result too
            res["compile_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"torch.compile failed on this CPU: {res['compile_error']}")
    else:
        res["compile_skipped"] = "not requested (--compile): compiling takes minutes on 2 cores"
    out["cpu_preset"] = res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", help="priors shards for the CPU preset (default: random maps shards at 112)")
    ap.add_argument("--steps", type=int, default=3, help="timed rounds per configuration (median)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default; 1 by default: on a shared 2-core box two "
                         "OpenMP threads spin-wait on each other and step times swing 10x)")
    ap.add_argument("--batch-large", type=int, default=8,
                    help="ORSANet-large batch (8 by default; the orsanet-large preset trains with 20)")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile on the CPU preset")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the benchmark runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_large, args.compile = 1, 2, False
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"machine": machine(), "steps": args.steps, "smoke": args.smoke}
    batch = 8 if args.smoke else 32
    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            shards = D.probe_shards(args.shards)
        else:
            counts = (16, 4, 4) if args.smoke else (256, 16, 16)
            shards = D.probe_shards(write_random_priors(Path(tmp) / "p", "maps", counts=counts, size=112,
                                                        samples_per_shard=64))
        out["cpu_preset_shards"] = str(args.shards or "random maps shards, 112 px")
        bench_cpu_preset(shards, batch, args.steps, args.compile, out)
    if args.skip_large:
        out["large_skipped"] = "--skip-large"
    else:
        bench_large(args.batch_large, args.steps, out, smoke=args.smoke, threads=args.threads)
    print(f"wrote {write_result(args.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
