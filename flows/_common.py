"""What every stage flow shares: params loading, the task runner, run names and tags, artifact keys,
markdown tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from prefect import Flow
from prefect.task_runners import TaskRunner

from ferpipe.config import Params, load_params
from ferpipe.flows_params import FlowsParams
from ferpipe.report import artifact_key, markdown_table  # noqa: F401  (the flows' names for them)
from ferpipe.stages import SHARDED

# Flows that map one task per shard: the ones `flows.task_runner` applies to.
SHARDED_FLOWS = SHARDED


def params_for(params_path: str | Path, overrides: Sequence[str] | None) -> Params:
    return load_params(params_path, list(overrides or []))


def task_runner_for(p: FlowsParams) -> TaskRunner | None:
    """The task runner ``flows.*`` asks for; None for ``default`` (the flow keeps its own).

    ``dask``: prefect-dask's DaskTaskRunner on the scheduler at ``dask_address``, else on a
    temporary local cluster of ``dask_workers`` processes (started when the flow submits its
    first task, shut down when the flow run ends).
    """
    if p.task_runner == "default":
        return None
    from flows._dask import DaskTaskRunner  # noqa: PLC0415  (imports distributed: only when asked for)

    if p.dask_address:
        return DaskTaskRunner(address=p.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": p.dask_workers,
                                          "threads_per_worker": p.dask_threads_per_worker,
                                          "processes": True})


def with_task_runner(flow: Flow, params: Params) -> Flow:
    """``flow`` with the task runner ``params.flows`` asks for (sharded flows only), at call time."""
    runner = task_runner_for(params.flows) if flow.name in SHARDED_FLOWS else None
    return flow if runner is None else flow.with_options(task_runner=runner)


class ShardFailed(RuntimeError):
    """A shard task failed: the message names the shard and the reason (what the flow run shows)."""


def run_shard(fn, spec, *args):
    """``fn(spec, *args)``, with any failure re-raised naming the shard, so a flow that fails for
    good after its retries says which shard and why."""
    try:
        return fn(spec, *args)
    except Exception as exc:
        raise ShardFailed(f"shard {spec.name} failed: {type(exc).__name__}: {exc}") from exc


# --- what a run is called and tagged with (the Prefect UI's first column) ---------------------------

# Set by flows.deployments for the `dvc exp run` / `dvc repro` it starts: the stage runs that
# command triggers carry the deployment run's name and id as tags, linking them to it.
LAUNCHED_BY_ENV = "FERPIPE_LAUNCHED_BY"
LAUNCHED_BY_ID_ENV = "FERPIPE_LAUNCHED_BY_ID"


def _stage_dataset(stage: str, params: Params) -> str:
    if stage == "train" and params.train.dataset:
        return params.train.dataset
    return params.download.dataset


def run_context() -> str | None:
    """How this process was started: ``exp <name>`` inside a DVC experiment, ``dvc repro`` in a
    DVC stage, None when run by hand."""
    if os.environ.get("DVC_EXP_NAME"):
        return f"exp {os.environ['DVC_EXP_NAME']}"
    if os.environ.get("DVC_STAGE"):
        return "dvc repro"
    return None


def stage_run_name(stage: str):
    """``flow_run_name`` for a stage flow: ``<stage> · <dataset>[ · exp <name> | · dvc repro]``."""

    def name() -> str:
        from prefect.runtime import flow_run

        given = flow_run.parameters or {}
        try:
            dataset = _stage_dataset(stage, params_for(given.get("params_path", "params.yaml"), given.get("overrides")))
        except Exception:  # noqa: BLE001 - a bad params file fails the flow itself, with its own message
            dataset = "?"
        return " · ".join([stage, dataset, *filter(None, [run_context()])])

    return name


def run_tags(stage: str, params: Params) -> list[str]:
    """Tags for a stage run: the stage, the dataset, the experiment and the run that launched it."""
    tags = ["ferpipe", f"stage:{stage}", f"dataset:{_stage_dataset(stage, params)}"]
    if os.environ.get("DVC_EXP_NAME"):
        tags.append(f"exp:{os.environ['DVC_EXP_NAME']}")
    if os.environ.get(LAUNCHED_BY_ENV):
        tags.append(f"launched-by:{os.environ[LAUNCHED_BY_ENV]}")
    if os.environ.get(LAUNCHED_BY_ID_ENV):
        tags.append(f"launched-by-id:{os.environ[LAUNCHED_BY_ID_ENV]}")
    return tags


def run_stage_flow(stage: str, flow: Flow, params: Params, **kwargs: Any) -> Any:
    """Call a stage flow (``ferpipe <stage>``) with its task runner and its tags."""
    from prefect import tags

    with tags(*run_tags(stage, params)):
        return with_task_runner(flow, params)(**kwargs)


def hyperparameter_tags(config: dict[str, Any]) -> list[str]:
    """The resolved hyperparameters a run is searched by, as ``key:value`` tags."""
    keys = ("preset", "epochs", "lr", "batch_size", "optimizer", "weight_decay", "scheduler", "loss", "seed")
    return [f"{k}:{config[k]}" for k in keys if config.get(k) is not None]


def annotate_current_run(tags: Sequence[str] = (), parameters: dict[str, Any] | None = None,
                         name: str | None = None) -> bool:
    """Add ``tags`` to (merge ``parameters`` into, rename) the current flow run; False when there
    is none or the API refuses (the run goes on: this is a label, not a result)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return False
    run = ctx.flow_run
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, tags=sorted({*(run.tags or []), *tags}),
                                   parameters={**(run.parameters or {}), **parameters} if parameters else None,
                                   name=name)
    except Exception:  # noqa: BLE001
        return False
    return True
