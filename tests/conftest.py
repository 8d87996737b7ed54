import os

import pytest

# Offline machines: Prefect and DVC telemetry must stay off in every test process.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (a temporary server with its own SQLite DB) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch intra-op thread for a module: on 2 shared cores, OpenMP spin-waits make 2
    threads up to 8x slower for small models. Use with ``pytestmark = usefixtures(...)``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
