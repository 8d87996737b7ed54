"""Does choosing the face by the dataset's box (detecting in its region) keep the points right?
Render the synthetic RAF-DB layout (it ships ground-truth boxes and 5 points), align it with
``use_dataset_box`` off and on, compare the chosen rule and the 5-point error.

    python benchmarks/align_dataset_box.py [--n-per-class 12] [--difficulty default|hard]
        [--out benchmarks/results/align_dataset_box_<difficulty>.json] [--smoke]

The error is the per-image mean distance between the aligned points (in source pixels) and the
ground truth, over the ground-truth inter-ocular distance. Seconds are wall time of one align
run each, interleaved in one process on a shared machine: compare them only as ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-per-class", type=int, default=12)
    ap.add_argument("--difficulty", default="default", choices=("default", "hard"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    a = ap.parse_args()
    if a.smoke:
        a.n_per_class = 2  # the synthetic source's minimum

    import torch

    from ferpipe import shards
    from ferpipe.align import AlignParams, align_stage
    from ferpipe.config import params_from_dict
    from ferpipe.layout import Layout
    from ferpipe.sources.download import download_stage

    torch.set_num_threads(1)
    out: dict = {"machine": machine(), "smoke": a.smoke, "n_per_class": a.n_per_class, "difficulty": a.difficulty}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        p = params_from_dict({"download": {"dataset": "syn", "source": "synthetic", "workers": 1,
                                           "synthetic": {"n_per_class": a.n_per_class,
                                                         "workers": 1,
                                                         "difficulty": a.difficulty}}}).download
        layout = Layout(root)
        rep = download_stage(p, layout, log=lambda _: None)
        gt = json.loads(zipfile.ZipFile(rep.ground_truth).read("groundtruth.json"))["images"]
        for use, size in ((False, 256), (True, 192), (True, 256)):
            name = f"use_dataset_box={use}" + (f",box_detect_size={size}" if use else "")
            t0 = time.perf_counter()
            r = align_stage(layout.manifest("syn"), layout.raw("syn"), root / name,
                            AlignParams(use_dataset_box=use, box_detect_size=size, threads=1,
                                        decode_workers=0), progress=False)
            seconds = time.perf_counter() - t0
            errs, rules = [], {}
            for split in r.splits:
                for s in shards.iter_samples(root / name, split):
                    m = s["json"]
                    rules[m["chosen_by"]] = rules.get(m["chosen_by"], 0) + 1
                    g = np.asarray(gt[Path(m["source"]["path"]).name]["points5"])
                    if m["points_src"] is not None:
                        e = np.linalg.norm(np.asarray(m["points_src"]) - g, axis=1).mean()
                        errs.append(e / np.linalg.norm(g[0] - g[1]))
            out[name] = {"seconds": round(seconds, 2), "chosen_by": rules,
                         "nme_mean": round(float(np.mean(errs)), 4),
                         "nme_p95": round(float(np.percentile(errs, 95)), 4),
                         "skipped": r.skipped_by_reason, "noted": r.noted_by_reason}
    dest = write_result(a.out or ROOT / "benchmarks" / "results" / f"align_dataset_box_{a.difficulty}.json", out)
    print(dest.read_text(), end="")


if __name__ == "__main__":
    main()
