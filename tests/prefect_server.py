"""Test helpers: a real ``prefect server start`` on 127.0.0.1 and subprocesses killed by process group.

Every process is started in a new session (its own process group) and :func:`kill_group` ends the
whole group, so nothing a test starts (uvicorn workers, flow-run subprocesses, dvc, ferpipe stages)
outlives it, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(prefect_home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment for a server or a client: its own PREFECT_HOME, telemetry off, venv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               DVC_NO_ANALYTICS="1", PREFECT_LOGGING_LEVEL="INFO",
               PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]))
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start(cmd: Sequence[str], env: dict[str, str], log: Path, cwd: str | Path | None = None) -> subprocess.Popen:
    out = open(log, "ab")
    try:
        return subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        out.close()  # the child holds its own descriptor


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_group(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """End ``proc``, its process group and every descendant (some start sessions of their own):
    SIGTERM first, SIGKILL what is left after ``grace`` seconds."""
    import psutil

    if proc is None:
        return
    found = {p.pid: p for p in _descendants(proc.pid)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        found.update({p.pid: p for p in _descendants(proc.pid)})
        for p in list(found.values()):
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace if sig == signal.SIGTERM else 5.0)
        _, alive = psutil.wait_procs(list(found.values()), timeout=grace if sig == signal.SIGTERM else 5.0)
        if proc.poll() is not None and not alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group that were never seen
            return


def run_to_end(cmd: Sequence[str], env: dict[str, str], log: Path, timeout: float,
               cwd: str | Path | None = None) -> None:
    """Run ``cmd`` to completion in its own process group (killed on timeout or error); fail with its log."""
    proc = start(cmd, env, log, cwd)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        kill_group(proc, grace=5.0)
    if rc != 0:
        raise AssertionError(f"{' '.join(cmd)}: {'timed out' if rc is None else f'exit {rc}'}\n{tail(log)}")


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_healthy(api_url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"prefect server not healthy after {timeout:.0f} s:\n{tail(log)}")


@contextlib.contextmanager
def prefect_server(home: Path, logs: Path, **settings: str) -> Iterator[str]:
    """``prefect server start`` on a free 127.0.0.1 port with its own PREFECT_HOME (and ``settings``,
    extra PREFECT_* variables); yields the API URL."""
    home.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = base_env(home)
    env["PREFECT_UI_API_URL"] = api_url
    env.update(settings)
    log = logs / "prefect-server.log"
    proc = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        wait_healthy(api_url, proc, log)
        yield api_url
    finally:
        kill_group(proc)


@contextlib.contextmanager
def api_url_set(api_url: str, home: Path) -> Iterator[None]:
    """Point this (test) process's Prefect client at ``api_url`` for the duration."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url, PREFECT_HOME: str(home)}):
        yield
