"""Evaluation sets depend on the data and deterministic steps only, and finished stages rerun
without a byte of their outputs or reports changing.

One tiny real project (21 rendered faces, aligned on the dataset's points, prior nets trained one
epoch) is built twice with different prior-net seeds: the prior nets and every prior differ, the
synthetic-occlusion images and metadata do not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ferpipe import shards
from ferpipe.config import params_from_dict
from ferpipe.occlusion import SET_NAME
from ferpipe.pipeline import run_pipeline

pytestmark = pytest.mark.usefixtures("one_thread_module")

TINY = {
    "download": {"dataset": "tiny", "workers": 1, "synthetic": {"n_per_class": 3, "size": 160, "workers": 1}},
    "align": {"points": "dataset", "samples_per_shard": 8, "decode_workers": 0, "threads": 1},
    "prior_nets": {"synthetic_n_per_class": 2, "synthetic_test_fraction": 0.5, "epochs": 1, "batch_size": 4,
                   "workers": 1, "threads": 1},
    "priors": {"batch_size": 4, "device": "cpu", "threads": 1, "gallery_size": 2},
    "occlusion": {"gallery_size": 2},
}


def _params(prior_seed: int):
    raw = json.loads(json.dumps(TINY))
    raw["prior_nets"]["seed"] = prior_seed
    return params_from_dict(raw)


def _samples(d: Path, split: str) -> dict[str, dict[str, bytes]]:
    return {s["__key__"]: s for s in shards.iter_samples(d, split, decode=None)}


def _tree(root: Path, *rels: str) -> dict[str, bytes]:
    out = {}
    for rel in rels:
        p = root / rel
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = f.read_bytes()
    return out


@pytest.fixture(scope="module")
def two_projects(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("prior-seed-0"), tmp_path_factory.mktemp("prior-seed-1")
    run_pipeline(_params(0), a, ["download", "align", "prior-nets", "priors", "occlusion"])
    for rel in ("data/raw", "data/manifests", "data/aligned"):
        shutil.copytree(a / rel, b / rel)
    run_pipeline(_params(1), b, ["prior-nets", "priors", "occlusion"])
    return a, b


@pytest.mark.slow
def test_synthetic_occlusion_set_does_not_depend_on_the_prior_nets(two_projects):
    a, b = two_projects
    nets = "models/prior_nets/parser.pt"
    assert (a / nets).read_bytes() != (b / nets).read_bytes()
    pa, pb = _samples(a / "data/priors/tiny", "test"), _samples(b / "data/priors/tiny", "test")
    assert pa.keys() == pb.keys() and any(pa[k]["landmarks.npy"] != pb[k]["landmarks.npy"] for k in pa)

    oa, ob = _samples(a / "data/occlusion/tiny", SET_NAME), _samples(b / "data/occlusion/tiny", SET_NAME)
    assert len(oa) == len(pa) and oa.keys() == ob.keys()
    for k in oa:
        assert oa[k]["jpg"] == ob[k]["jpg"], k
        assert oa[k]["cls"] == ob[k]["cls"], k
        occ_a, occ_b = json.loads(oa[k]["json"])["occlusion"], json.loads(ob[k]["json"])["occlusion"]
        assert occ_a == occ_b, k
        assert (occ_a["geometry_source"], occ_a["parsing_source"]) == ("groundtruth", "groundtruth")
    report = json.loads((a / "reports/occlusion/tiny.json").read_text())
    assert report["by_placement"] == {"groundtruth": len(oa)}
    meta = f"data/occlusion/tiny/{SET_NAME}.parquet"
    assert (a / meta).read_bytes() == (b / meta).read_bytes()
    # The occluded images' priors are the model's own: recomputed by each project's prior nets.
    assert any(oa[k]["landmarks.npy"] != ob[k]["landmarks.npy"] for k in oa)


@pytest.mark.slow
def test_rerunning_finished_stages_changes_no_byte(two_projects):
    a, _ = two_projects
    stages = ["download", "align", "prior-nets", "priors", "occlusion"]
    tracked = ("data/raw", "data/manifests", "data/aligned", "models/prior_nets", "data/priors", "data/occlusion",
               "reports/download", "reports/align", "reports/priors", "reports/occlusion")
    before = _tree(a, *tracked)
    assert any(k.startswith("reports/occlusion") for k in before)
    run_pipeline(_params(0), a, stages)
    after = _tree(a, *tracked)
    assert after.keys() == before.keys()
    assert [k for k in before if before[k] != after[k]] == []
    # The run's timings are kept, outside what DVC tracks (download's: in its log).
    assert "seconds" not in json.loads((a / "reports/download/tiny.json").read_text())
    for stage in stages[1:]:
        (t,) = (a / "reports" / "timings" / stage).glob("*.json")
        assert "seconds" in json.loads(t.read_text()) or "seconds_by_part" in json.loads(t.read_text()), stage
    assert json.loads((a / "reports/timings/align/tiny.json").read_text())["images_processed"] == 0  # all resumed
