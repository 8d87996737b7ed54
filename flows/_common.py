"""What every stage flow shares: params loading, the task runner, artifact keys, markdown tables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from prefect import Flow
from prefect.task_runners import TaskRunner

from ferpipe.config import Params, load_params
from ferpipe.flows_params import FlowsParams
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
    import dask  # noqa: PLC0415

    # Dask starts its workers as daemonic processes, which may not have children; align's decode
    # pool is a process pool. (A `dask worker` started by hand: DASK_DISTRIBUTED__WORKER__DAEMON=False.)
    dask.config.set({"distributed.worker.daemon": False})
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


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", key)).strip("-")


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def shard_stats_rows(stats: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One table row per shard from the shards' `_stats.json` contents (any sharded stage)."""
    rows = []
    for split, sts in stats.items():
        for st in sts:
            c = st["counts"]
            rows.append({"split": split, "shard": st["shard"], "items": c["items"], "written": c["written"],
                         "skipped": c["skipped"], "noted": c["noted"], "seconds": st.get("seconds"),
                         "items_per_second": st.get("items_per_second"), "bytes": st.get("bytes"),
                         "resumed": bool(st.get("resumed"))})
    return rows
