"""Multi-process training the way users launch it: ``torchrun`` running ``ferpipe train``.

Two CPU processes (gloo) on the trainer's tiny shards, through the real CLI and the real
launcher: the stage initialises the process group from torchrun's environment, every rank
trains on its own slot of the data, the ranks' final weights are compared inside the trainer
(it fails loudly when they diverge), and rank 0 alone writes checkpoints and reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ferpipe.train.fixtures import write_random_priors

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    write_random_priors(tmp_path / "data" / "priors" / "tiny", "maps", counts=(64, 14, 14), size=56,
                        samples_per_shard=16)
    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", tmp_path / "params.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    cmd = [str(BIN / "torchrun"), "--standalone", "--nnodes=1", "--nproc-per-node=2", str(BIN / "ferpipe"),
           "train", "--no-flow", "--root", str(tmp_path), "--params", str(tmp_path / "params.yaml"),
           "-S", "train.dataset=tiny", "-S", "train.epochs=2", "-S", "train.batch_size=16",
           "-S", "train.num_workers=0", "-S", "train.threads=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "reports/train/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["ranks_identical"] is True
    assert (tmp_path / "models/train/tiny/best.pt").exists()
