"""Priors throughput and storage: samples/s per backend and kind, bytes per sample in shards.

    python benchmarks/priors_throughput.py [--n 16] [--n-official 4] [--threads 2]
        [--prior-nets models/prior_nets]

Aligned input: synthetic faces rendered here and aligned on their ground-truth 5 points at
224 (align's default output), written as aligned shards. Backends, each through
``ferpipe.priors.priors_stage`` end to end (decode, both views, encode, tars):
  ferpipe    ferpipe's own nets (the trained ones at --prior-nets when present, else random
             weights: same architecture, same cost)
  official   MobileFaceNet + SegFace Swin-B with random weights saved in the official
             containers (same architecture and cost as the real checkpoints)
samples/s counts samples (each = original + flipped view). bytes/sample is the whole priors
shard divided by its samples (aligned JPEG, json, tar headers included); prior_bytes is the
npy/png payload alone. Writes benchmarks/results/priors_throughput.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine, write_result  # noqa: E402

from ferpipe import shards  # noqa: E402
from ferpipe.priors import PriorsParams, priors_stage  # noqa: E402
from ferpipe.priors.data import align_face  # noqa: E402
from ferpipe.priors.nets import PriorNet, save_prior_net  # noqa: E402


def make_aligned(work: Path, n: int, size: int = 224) -> Path:
    from ferpipe.sources.synthetic import load_ground_truth, render_archive

    per_class = max(1, -(-n // 7))
    res = render_archive(work / "synth", n_per_class=per_class, size=256, seed=11,
                         test_fraction=0.0, workers=1, progress=False)
    gts = load_ground_truth(res.groundtruth)
    names = sorted(gts)[:n]
    zf = zipfile.ZipFile(res.archive)
    rows = [{"key": nm[:-4], "split": "train", "name": nm} for nm in names]

    def fn(spec, sink):
        for it in spec.items:
            g = gts[it["name"]]
            rgb = np.asarray(Image.open(io.BytesIO(zf.read(f"Image/original/{it['name']}"))).convert("RGB"))
            img, _, _ = align_face(rgb, None, g.points68, g.points5, size, 0.0, size)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            sink.add({"__key__": it["key"], "jpg": buf.getvalue(), "cls": str(g.label - 1),
                      "json": {"key": it["key"], "output_size": size}})

    out = work / "aligned" / "synthetic"
    shards.run_sharded_stage(shards.plan_splits(rows, 1000), fn, out, progress=False)
    return out


def official_models(work: Path) -> Path:
    from ferpipe.models import create_model

    d = work / "official"
    (d / "pretrain").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"state_dict": create_model("mobilefacenet").state_dict()},
               d / "pretrain" / "mobilefacenet_model_best.pth.tar")
    torch.save({"epoch": 299, "state_dict_backbone": create_model("segface_swin_b_lapa").state_dict()},
               d / "pretrain" / "model_299.pt")
    return d


def ferpipe_models(work: Path, trained: Path | None) -> tuple[Path, str]:
    d = work / "ferpipe_models"
    if trained and (trained / "parser.pt").is_file() and (trained / "landmarks.pt").is_file():
        import shutil

        (d / "prior_nets").mkdir(parents=True)
        for name in ("parser.pt", "landmarks.pt"):
            shutil.copy(trained / name, d / "prior_nets" / name)
        return d, "trained"
    torch.manual_seed(0)
    for task, name in (("parser", "parser.pt"), ("landmarks", "landmarks.pt")):
        save_prior_net(PriorNet(task), d / "prior_nets" / name, {}, {})
    return d, "random"


def prior_payload(out_dir: Path) -> tuple[float, dict]:
    tot, n, per_ext = 0, 0, {}
    for url in shards.shard_urls(out_dir, "train"):
        keys = set()
        for name, data in shards.iter_tar_members(url):
            k, ext = name.split(".", 1)
            keys.add(k)
            if ext.endswith(".npy") or ext.endswith(".png"):
                tot += len(data)
                per_ext[ext] = per_ext.get(ext, 0) + len(data)
        n += len(keys)
    return tot / max(n, 1), {k: round(v / max(n, 1), 1) for k, v in sorted(per_ext.items())}


def run_one(aligned: Path, out: Path, params: PriorsParams, models: Path) -> dict:
    t0 = time.perf_counter()
    rep = priors_stage(aligned, out, params, models, progress=False)
    wall = time.perf_counter() - t0
    n = sum(c["written"] for c in rep.splits.values())
    payload, per_ext = prior_payload(out)
    # Shard stats files hold no timings (identical runs, identical files): the report's rows do.
    shard_s = sum(r["seconds"] or 0.0 for r in rep.shard_stats)
    return {"kind": params.kind, "backend": params.backend, "samples": n,
            "seconds": round(wall, 2), "samples_per_second": round(n / wall, 3),
            "shard_seconds": round(shard_s, 2),
            "bytes_per_sample": rep.bytes_per_sample, "prior_bytes_per_sample": round(payload, 1),
            "prior_bytes_by_member": per_ext, "shapes": rep.prior.get("models")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--n-official", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prior-nets", default=str(ROOT / "models" / "prior_nets"))
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "priors_throughput.json"))
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, random ferpipe nets, no official (Swin-B) backend: checks the benchmark runs")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.skip_official, args.prior_nets = 2, True, ""
    torch.set_num_threads(args.threads)
    mach = machine("shared 2-core CPU: other jobs may run at the same time")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        aligned = make_aligned(work / "a", args.n)
        fmodels, weights = ferpipe_models(work, Path(args.prior_nets) if args.prior_nets else None)
        for kind in ("maps", "features"):
            r = run_one(aligned, work / f"ferpipe-{kind}", PriorsParams(kind=kind, backend="ferpipe"), fmodels)
            r["weights"] = weights
            results.append(r)
            print(json.dumps(r))
        if not args.skip_official:
            small = make_aligned(work / "b", args.n_official)
            omodels = official_models(work)
            for kind in ("features", "maps"):
                r = run_one(small, work / f"official-{kind}", PriorsParams(kind=kind, backend="official"), omodels)
                r["weights"] = "random (official containers)"
                results.append(r)
                print(json.dumps(r))
    out = Path(args.out)
    if args.skip_official and out.is_file() and not args.smoke:  # keep the earlier official measurements
        results += [r for r in json.loads(out.read_text()).get("results", []) if r["backend"] == "official"]
    doc = {"machine": mach, "smoke": args.smoke, "threads": args.threads, "aligned_size": 224, "results": results}
    write_result(out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
