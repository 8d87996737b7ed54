"""The training stage against its own step: does ``ferpipe train`` run at the speed of the step?

``benchmarks/loader.py`` times the loader and the step apart. This one runs the real stage
(``ferpipe.train.stage.train_stage``: persistent loader workers, the trainer's defaults,
``train.num_workers`` and ``train.threads`` from params) on the same kind of shards and compares
its training images/s (the history's ``train_images_per_s``: the steps with their loader waits,
validation excluded) with the orsanet-cpu step alone at the same torch threads, timed before and
after the stage. Epoch 1 (workers starting, first allocations) is reported but not in the median.

Inputs: GT-aligned synthetic faces at 224 px as ``maps`` priors shards (``loader.make_shards``).

    python benchmarks/train_stage.py [--n-per-class 150] [--epochs 4] [--rounds 5]
        [--out benchmarks/results/train_stage.json] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import interleaved, machine, write_result  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "train_stage.json"
DATASET = "bench"


def step_images_per_s(shards_dir: Path, rounds: int, steps_per_round: int) -> dict:
    """The orsanet-cpu step with the trainer's defaults (channels_last per preset, fused optimiser)."""
    from loader import D
    from train_step import cpu_preset_batch, sam_step

    from ferpipe.train.loop import RunOptions

    cfg, model, inputs, y = cpu_preset_batch(D.probe_shards(shards_dir), 32)
    step = sam_step(model, inputs, y, optimizer_name=cfg.optimizer, lr=cfg.lr, channels_last=cfg.channels_last,
                    fused=RunOptions().fused_optimizer)
    step()  # first call allocates

    def steps():
        for _ in range(steps_per_round):
            step()

    rows = interleaved({"train_steps": steps}, rounds)
    return {"batch": cfg.batch_size, "timing": rows["train_steps"],
            "images_per_s": steps_per_round * cfg.batch_size / rows["train_steps"]["median_s"]}


def stage_images_per_s(work: Path, epochs: int) -> dict:
    from ferpipe.layout import Layout
    from ferpipe.train.params import TrainParams
    from ferpipe.train.stage import train_stage

    params = TrainParams(dataset=DATASET, shards_dir="maps", epochs=epochs)
    report = train_stage(params, Layout(work))
    per_epoch = [h["train_images_per_s"] for h in report.history]
    steady = per_epoch[1:] or per_epoch
    return {"preset": report.preset, "epochs": epochs, "num_workers": params.num_workers, "threads": params.threads,
            "train_images_per_s_by_epoch": [round(v, 1) for v in per_epoch],
            "train_images_per_s": statistics.median(steady),
            "train_images_per_s_whole_run": report.metrics["train_images_per_s"]}


def main(argv=None) -> int:
    from loader import make_shards

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-per-class", type=int, default=150, help="synthetic faces per class (7 classes)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5, help="step timings before and after the stage")
    ap.add_argument("--steps-per-round", type=int, default=4)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_per_class, args.epochs, args.rounds, args.steps_per_round = 10, 2, 1, 1
    out: dict = {"machine": machine(), "smoke": args.smoke, "args": vars(args),
                 "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text("{}\n")  # a project root: params paths resolve inside it
        make_shards(work, args.n_per_class)
        before = step_images_per_s(work / "maps", args.rounds, args.steps_per_round)
        stage = stage_images_per_s(work, args.epochs)
        after = step_images_per_s(work / "maps", args.rounds, args.steps_per_round)
    step_ips = statistics.median([before["images_per_s"], after["images_per_s"]])
    out.update({"step_before": before, "step_after": after, "step_images_per_s": step_ips, "stage": stage,
                "stage_over_step": stage["train_images_per_s"] / step_ips})
    print(f"orsanet-cpu: train stage {stage['train_images_per_s']:.1f} img/s (epochs 2+; by epoch "
          f"{stage['train_images_per_s_by_epoch']}) vs step alone {step_ips:.1f} img/s "
          f"(before {before['images_per_s']:.1f}, after {after['images_per_s']:.1f}) = "
          f"{100 * out['stage_over_step']:.0f}% of the step")
    print(f"wrote {write_result(args.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
