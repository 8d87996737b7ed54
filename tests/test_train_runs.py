"""A training run never replaces another silently: a run whose params differ from params.yaml's is
refused when it would replace the workspace's model and reports (unless --overwrite); params.yaml's
own run (dvc repro, dvc exp run) always may; the resolved hyperparameters are recorded in the
checkpoint and in reports/train/params.yaml (a params file for `dvc exp show`)."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from ferpipe.cli import main
from ferpipe.errors import FerpipeError
from ferpipe.layout import Layout
from ferpipe.train import presets
from ferpipe.train.checkpoint import load
from ferpipe.train.fixtures import write_random_priors
from ferpipe.train.params import TrainParams
from ferpipe.train.stage import train_stage

pytestmark = pytest.mark.usefixtures("one_thread_module")

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "ir_widths": (8, 8, 16), "ir_units": (1, 1, 1),
        "ir_stem_width": 8, "ir_input_size": None, "spade_hidden": 8, "encoder_widths": (8, 8, 16),
        "drop_path_rate": 0.1}
SIZE = 56


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_random_priors(tmp_path_factory.mktemp("runs"), "features", counts=(32, 14, 14), size=SIZE,
                               samples_per_shard=16)


@pytest.fixture
def project(tmp_path, shards, monkeypatch) -> Path:
    shutil.copytree(shards, tmp_path / "data" / "priors" / "tiny")
    base = presets.get_preset("orsanet-cpu")
    monkeypatch.setitem(presets._PRESETS, "tiny-runs", dataclasses.replace(
        base, model_kwargs=TINY, img_size=SIZE, batch_size=16, eval_batch_size=32, epochs=1, shuffle_buffer=32,
        scheduler="none", warmup_epochs=0, preset="tiny-runs"))
    return tmp_path


def _p(**kw) -> TrainParams:
    return TrainParams(dataset="tiny", preset="tiny-runs", num_workers=0, threads=1, **kw)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outputs(root: Path) -> dict[str, str]:
    files = [root / "models/train/tiny/best.pt", root / "models/train/tiny/last.pt",
             *sorted((root / "reports/train").glob("*.json")), root / "reports/train/params.yaml"]
    return {str(f.relative_to(root)): _digest(f) for f in files}


@pytest.mark.slow
def test_a_run_unlike_params_yaml_never_replaces_the_workspace_run(project):
    layout = Layout(project)
    declared = _p(lr=3e-3)                       # params.yaml's train section
    train_stage(declared, layout, declared=declared)
    before = _outputs(project)
    resolved = yaml.safe_load((project / "reports/train/params.yaml").read_text())
    assert resolved["epochs"] == 1 and resolved["lr"] == 3e-3 and resolved["preset"] == "tiny-runs"
    assert resolved["dataset"] == "tiny" and resolved["model_kwargs"]["ir_widths"] == [8, 8, 16]
    assert load(project / "models/train/tiny/best.pt")["config"]["lr"] == 3e-3

    # -S train.epochs=2: refused, nothing written, the message says how to run it instead
    with pytest.raises(FerpipeError) as err:
        train_stage(_p(lr=3e-3, epochs=2), layout, declared=declared)
    msg = str(err.value)
    assert "epochs: 1 -> 2" in msg and "dvc exp run --temp -S train.epochs=2" in msg and "--overwrite" in msg
    assert "models/train/tiny/best.pt" in msg
    assert _outputs(project) == before

    # --overwrite: replaced, and the checkpoint and params file record what was trained
    train_stage(_p(lr=3e-3, epochs=2), layout, declared=declared, overwrite=True)
    assert load(project / "models/train/tiny/best.pt")["config"]["epochs"] == 2
    assert yaml.safe_load((project / "reports/train/params.yaml").read_text())["epochs"] == 2

    # the same experiment again: the checkpoint there is its own, so it may
    train_stage(_p(lr=3e-3, epochs=2), layout, declared=declared)
    # a run with yet other params is refused again, leaving everything as it was
    kept = _outputs(project)
    with pytest.raises(FerpipeError, match="lr: 0.003 -> 0.01"):
        train_stage(_p(lr=1e-2, epochs=2), layout, declared=declared)
    assert _outputs(project) == kept

    # params.yaml edited (what dvc repro runs): its own run always replaces the workspace's
    edited = _p(lr=1e-2)
    train_stage(edited, layout, declared=edited)
    assert yaml.safe_load((project / "reports/train/params.yaml").read_text())["lr"] == 1e-2


def test_ferpipe_train_with_other_params_is_refused_with_exit_2(project, capsys):
    # A model dir and reports from params.yaml's run (content does not matter for the refusal).
    (project / "models/train/tiny").mkdir(parents=True)
    (project / "models/train/tiny/best.pt").write_bytes(b"params.yaml's model")
    (project / "reports/train").mkdir(parents=True)
    (project / "reports/train/metrics.json").write_text("{}")
    params = project / "params.yaml"
    params.write_text("download:\n  dataset: tiny\ntrain:\n  preset: tiny-runs\n  num_workers: 0\n  threads: 1\n")
    code = main(["train", "--no-flow", "--root", str(project), "--params", str(params), "-S", "train.epochs=3",
                 "-S", "train.num_workers=0"])
    err = capsys.readouterr().err
    assert code == 2 and "dvc exp run --temp -S train.epochs=3" in err and "--overwrite" in err
    # the whole pipeline: refused before its first stage runs
    code = main(["pipeline", "--no-flow", "--root", str(project), "--params", str(params), "-S", "train.lr=0.01"])
    err = capsys.readouterr().err
    assert code == 2 and "dvc exp run --temp -S train.lr=0.01" in err
    assert not (project / "data" / "raw").exists() and not (project / "data" / "manifests").exists()
    assert (project / "models/train/tiny/best.pt").read_bytes() == b"params.yaml's model"
    assert (project / "reports/train/metrics.json").read_text() == "{}"
