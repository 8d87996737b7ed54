"""The download flow against a real Prefect API: it runs the stage and publishes its artifacts."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.test_download import make_rafdb_tree


def _artifacts_of(flow_run_id):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.client.schemas.sorting import ArtifactSort

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
                sort=ArtifactSort.KEY_ASC, limit=200, offset=0)

    return {a.key: a for a in asyncio.run(read())}


def test_download_flow_publishes_counts_and_rejections(prefect_api, tmp_path):
    from flows.download import download_flow

    make_rafdb_tree(tmp_path / "src", per_class=3)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"download": {"dataset": "tiny-raf", "source": str(tmp_path / "src"),
                                                   "workers": 1}}))
    state = download_flow(params_path=str(params), overrides=["download.val_fraction=0.34"],
                          root=str(tmp_path), return_state=True)
    assert state.is_completed()
    report = state.result()
    assert report.n_usable == 7 * 3 + 7 + 1

    artifacts = _artifacts_of(state.state_details.flow_run_id)
    counts = artifacts["download-tiny-raf-counts"]
    assert counts.type == "table"
    assert "surprise" in counts.data and "train" in counts.data
    rejected = artifacts["download-tiny-raf-rejected"]
    assert rejected.type == "markdown"
    assert "train_00101.jpg" in rejected.data and "corrupt" in rejected.data
    assert "Leakage" in rejected.data
    assert (Path(tmp_path) / "data/manifests/tiny-raf.parquet").exists()
