"""DVC remote round trip on a clone of the project: repro → push → wipe cache and data → pull →
up to date, and `dvc repro` runs nothing.

The clone is of the repository's HEAD (committed files only), on a tiny synthetic set. Its stage
commands (`ferpipe <stage>`) run the clone's code (PYTHONPATH) with the venv first on PATH, on
Prefect's ephemeral server, as a plain `dvc repro` does. The first run uses the Dask task runner,
the forced rerun the default one: `flows.*` params are no DVC dependency and change no byte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UP_TO_DATE = "Data and pipelines are up to date."


def _env(tmp: Path, proj: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT__") and k not in ("PREFECT_API_URL", "PYTHONPATH")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(proj),
               PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1")
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"$ {' '.join(cmd)} -> {proc.returncode}\n{out[-4000:]}"
    return out


def _digests(data: Path) -> dict[str, str]:
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file() and p.relative_to(data).parts[0] != "downloads"}


def _lock_out(proj: Path, stage: str, path: str) -> dict:
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    return next(o for o in lock["stages"][stage]["outs"] if o["path"] == path)


def _set_params(proj: Path, **sections: dict) -> None:
    path = proj / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        for key, value in values.items():
            node = params[section]
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_push_wipe_pull_is_up_to_date_and_repro_is_a_no_op(tmp_path):
    proj, remote = tmp_path / "proj", tmp_path / "remote"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(proj)], check=True, timeout=120)
    env = _env(tmp_path, proj)

    def dvc(*args: str) -> str:
        return _run([str(BIN / "dvc"), *args], proj, env)

    _set_params(proj,
                download={"workers": 1, "synthetic.n_per_class": 3, "synthetic.size": 160, "synthetic.workers": 1},
                align={"samples_per_shard": 8, "decode_workers": 0, "threads": 1},
                flows={"task_runner": "dask", "dask_workers": 2})

    out = dvc("repro", "align")  # download + align
    assert "Running stage 'download'" in out and "Running stage 'align'" in out, out
    data = proj / "data"
    before = _digests(data)
    assert any(k.startswith("aligned/synthetic/") and k.endswith(".tar") for k in before), sorted(before)
    assert any(k.endswith("_stats.json") for k in before)

    dvc("remote", "add", "-d", "local", str(remote))
    dvc("push", "--with-deps", "align")
    shutil.rmtree(proj / ".dvc" / "cache")
    shutil.rmtree(data)
    dvc("pull", "--with-deps", "align")
    assert _digests(data) == before  # every pulled file, byte for byte (the scratch data/downloads aside)
    assert UP_TO_DATE in dvc("status", "align")

    # The runner is no dependency of any stage: back to the default one, still up to date.
    _set_params(proj, flows={"task_runner": "default"})
    assert UP_TO_DATE in dvc("status", "align")
    out = dvc("repro", "align")
    assert "Running stage" not in out, out
    assert "Stage 'download' didn't change, skipping" in out and "Stage 'align' didn't change, skipping" in out

    # A forced rerun of align on the default runner (its done markers gone) writes the same
    # bytes, done markers (_stats.json) included: the directory's DVC hash does not move.
    aligned_hash = _lock_out(proj, "align", "data/aligned/synthetic")
    for marker in (data / "aligned/synthetic").glob("*_stats.json"):
        marker.unlink()
    out = dvc("repro", "--force", "--single-item", "align")
    assert "Running stage 'align'" in out and "0 shards resumed" in out, out
    assert _digests(data) == before
    assert _lock_out(proj, "align", "data/aligned/synthetic") == aligned_hash
    assert UP_TO_DATE in dvc("status", "align")
