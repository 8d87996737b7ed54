"""`ferpipe seeds`: the statistics (against scipy / hand-computed values) and the whole command
against real `dvc exp run --temp` on a tiny DVC project whose one stage writes reports/metrics.json
from train.seed and train.lr (a stand-in for train + evaluate, which take minutes)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from ferpipe import seeds as S
from ferpipe.cli import main
from ferpipe.experiments import experiments_from_show, flatten_numbers, show_experiments

BIN = Path(sys.executable).parent


def test_summary_is_the_student_t_interval_over_seeds():
    vals = [0.81, 0.79, 0.86]
    got = S.summarize(vals)
    sd = float(np.std(vals, ddof=1))
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(np.mean(vals)) and got["sd"] == pytest.approx(sd)
    assert got["ci95"] == pytest.approx([np.mean(vals) - half, np.mean(vals) + half])
    assert math.isnan(S.summarize([0.5])["sd"])


def test_paired_comparison_says_whether_the_difference_exceeds_the_seed_spread():
    a = [0.80, 0.75, 0.85, 0.78]
    b_up = [x + d for x, d in zip(a, [0.03, 0.04, 0.035, 0.03])]   # consistent gain, large seed spread
    got = S.paired(a, b_up)
    ref = stats.ttest_rel(b_up, a)
    assert got["t"] == pytest.approx(ref.statistic) and got["p"] == pytest.approx(ref.pvalue)
    assert got["verdict"] == "beyond seed spread (B higher)" and got["ci95"][0] > 0
    noisy = [x + d for x, d in zip(a, [0.05, -0.04, 0.03, -0.03])]
    assert S.paired(a, noisy)["verdict"] == "within seed spread"
    assert S.paired([0.5], [0.6])["verdict"] == "needs at least 2 seeds"


def test_show_parsing_and_metric_selection():
    table = [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
             {"rev": "abc", "name": "main", "data": {}, "experiments": [
                 {"name": "e1", "revs": [{"rev": "r1", "name": "e1", "error": None, "data": {
                     "params": {"params.yaml": {"data": {"train": {"seed": 1}}}},
                     "metrics": {"reports/metrics.json": {"data": {"clean": {"accuracy": 0.8, "n": 10}}}}}}]}]}]
    exps = experiments_from_show(table)
    assert set(exps) == {"e1"} and exps["e1"]["params"]["params.yaml"]["train"]["seed"] == 1
    assert flatten_numbers({"a": {"b": 1, "c": [1, 2], "d": True, "e": "x"}, "f": 0.5}) == {"a.b": 1.0, "f": 0.5}
    cfg = S.Config([], "x")
    cfg.metrics = {0: {"clean.accuracy": 0.8, "clean.n": 10, "clean.recall.anger": 0.5},
                   1: {"clean.accuracy": 0.7, "clean.n": 10, "clean.recall.anger": 0.6}}
    assert S.select_metrics([cfg]) == (["clean.accuracy"], ["clean.n"])
    assert S.select_metrics([cfg], ["clean.recall.*"]) == (["clean.recall.anger"], [])


_STAGE = """\
import json, pathlib, yaml
t = yaml.safe_load(open("params.yaml"))["train"]
seed, lr = t["seed"], t["lr"]
gain = 0.05 + 0.002 * seed if lr == 0.01 else 0.0
pathlib.Path("reports").mkdir(exist_ok=True)
json.dump({"clean": {"accuracy": 0.8 + 0.01 * seed + gain, "n": 100},
           "synthetic-occlusion": {"accuracy": 0.6 + 0.03 * (seed % 2), "n": 50},
           "model": {"epoch": 3}}, open("reports/metrics.json", "w"))
"""


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "params.yaml").write_text("train:\n  seed: 123\n  lr: null        # the preset's\n")
    (root / "stage.py").write_text(_STAGE)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"fit": {
        "cmd": f"{sys.executable} stage.py", "deps": ["stage.py"], "params": ["train.seed", "train.lr"],
        "metrics": [{"reports/metrics.json": {"cache": False}}]}}}, sort_keys=False))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "test@ferpipe")
    _git(root, "config", "user.name", "ferpipe test")
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "config", "core.analytics", "false"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "repro", "-q"], cwd=root, check=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "tiny project")
    return root


@pytest.mark.slow
def test_seeds_and_compare_run_dvc_experiments_and_tabulate_them(tmp_path, capsys):
    root = _project(tmp_path / "project")
    params_before = (root / "params.yaml").read_bytes()
    metrics_before = (root / "reports/metrics.json").read_bytes()

    assert main(["seeds", "--seeds", "0,1", "--name", "base", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("running experiment base-s") == 2
    table = json.loads((root / "reports/seeds/base.json").read_text())
    base = table["configs"][0]
    assert base["experiments"] == ["base-s0", "base-s1"]
    assert list(base["metrics"]) == ["clean.accuracy", "synthetic-occlusion.accuracy"]  # n, model.* constant
    clean = base["metrics"]["clean.accuracy"]
    assert clean["values"] == pytest.approx([0.80, 0.81]) and clean["mean"] == pytest.approx(0.805)
    assert clean["sd"] == pytest.approx(np.std([0.8, 0.81], ddof=1))
    md = (root / "reports/seeds/base.md").read_text()
    assert "| clean.accuracy | 0.8050 ± 0.0071 |" in md and "Student t" in md
    assert "Regenerate: `ferpipe seeds --seeds 0,1 --name base`" in md

    # B = lr 0.01 over the same seeds; A's experiments are reused, not rerun
    assert main(["seeds", "--seeds", "0,1", "--name", "base", "--compare", "train.lr=0.01", "--compare-name", "lr01",
                 "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("reusing experiment base-s") == 2 and out.count("running experiment lr01-s") == 2
    table = json.loads((root / "reports/seeds/base-vs-lr01.json").read_text())
    comp = table["comparison"]["metrics"]
    assert comp["clean.accuracy"]["mean"] == pytest.approx(0.051)
    assert comp["clean.accuracy"]["p"] == pytest.approx(stats.ttest_rel([0.85, 0.862], [0.80, 0.81]).pvalue)
    assert comp["clean.accuracy"]["verdict"] == "beyond seed spread (B higher)"
    assert comp["synthetic-occlusion.accuracy"]["verdict"] == "within seed spread"
    assert "| clean.accuracy |" in (root / "reports/seeds/base-vs-lr01.md").read_text()

    # every run is a DVC experiment `dvc exp show` lists with its params; the workspace is as it was
    exps = show_experiments(root)
    assert {"base-s0", "base-s1", "lr01-s0", "lr01-s1"} <= set(exps)
    assert exps["lr01-s1"]["params"]["params.yaml"]["train"] == {"seed": 1, "lr": 0.01}
    assert (root / "params.yaml").read_bytes() == params_before
    assert (root / "reports/metrics.json").read_bytes() == metrics_before
