"""prefect-dask's task runner, made to share the flow's Prefect API with its workers."""

from __future__ import annotations

from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner as _PrefectDaskTaskRunner


class DaskTaskRunner(_PrefectDaskTaskRunner):
    """prefect_dask.DaskTaskRunner that also works on Prefect's ephemeral server.

    Without PREFECT_API_URL a flow runs on an ephemeral server that its process starts. Each task
    carries the flow's settings to its Dask worker, so every worker process would start an
    ephemeral server of its own (its own port, the same SQLite file), which outlives the worker
    when the nanny stops it. Here the workers are pointed at the flow's ephemeral server instead.
    """

    def __enter__(self):
        super().__enter__()
        if not PREFECT_API_URL.value():
            from prefect.server.api.server import SubprocessASGIServer  # noqa: PLC0415

            server = SubprocessASGIServer()  # one per process: the flow's own client uses it too
            server.start()
            self._exit_stack.enter_context(temporary_settings(updates={PREFECT_API_URL: server.api_url}))
        return self
