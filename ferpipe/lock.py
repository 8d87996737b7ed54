"""One stage run at a time per project: an advisory lock on ``<root>/.ferpipe/lock``.

Every stage rewrites shared outputs (``data/raw/<dataset>``, the manifest, shard directories,
``models/``, ``reports/``), so two runs on one project must never interleave: one would read
what the other is half-way through replacing and finish "successfully" with fewer images.
``ferpipe <stage>`` takes this lock for the whole run. A second run waits up to ``wait_s`` and
then stops with :class:`ProjectBusyError`, naming the holder (pid, host, stage, start time),
which the holder records in ``lock.holder.json`` beside the lock.

The lock is ``filelock``'s ``flock(2)`` lock: the kernel drops it when its holder dies (even by
SIGKILL), so there is never a stale lock to clean up by hand.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from ferpipe.errors import FerpipeError

__all__ = ["LOCK_DIR", "ProjectBusyError", "holder_info", "project_lock"]

LOCK_DIR = ".ferpipe"
_LOCK, _HOLDER = "lock", "lock.holder.json"


class ProjectBusyError(FerpipeError):
    """Another ferpipe run holds the project lock."""


def _paths(root: Path) -> tuple[Path, Path]:
    d = Path(root) / LOCK_DIR
    return d / _LOCK, d / _HOLDER


def holder_info(root: str | os.PathLike) -> dict[str, Any] | None:
    """What the current (or last) holder recorded, or None when nothing readable is there."""
    try:
        info = json.loads(_paths(Path(root))[1].read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _write_holder(path: Path, info: dict[str, Any]) -> None:
    # Plain json + rename, no heavy imports: a waiter gives the holder only seconds to appear.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(info, sort_keys=True))
    os.replace(tmp, path)


def _current_holder(root: Path, patience_s: float = 3.0) -> dict[str, Any] | None:
    """The live holder's record. A holder writes it just after taking the lock, and a killed
    one leaves its record behind: wait briefly for a record whose process is alive."""
    from ferpipe.tempfiles import writer_alive  # noqa: PLC0415

    deadline = time.monotonic() + patience_s
    while True:
        info = holder_info(root)
        if info and (info.get("host") != socket.gethostname() or writer_alive(int(info.get("pid", 0)))):
            return info
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "a run that has not recorded itself yet"
    return (f"`ferpipe {info.get('stage', '?')}` (pid {info.get('pid', '?')} on host "
            f"{info.get('host', '?')}, started {info.get('started', '?')})")


@contextmanager
def project_lock(root: str | os.PathLike, stage: str, wait_s: float = 0.0) -> Iterator[dict[str, Any]]:
    """Hold the project lock of ``root`` for ``stage``; wait at most ``wait_s`` seconds for it."""
    root = Path(root)
    if os.environ.get("TORCHELASTIC_RUN_ID") and os.environ.get("RANK", "0") != "0":
        # torchrun's ranks are one run: rank 0 holds the lock for all of them.
        yield {"pid": os.getpid(), "stage": stage, "rank": os.environ["RANK"], "held_by": "rank 0"}
        return
    lock_path, holder_path = _paths(root)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FerpipeError(f"cannot create the lock directory {lock_path.parent}: {exc}") from None
    # is_singleton: a nested project_lock in one process re-enters instead of blocking on itself.
    lock = FileLock(lock_path, timeout=max(wait_s, 0.0), thread_local=False, is_singleton=True,
                    poll_interval=0.1)
    try:
        lock.acquire()
    except Timeout:
        waited = f" after waiting {wait_s:g}s" if wait_s > 0 else ""
        raise ProjectBusyError(
            f"project {root.resolve()} is busy{waited}: {_describe(_current_holder(root))} holds its lock "
            f"({lock_path}). Two runs on one project would overwrite each other's outputs; wait for it "
            f"to finish, or pass --wait SECONDS to queue behind it") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv[:8], "time": time.time()}
    nested = lock.lock_counter > 1
    try:
        if not nested:
            _write_holder(holder_path, info)
        yield info
    finally:
        if not nested:
            try:
                holder_path.unlink(missing_ok=True)
            except OSError:
                pass
        lock.release()
