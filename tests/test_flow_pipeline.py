"""The ``pipeline`` flow: every stage flow, in dvc.yaml's order, as subflows of one run (what the
Prefect UI shows nested under the pipeline run)."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from prefect import flow

from ferpipe.pipeline import STAGES, select_stages


def _subflow_runs(parent_id) -> list[tuple[str, str, object, object]]:
    """(flow name, state name, start, end) of the parent run's subflow runs, by start time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def read():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])), limit=50)
            names = {r.flow_id: (await client.read_flow(r.flow_id)).name for r in runs}
            return [(names[r.flow_id], r.state.name, r.start_time, r.end_time) for r in runs]

    return sorted(asyncio.run(read()), key=lambda r: r[2])


def test_stage_selection_keeps_pipeline_order():
    from ferpipe.errors import ConfigError

    assert select_stages(None) == list(STAGES)
    assert select_stages(["evaluate", "align"]) == ["align", "evaluate"]
    with pytest.raises(ConfigError, match="unknown stage"):
        select_stages(["allign"])


def test_pipeline_runs_stage_flows_in_order_as_subflows(prefect_api, tmp_path, monkeypatch):
    """The stage flows replaced by recording stand-ins (the real chain: the slow test below)."""
    import flows.pipeline as pipeline
    from flows.pipeline import pipeline_flow

    calls: list[tuple] = []

    def fake(stage: str, fail: bool = False):
        @flow(name=stage)
        def stage_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = "."):
            calls.append((stage, params_path, list(overrides or []), root))
            if fail:
                raise RuntimeError(f"{stage} broke")
            return f"{stage} report"
        return stage_flow

    params = tmp_path / "params.yaml"
    params.write_text("{}")
    monkeypatch.setattr(pipeline, "STAGE_FLOWS", {s: fake(s) for s in STAGES})
    overrides = ["download.synthetic.n_per_class=3"]
    state = pipeline_flow(params_path=str(params), overrides=overrides, root=str(tmp_path), return_state=True)
    assert state.is_completed(), state
    assert list(state.result().reports) == list(STAGES)
    assert calls == [(s, str(params), overrides, str(tmp_path)) for s in STAGES]
    runs = _subflow_runs(state.state_details.flow_run_id)
    assert [r[0] for r in runs] == list(STAGES) and {r[1] for r in runs} == {"Completed"}
    assert all(a[3] <= b[2] for a, b in zip(runs, runs[1:]))  # one after the other

    # a failing stage fails the pipeline; later stages never start
    calls.clear()
    monkeypatch.setattr(pipeline, "STAGE_FLOWS", {s: fake(s, fail=s == "priors") for s in STAGES})
    state = pipeline_flow(params_path=str(params), root=str(tmp_path), return_state=True)
    assert state.is_failed()
    assert [c[0] for c in calls] == ["download", "align", "prior-nets", "priors"]


# One tiny real project: 21 rendered faces, MTCNN alignment, prior nets trained 1 epoch, a tiny
# ORSANet trained for 2 steps.
TINY_MODEL = {"depth": 1, "embed_dim": 32, "num_heads": 2, "ir_widths": [8, 8, 16], "ir_units": [1, 1, 1],
              "ir_stem_width": 8, "spade_hidden": 8, "encoder_widths": [8, 8, 16], "drop_path_rate": 0.0}
TINY = {
    "download": {"dataset": "tiny", "workers": 1, "synthetic": {"n_per_class": 3, "size": 160, "workers": 1}},
    "align": {"samples_per_shard": 8, "decode_workers": 0, "threads": 1},
    "prior_nets": {"synthetic_n_per_class": 2, "synthetic_test_fraction": 0.5, "epochs": 1, "batch_size": 4,
                   "workers": 1, "threads": 1},
    "priors": {"batch_size": 4, "device": "cpu", "threads": 1, "gallery_size": 2},
    "occlusion": {"gallery_size": 2},
    "train": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 4, "eval_batch_size": 8, "warmup_epochs": 0,
              "num_workers": 0, "threads": 1, "device": "cpu", "shuffle_buffer": 16, "model_kwargs": TINY_MODEL},
    "evaluate": {"device": "cpu", "batch_size": 8, "num_workers": 0, "fraction_bins": [0.0, 0.5, 1.0]},
}


@pytest.mark.slow
def test_pipeline_flow_end_to_end_on_a_tiny_project(prefect_api, tmp_path):
    from flows.pipeline import pipeline_flow

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(TINY))
    state = pipeline_flow(params_path=str(params), root=str(tmp_path), return_state=True)
    assert state.is_completed(), state
    runs = _subflow_runs(state.state_details.flow_run_id)
    assert [r[0] for r in runs] == list(STAGES) and {r[1] for r in runs} == {"Completed"}
    assert all(a[3] <= b[2] for a, b in zip(runs, runs[1:]))
    report = state.result()
    assert list(report.reports) == list(STAGES) and "== evaluate" in report.summary()
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert metrics  # evaluate read the model train wrote from the priors priors wrote ...
    for out in ("data/aligned/tiny/index.json", "data/priors/tiny/index.json", "models/prior_nets/parser.pt",
                "models/train/tiny/best.pt"):
        assert (tmp_path / out).exists(), out
