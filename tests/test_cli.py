"""The `ferpipe` console command, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.test_download import make_rafdb_tree

ROOT = Path(__file__).resolve().parents[1]


def ferpipe(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferpipe.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_params_shows_overrides():
    out = ferpipe("params", "-S", "download.val_fraction=0.25")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["download"]["val_fraction"] == 0.25


def test_bad_param_exits_2_naming_the_key():
    out = ferpipe("download", "--no-flow", "-S", "download.val_fraction=1.5")
    assert out.returncode == 2
    assert "download.val_fraction" in out.stderr and "less than 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_download_without_prefect(tmp_path):
    make_rafdb_tree(tmp_path / "src", per_class=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"download": {"source": str(tmp_path / "src"),
                                                                       "workers": 1}}))
    out = ferpipe("download", "--no-flow", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "usable images" in out.stdout
    assert (tmp_path / "data/manifests/synthetic.parquet").exists()
    out = ferpipe("download", "--no-flow", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path),
                  "-S", f"download.source={tmp_path / 'nowhere'}")
    assert out.returncode == 2 and "no such file or directory" in out.stderr
