"""Temporary siblings that never collide, and the sweep of ones left by dead processes.

A stage builds an output beside its final place and renames it in when complete. The temporary
name carries the writer's pid and a random part (``.<name>.<pid>-<random>.partial``), so two
processes, or two runs of one process, never write into one temp file or directory; a later run
removes the temporaries whose writer is no longer alive.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from ferpipe.orphans import owner_gone

__all__ = ["private_sibling", "sweep_stale", "writer_alive"]

_SUFFIX = ".partial"


def private_sibling(target: str | os.PathLike, kind: str = "dir") -> Path:
    """A new, empty temp directory (``kind="dir"``) or file (``"file"``) beside ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{os.getpid()}-"
    if kind == "dir":
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=_SUFFIX, dir=target.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=_SUFFIX, dir=target.parent)
    os.close(fd)
    return Path(name)


def writer_alive(pid: int) -> bool:
    """Whether process ``pid`` (the writer named in a temp file's name) still runs."""
    if pid <= 0:
        return False  # os.kill(0, ...) would mean "my process group"
    return pid == os.getpid() or not owner_gone(pid)


def sweep_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``target`` whose writing process is gone; returns them."""
    target = Path(target)
    pat = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)-.*{re.escape(_SUFFIX)}$")
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pat.match(p.name)
        if m and not writer_alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
