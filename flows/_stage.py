"""The one flow factory: a Prefect flow from a stage's library entry (``ferpipe/stages.py``).

- A sharded stage (:class:`ferpipe.sharded.ShardedStage`): ``plan`` in the flow, ``run_shard``
  mapped as retried tasks (on the flow's task runner, or the one ``flows.*`` asks for), then the
  library's ``finish``: the same indexes and report file as ``--no-flow``.
- Any other stage: its ``run``, with the run's logger as its progress (in a retried task when
  asked for).

Either way the report's :meth:`artifacts` are published as they are and its summary logged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import Flow, flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner

from ferpipe import stages
from ferpipe.layout import Layout
from flows import _common

SHARD_RETRIES = 2
RETRY_DELAY_S = 5


class RunLogProgress:
    """:class:`ferpipe.progress.Progress` for a flow run: messages go to the run's log."""

    def __init__(self) -> None:
        self._log = get_run_logger()

    def start(self, total: int, desc: str) -> None:
        self._log.info("%s: %d to do", desc, total)

    def advance(self, n: int = 1, **postfix: Any) -> None:
        pass

    def message(self, text: str) -> None:
        self._log.info("%s", text)

    def close(self) -> None:
        pass


def publish(report: Any) -> Any:
    """The report's artifacts, as Prefect table / markdown artifacts; its summary to the log."""
    for a in report.artifacts():
        if a.kind == "table":
            create_table_artifact(key=a.key, table=a.content, description=a.description)
        else:
            create_markdown_artifact(key=a.key, markdown=a.content, description=a.description)
    get_run_logger().info(report.summary())
    return report


def _flow_options(name: str, task_runner: TaskRunner | None) -> dict[str, Any]:
    options: dict[str, Any] = {"name": name, "flow_run_name": _common.stage_run_name(name), "log_prints": True}
    return options if task_runner is None else {**options, "task_runner": task_runner}


def sharded_stage_flow(name: str, task_runner: TaskRunner | None = None) -> tuple[Flow, Any]:
    """``(flow, shard task)`` for the sharded stage ``name``; the task is named
    ``<name>-shard``, its runs ``<name>-<split>-<index>``."""
    stage = stages.get(name).load()

    @task(name=f"{name}-shard", retries=SHARD_RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE,
          task_run_name=f"{name}-{{spec.split}}-{{spec.index}}")
    def shard_task(spec, job) -> dict:
        return _common.run_shard(stage.run_shard, spec, job)

    @flow(**_flow_options(name, task_runner))
    def the_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = "."):
        started = time.perf_counter()
        params = _common.params_for(params_path, overrides)
        layout = Layout(Path(root))
        job = stage.plan(params, layout)  # refuses bad inputs before any shard starts
        results = shard_task.map(job.specs, unmapped(job)).result()
        return publish(stage.finish(params, layout, job, job.by_split(results), started))

    return the_flow, shard_task


def stage_flow(name: str, retries: int = 0) -> tuple[Flow, Any]:
    """``(flow, task)`` for the stage ``name``: its ``run`` in one task, retried ``retries`` times."""
    stage = stages.get(name).load()

    @task(name=f"{name}-run", retries=retries, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
    def run_task(params, root: str) -> Any:
        return stage.run(params, Layout(Path(root)), RunLogProgress())

    @flow(**_flow_options(name, None))
    def the_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = "."):
        return publish(run_task(_common.params_for(params_path, overrides), root))

    return the_flow, run_task
