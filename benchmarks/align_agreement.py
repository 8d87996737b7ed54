"""How far apart two align outputs are: same rows aligned, same faces, how far the points moved,
how many samples differ at all.

    python benchmarks/align_agreement.py DIR_A DIR_B [--out benchmarks/results/align_agreement.json]

compares two ``data/aligned/<dataset>`` directories (e.g. the same params before and after a code
change, or on two machines). Without directories it makes its own pair on the default dataset
(``--n-per-class`` images a class): ``ferpipe align --no-flow`` with one detection lane
(``align.threads=1``) and with the default lanes, which must not differ in a byte.

Points are compared from the samples' JSON (``points_src``, 0.01 px precision) and through the
warp matrices (6 decimals): ``matrix_points_maxpx`` is the largest distance between where the two
matrices put the same source points.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine, write_result  # noqa: E402

from ferpipe import shards  # noqa: E402


def _samples(aligned: Path) -> dict[str, tuple[dict, bytes]]:
    out = {}
    for split in json.loads((aligned / "index.json").read_text())["splits"]:
        for s in shards.iter_samples(aligned, split, decode=None):
            out[s["__key__"]] = (json.loads(s["json"]), s["jpg"])
    return out


def _box_iou(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def agreement(dir_a: Path, dir_b: Path) -> dict:
    a, b = _samples(Path(dir_a)), _samples(Path(dir_b))
    both = sorted(set(a) & set(b))
    faces = iou = 0
    iou_min, pts_max, mat_max, differ = 1.0, 0.0, 0.0, []
    for k in both:
        (ja, jpg_a), (jb, jpg_b) = a[k], b[k]
        if ja != jb or jpg_a != jpg_b:
            differ.append(k)
        if ja.get("box") is not None and jb.get("box") is not None:
            faces += 1
            v = _box_iou(ja["box"], jb["box"])
            iou += v
            iou_min = min(iou_min, v)
            pa, pb = np.asarray(ja["points_src"]), np.asarray(jb["points_src"])
            pts_max = max(pts_max, float(np.linalg.norm(pa - pb, axis=1).max()))
            src = np.c_[pa, np.ones(len(pa))]
            moved = src @ np.asarray(ja["matrix"]).T - src @ np.asarray(jb["matrix"]).T
            mat_max = max(mat_max, float(np.linalg.norm(moved, axis=1).max()))
    return {"samples_a": len(a), "samples_b": len(b), "only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a)),
            "faces_both": faces, "box_iou_mean": round(iou / faces, 6) if faces else None,
            "box_iou_min": round(iou_min, 6) if faces else None, "points_src_maxpx": round(pts_max, 4),
            "matrix_points_maxpx": round(mat_max, 6), "samples_differing": len(differ),
            "differing_keys": differ[:50]}


def _lanes_pair(n_per_class: int, work: Path) -> tuple[Path, Path, dict]:
    """The default dataset aligned with one detection lane and with the default lanes."""
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    sets = ["-S", f"download.synthetic.n_per_class={n_per_class}"]
    cli = [sys.executable, "-m", "ferpipe.cli"]
    env_run = {"cwd": work, "check": True, "capture_output": True, "text": True}
    subprocess.run([*cli, "download", "--no-flow", *sets], **env_run)
    dirs = {}
    for name, extra in (("one_lane", ["-S", "align.threads=1"]), ("default_lanes", [])):
        shutil.rmtree(work / "data/aligned", ignore_errors=True)
        subprocess.run([*cli, "align", "--no-flow", *sets, *extra], **env_run)
        dirs[name] = work / name
        shutil.move(work / "data/aligned/synthetic", dirs[name])
    return dirs["one_lane"], dirs["default_lanes"], {"a": "align.threads=1", "b": "default (align.threads=0)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", type=Path, help="two aligned directories (none: one lane vs the default lanes)")
    ap.add_argument("--n-per-class", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "align_agreement.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny set: checks the benchmark runs")
    args = ap.parse_args(argv)
    if len(args.dirs) not in (0, 2):
        ap.error("give two aligned directories, or none")
    out: dict = {"machine": machine(), "smoke": args.smoke}
    with tempfile.TemporaryDirectory() as tmp:
        if args.dirs:
            dir_a, dir_b = args.dirs
            out["compared"] = {"a": str(dir_a), "b": str(dir_b)}
        else:
            dir_a, dir_b, out["compared"] = _lanes_pair(2 if args.smoke else args.n_per_class, Path(tmp))
        out["agreement"] = agreement(dir_a, dir_b)
    g = out["agreement"]
    print(f"{out['compared']['a']} vs {out['compared']['b']}: {g['faces_both']} faces in both "
          f"(only a {g['only_a']}, only b {g['only_b']}), box IoU mean {g['box_iou_mean']}, points moved "
          f"{g['points_src_maxpx']} px at most ({g['matrix_points_maxpx']} px through the matrices); "
          f"{g['samples_differing']} of {g['samples_a']} samples differ")
    print(f"wrote {write_result(args.out, out)}")
    if not args.dirs and g["samples_differing"]:
        print("error: the detection lanes changed the output", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
