"""Worker processes that end when the process they work for is gone.

A stage killed by SIGKILL (or the OOM killer) gets no chance to stop its pools. Spawned decode
workers block forever on their task queue, and DataLoader workers started by a forkserver are
children of the forkserver, so PyTorch's own watchdog (which compares ``getppid()`` with the pid
it started under) never fires: they, and the forkserver with them, would live on. Each worker
therefore runs :func:`exit_with`'s watchdog thread, which checks once a second that the owning
process still exists (and is no zombie) and ends the worker when it does not.

Imports only the standard library: the align decode workers must not pay for torch.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["exit_with", "owner_gone"]

_POLL_S = 1.0


def owner_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state in (b"Z", b"X")  # killed but not yet reaped by its own parent
    except (OSError, IndexError):
        return False


def exit_with(owner_pid: int, *_args: object) -> None:
    """Start (once per process) a daemon thread that ends this process when ``owner_pid`` is
    gone. Extra arguments are ignored, so this serves directly as a DataLoader
    ``worker_init_fn`` bound with :func:`functools.partial`."""
    if getattr(exit_with, "_started", None) == os.getpid() or owner_pid == os.getpid():
        return
    exit_with._started = os.getpid()  # type: ignore[attr-defined]

    def watch() -> None:
        while True:
            time.sleep(_POLL_S)
            if owner_gone(owner_pid):
                os._exit(1)  # nobody is left to hand results to; skip the clean-up handlers

    threading.Thread(target=watch, name=f"exit-with-{owner_pid}", daemon=True).start()
