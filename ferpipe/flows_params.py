"""The ``flows.*`` section of params.yaml: how the Prefect flows run their tasks.

Only the sharded stages (align, priors, occlusion) map tasks; this section picks the task runner
they use. It never changes what a stage writes (shards are byte-identical whatever the runner),
so no DVC stage depends on it. The runner itself is built in ``flows/_common.py``: this library
never imports Prefect or Dask.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ferpipe._schema import StrictModel


class FlowsParams(StrictModel):
    # default: each flow's own thread pool (align: several shards at once; priors and
    # occlusion: one shard at a time, torch uses every core). dask: prefect-dask's
    # DaskTaskRunner, on the scheduler at dask_address, else on a local cluster of processes.
    task_runner: Literal["default", "dask"] = "default"
    # An existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (`dask scheduler` + `dask worker`
    # on each machine). null: a temporary local cluster started for the flow run and shut down
    # when it ends.
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)           # local cluster: worker processes
    dask_threads_per_worker: int = Field(1, ge=1)  # local cluster: threads (concurrent shards) per worker

    @field_validator("dask_address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("empty; use null for a local cluster, or e.g. tcp://127.0.0.1:8786")
        return v.strip() if v is not None else None
