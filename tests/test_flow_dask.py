"""flows.task_runner: the align flow on a local Dask cluster writes exactly what the default
thread pool writes (the runner changes where shards run, never what they hold)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import psutil
import pytest
import yaml

from ferpipe.config import load_params

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {
    "download": {"dataset": "mini", "workers": 1,
                 "synthetic": {"n_per_class": 5, "size": 160, "workers": 1}},
    # 35 images, 5 per shard: 9 shards over 3 splits; each shard decodes on a thread of its own.
    "align": {"output_size": 112, "samples_per_shard": 5, "decode_workers": 1, "threads": 1},
}


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def _children() -> set[int]:
    """This process's descendants, less multiprocessing's resource tracker: one per process, started
    by the first process pool (here the cluster's) and meant to live until this process ends."""
    def tracker(p: psutil.Process) -> bool:
        try:
            return "multiprocessing.resource_tracker" in " ".join(p.cmdline())
        except psutil.Error:
            return False
    return {p.pid for p in psutil.Process().children(recursive=True) if not tracker(p)}


def test_params_pick_the_task_runner(tmp_path):
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows._common import task_runner_for, with_task_runner
    from flows._dask import DaskTaskRunner
    from flows.align import align_flow
    from flows.download import download_flow
    from flows.priors import priors_flow

    from ferpipe.flows_params import FlowsParams

    assert load_params(ROOT / "params.yaml").flows == FlowsParams()  # shipped = the defaults
    # the runner changes no output: no DVC stage depends on flows.*
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = [p for st in stages.values() for p in st.get("params", []) if isinstance(p, str)]
    assert deps and not [p for p in deps if p == "flows" or p.startswith("flows.")]

    path = tmp_path / "params.yaml"
    path.write_text("{}")
    default = load_params(path)
    assert default.flows.task_runner == "default" and task_runner_for(default.flows) is None
    assert with_task_runner(align_flow, default) is align_flow
    assert isinstance(with_task_runner(priors_flow, default).task_runner, ThreadPoolTaskRunner)

    local = load_params(path, ["flows.task_runner=dask", "flows.dask_workers=3"])
    runner = with_task_runner(priors_flow, local).task_runner
    assert isinstance(runner, DaskTaskRunner) and runner.address is None
    assert runner.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True}
    assert with_task_runner(download_flow, local) is download_flow  # maps no tasks: left alone
    remote = load_params(path, ["flows.task_runner=dask", "flows.dask_address=tcp://10.0.0.5:8786"])
    assert task_runner_for(remote.flows).address == "tcp://10.0.0.5:8786"


@pytest.mark.slow
def test_align_on_a_local_dask_cluster_is_byte_identical(prefect_api, tmp_path, monkeypatch):
    import distributed
    from prefect_dask.client import PrefectDaskClient

    from flows._common import with_task_runner
    from flows.align import align_flow
    from flows.download import download_flow

    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(PARAMS))
    root = tmp_path / "root"
    assert download_flow(params_path=str(params_path), root=str(root), return_state=True).is_completed()
    out = root / "data/aligned/mini"

    # 1. the default runner (each flow's thread pool)
    default = load_params(params_path)
    assert with_task_runner(align_flow, default) is align_flow
    state = align_flow(params_path=str(params_path), root=str(root), return_state=True)
    assert state.is_completed()
    ref = _digests(out)
    ref_index = json.loads((out / "index.json").read_text())
    assert len(ref) >= 7 and state.result().shards_resumed == 0
    shutil.move(out, tmp_path / "aligned-default")

    # 2. a local cluster of 2 worker processes; record the cluster and the submissions
    clusters: list = []
    submitted: list[str] = []

    class RecordingCluster(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            clusters.append(self)

    real_submit = PrefectDaskClient.submit

    def recording_submit(self, func, *args, **kwargs):
        submitted.append(getattr(func, "name", repr(func)))
        return real_submit(self, func, *args, **kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", RecordingCluster)
    monkeypatch.setattr(PrefectDaskClient, "submit", recording_submit)

    overrides = ["flows.task_runner=dask", "flows.dask_workers=2", "flows.dask_threads_per_worker=1"]
    before = _children()
    try:
        flow = with_task_runner(align_flow, load_params(params_path, overrides))
        state = flow(params_path=str(params_path), overrides=overrides, root=str(root), return_state=True)
        assert state.is_completed(), state
        report = state.result()
    finally:
        for c in clusters:  # the runner closes its cluster when the flow ends; make sure of it
            c.close()

    assert len(clusters) == 1
    assert submitted == ["align-shard"] * len(ref)  # every shard went through Dask
    assert report.shards_resumed == 0
    assert _digests(out) == ref
    assert json.loads((out / "index.json").read_text()) == ref_index
    for split in ("train", "val", "test"):
        assert (out / f"{split}_index.json").read_bytes() == \
            (tmp_path / "aligned-default" / f"{split}_index.json").read_bytes()

    # the cluster's worker processes are gone
    deadline = time.monotonic() + 30
    while (left := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [psutil.Process(p).cmdline() for p in left if psutil.pid_exists(p)]
