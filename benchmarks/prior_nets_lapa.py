"""prior-nets on a LaPa-layout tree of real photos (the plumbing run) and the training speed
that sets how long a real LaPa epoch takes here.

    python benchmarks/prior_nets_lapa.py [--threads 2] [--epochs 8]
        [--out benchmarks/results/prior_nets_lapa.json] [--smoke]

1. Builds tests/_lapa_tree.py's tree (8 real faces from packaged photos, approximate ground
   truth from MTCNN points: 5 train / 1 val / 2 test) and runs ``prior_nets_stage`` with
   ``source=lapa`` on it: NME / mIoU on its LaPa test split (2 faces: plumbing, not accuracy).
2. Trains each net one epoch on 256 jittered copies of the train faces at the default batch
   (32) to measure images/s, and from it the time of one epoch of LaPa's 18,176 training faces
   (both nets; data loading not included).

Writes benchmarks/results/prior_nets_lapa.json (machine, load average, CPU flags included).
``--smoke``: one thread, one epoch and 32 jittered copies, to check the benchmark runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine, write_result  # noqa: E402

from ferpipe.priors import PriorNetsParams  # noqa: E402
from ferpipe.priors.data import FaceSet, lapa_faces  # noqa: E402
from ferpipe.priors.training import prior_nets_stage, train_net  # noqa: E402

LAPA_TRAIN = 18_176


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prior_nets_lapa.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    args = ap.parse_args()
    n_speed = 256
    if args.smoke:
        args.threads, args.epochs, n_speed = 1, 1, 32
    torch.set_num_threads(args.threads)
    host = machine()
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
                for seed in range(-(-n_speed // 5))]
        big = FaceSet(np.concatenate([r.images for r in reps])[:n_speed],
                      np.concatenate([r.parsing for r in reps])[:n_speed],
                      np.concatenate([r.points for r in reps])[:n_speed],
                      [n for r in reps for n in r.names][:n_speed])
        q = PriorNetsParams(epochs=1, batch_size=32, threads=args.threads)
        ips = {}
        for task in ("parser", "landmarks"):
            _, info = train_net(task, big, q, log=lambda s: None)
            ips[task] = info["images_per_second"]
    epoch_s = sum(LAPA_TRAIN / v for v in ips.values())
    m = rep.metrics
    doc = {
        "command": "python benchmarks/prior_nets_lapa.py " + " ".join(sys.argv[1:]),
        "machine": host, "threads": args.threads, "smoke": args.smoke, "speed_images": n_speed,
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
    print(write_result(args.out, doc).read_text(), end="")


if __name__ == "__main__":
    main()
