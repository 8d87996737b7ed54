"""DVC experiments from Python: run one (``dvc exp run --temp``), read them back (``dvc exp show --json``).

``--temp`` runs the experiment in a temporary copy of the project: params.yaml, dvc.lock and the
workspace's models and reports stay exactly as they are. The results live in the experiment (a
Git ref under refs/exps plus DVC's cache): ``dvc exp show`` lists it with its params and
metrics, ``dvc exp apply <name>`` brings it into the workspace. Untracked files are not copied
into the temporary project: commit (or ``git add``) code changes an experiment should see.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ferpipe.errors import FerpipeError


def format_value(value: Any) -> str:
    """A value as ``-S`` text that both DVC (Hydra grammar) and ferpipe (YAML) read back as itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exp = text.partition("e")
        return f"{mantissa}.0e{exp}" if e and "." not in mantissa else text  # 1e-05 → 1.0e-05 (YAML 1.1)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def exp_run_command(overrides: Sequence[str], name: str | None = None, dvc: str = "dvc",
                    temp: bool = True, force: bool = False) -> list[str]:
    """``dvc exp run [--temp] [-f] -S k=v ... [-n name]``; ``--temp`` leaves the workspace untouched,
    ``-f`` replaces an experiment of the same name."""
    cmd = [dvc, "exp", "run", *(["--temp"] if temp else []), *(["-f"] if force else [])]
    for item in overrides:
        cmd += ["-S", item]
    return cmd + (["-n", name] if name else [])


def dvc_executable() -> str:
    """The ``dvc`` next to this Python (the project's venv), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def dvc_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ``dvc``: this venv first on PATH (dvc runs ``ferpipe <stage>`` in a
    shell), telemetry off."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for key, value in (("DVC_NO_ANALYTICS", "1"), ("DO_NOT_TRACK", "1"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false")):
        env.setdefault(key, value)
    env.update(extra or {})
    return env


def run_streaming(cmd: Sequence[str], cwd: str | Path, env: Mapping[str, str] | None = None,
                  on_line: Callable[[str], None] = print, tail_lines: int = 40) -> str:
    """Run ``cmd`` passing every output line to ``on_line``; raise with the last lines on failure."""
    tail: deque[str] = deque(maxlen=tail_lines)
    proc = subprocess.Popen(list(cmd), cwd=str(cwd), env=dict(env) if env is not None else dvc_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        on_line(line)
    if proc.wait() != 0:
        raise FerpipeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n" + "\n".join(tail))
    return "\n".join(tail)


def run_experiment(root: str | Path, overrides: Sequence[str], name: str, *, temp: bool = True, force: bool = False,
                   on_line: Callable[[str], None] = print, env: Mapping[str, str] | None = None) -> list[str]:
    """``dvc exp run --temp -S ... -n name`` in ``root``; returns the command run."""
    cmd = exp_run_command(overrides, name=name, dvc=dvc_executable(), temp=temp, force=force)
    run_streaming(cmd, root, env=env if env is not None else dvc_env(), on_line=on_line)
    return cmd


def show_experiments(root: str | Path, env: Mapping[str, str] | None = None,
                     all_commits: bool = False) -> dict[str, dict[str, Any]]:
    """The experiments ``dvc exp show`` lists (of the current commit; ``all_commits``: of every
    commit, so that one whose baseline is no longer HEAD is found), by name:
    ``{"rev", "params": {file: data}, "metrics": {file: data}, "error"}``."""
    cmd = [dvc_executable(), "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    proc = subprocess.run(cmd, cwd=str(root),
                          env=dict(env) if env is not None else dvc_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise FerpipeError(f"`dvc exp show --json` failed in {root}:\n{proc.stderr[-2000:]}")
    return experiments_from_show(json.loads(proc.stdout or "[]"))


def experiments_from_show(table: Any) -> dict[str, dict[str, Any]]:
    """Parse ``dvc exp show --json`` (DVC 3): experiments hang under each baseline's ``experiments``."""
    out: dict[str, dict[str, Any]] = {}
    for exp in _exp_nodes(table):
        data = exp.get("data") or {}
        out[exp["name"]] = {
            "rev": exp.get("rev"),
            "params": {f: (v or {}).get("data", {}) for f, v in (data.get("params") or {}).items()},
            "metrics": {f: (v or {}).get("data", {}) for f, v in (data.get("metrics") or {}).items()},
            "error": exp.get("error"),
        }
    return out


def _exp_nodes(node: Any, inside: bool = False) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for item in node:
            yield from _exp_nodes(item, inside)
    elif isinstance(node, dict):
        if inside and node.get("name") and "data" in node:
            yield node
        for child in node.get("experiments") or []:
            for rev in child.get("revs") or []:
                yield from _exp_nodes(rev, inside=True)


def flatten_numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as ``a.b.c`` → value (bools and non-finite values dropped)."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten_numbers(v, f"{prefix}{k}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        out[prefix[:-1]] = float(data)
    return out
