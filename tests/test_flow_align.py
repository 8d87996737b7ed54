"""download → align as Prefect flows on a tiny synthetic set, against a real Prefect API; each\nagain as ``--no-flow``, writing the same files."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ferpipe import shards
from ferpipe.config import load_params
from tests._flow_vs_library import assert_same_files, flow_then_library
from tests.test_flow_download import _artifacts_of


def test_align_flow_maps_shards_and_publishes(prefect_api, tmp_path):
    from flows.align import align_flow
    from flows.download import download_flow

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "download": {"dataset": "mini", "workers": 1,
                     "synthetic": {"n_per_class": 3, "size": 160, "workers": 1}},
        "align": {"output_size": 112, "samples_per_shard": 6, "decode_workers": 0, "threads": 1},
    }))
    state = download_flow(params_path=str(params), root=str(tmp_path), return_state=True)
    assert state.is_completed()
    # `ferpipe download --no-flow` writes the same raw copy, manifest and report
    assert_same_files(*flow_then_library(tmp_path, "download", "mini", load_params(params)))

    # a file changed after the manifest was made: the align stage must list it, not crash
    raw = tmp_path / "data/raw/mini/Image/original"
    victim = sorted(raw.glob("train_*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])

    state = align_flow(params_path=str(params), root=str(tmp_path), return_state=True)
    assert state.is_completed()
    report = state.result()
    out = tmp_path / "data/aligned/mini"
    index = json.loads((out / "index.json").read_text())
    n_written = sum(s["totals"]["samples"] for s in index["splits"].values())
    assert n_written == sum(c["written"] for c in report.splits.values()) >= 17
    assert report.skipped_by_reason.get("sha256_mismatch") == 1
    assert len(list(out.glob("*-*.tar"))) >= 4  # 21 images, 6 per shard, 3 splits

    artifacts = _artifacts_of(state.state_details.flow_run_id)
    table = artifacts["align-mini-shards"]
    assert table.type == "table" and "train-000000" in table.data
    gallery = artifacts["align-mini-failures"].data
    assert victim.stem in gallery and "sha256_mismatch" in gallery
    assert "images/s" in artifacts["align-mini-summary"].data

    sample = next(iter(shards.iter_samples(out, "test", decode=None)))
    meta = json.loads(sample["json"])
    assert meta["output_size"] == 112 and len(meta["points_aligned"]) == 5

    # rerun: every shard resumes, shards byte-identical
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    state = align_flow(params_path=str(params), root=str(tmp_path), return_state=True)
    assert state.result().shards_resumed == len(before)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before

    # `ferpipe align --no-flow` from scratch writes the same shards, indexes and report
    assert_same_files(*flow_then_library(tmp_path, "align", "mini", load_params(params)))
