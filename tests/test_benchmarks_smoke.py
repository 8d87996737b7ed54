"""Every script in benchmarks/ runs in smoke mode (tiny sizes) and writes its JSON with the
machine block, so an interface change fails CI instead of the README's figures.

Parametrised over the directory: a new benchmark is picked up without touching this file.
Modules starting with an underscore are helpers, not benchmarks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_smoke(script: Path, tmp_path):
    out = tmp_path / f"{script.stem}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script.name} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    doc = json.loads(out.read_text())
    m = doc["machine"]
    assert m["cpu_model"] and isinstance(m["isa_flags"], list) and m["cpu_count"] >= 1
    assert m["torch"] and len(m["loadavg_start"]) == 3 and len(m["loadavg_end"]) == 3


def test_every_benchmark_takes_smoke_and_out():
    for script in SCRIPTS:
        text = script.read_text()
        assert '"--smoke"' in text and '"--out"' in text, f"{script.name} needs --smoke and --out"
