"""prior-nets on a LaPa-layout tree of real photos (the plumbing run) and the training speed
that sets how long a real LaPa epoch takes here.

    python benchmarks/prior_nets_lapa.py [--threads 2] [--epochs 8]

1. Builds tests/_lapa_tree.py's tree (8 real faces from packaged photos, approximate ground
   truth from MTCNN points: 5 train / 1 val / 2 test) and runs ``prior_nets_stage`` with
   ``source=lapa`` on it: NME / mIoU on its LaPa test split (2 faces: plumbing, not accuracy).
2. Trains each net one epoch on 256 jittered copies of the train faces at the default batch
   (32) to measure images/s, and from it the time of one epoch of LaPa's 18,176 training faces
   (both nets; data loading not included).

Writes benchmarks/results/prior_nets_lapa.json (machine, load average, CPU flags included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferpipe.priors import PriorNetsParams  # noqa: E402
from ferpipe.priors.data import FaceSet, lapa_faces  # noqa: E402
from ferpipe.priors.training import prior_nets_stage, train_net  # noqa: E402

LAPA_TRAIN = 18_176


def _cpu() -> dict:
    info = {"model": platform.processor()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                info["isa"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
                break
    except OSError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ferpipe.sources.synthetic import load_ground_truth, render_archive
    from tests._lapa_tree import write_lapa_tree

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        res = render_archive(tmp / "synth", n_per_class=2, size=192, seed=7, workers=1, progress=False)
        lapa = write_lapa_tree(tmp / "LaPa", res.archive, load_ground_truth(res.groundtruth))
        p = PriorNetsParams(source="lapa", lapa_dir=str(lapa), epochs=args.epochs, batch_size=4,
                            threads=args.threads)
        t0 = time.perf_counter()
        rep = prior_nets_stage(p, tmp / "nets", log=lambda s: None)
        plumbing_s = time.perf_counter() - t0
        # speed at the default batch: 256 jittered copies of the 5 train faces
        reps = [lapa_faces(lapa, "train", p.aligned_size, p.margin, p.input_size, seed, (0.05, 6.0, 0.04))
                for seed in range(52)]
        big = FaceSet(np.concatenate([r.images for r in reps])[:256], np.concatenate([r.parsing for r in reps])[:256],
                      np.concatenate([r.points for r in reps])[:256], [n for r in reps for n in r.names][:256])
        q = PriorNetsParams(epochs=1, batch_size=32, threads=args.threads)
        ips = {}
        for task in ("parser", "landmarks"):
            _, info = train_net(task, big, q, log=lambda s: None)
            ips[task] = info["images_per_second"]
    epoch_s = sum(LAPA_TRAIN / v for v in ips.values())
    m = rep.metrics
    doc = {
        "command": "python benchmarks/prior_nets_lapa.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": _cpu(), "threads": args.threads, "torch": torch.__version__,
                    "platform": platform.platform(), "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "plumbing_run": {"tree": "tests/_lapa_tree.py (8 real faces, approximate MTCNN-derived labels)",
                         "n_train": rep.n_train, "n_test": rep.n_test, "epochs": args.epochs,
                         "seconds": round(plumbing_s, 1), "seconds_per_epoch": round(
                             (rep.seconds_by_part["train_parser"] + rep.seconds_by_part["train_landmarks"]) / args.epochs, 2),
                         "test_nme": round(m["landmarks"]["nme"], 4), "test_miou": round(m["parser"]["miou"], 4),
                         "test_pixel_accuracy": round(m["parser"]["pixel_accuracy"], 4)},
        "speed_batch32": {"images_per_second": ips,
                          "lapa_epoch_seconds_both_nets": round(epoch_s, 0),
                          "lapa_default_run_hours": round(epoch_s * PriorNetsParams().epochs / 3600, 2)},
    }
    out = ROOT / "benchmarks" / "results" / "prior_nets_lapa.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
