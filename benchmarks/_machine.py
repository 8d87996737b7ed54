"""What every benchmark JSON records about the machine it ran on, and how it is written.

Benchmarks on a shared box are only comparable with the machine and its load next to them:
``machine()`` gives the CPU model, its SIMD flags, the cores this process may use, torch's
version and threads, the GPU (when there is one) and the load average at the start;
``write_result`` adds the load average at the end and writes sorted, indented JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

# SIMD / matrix extensions that decide which kernels torch, OpenCV and libjpeg pick.
_ISA_PREFIXES = ("sse4", "avx", "fma", "f16c", "amx", "vnni", "bf16", "neon", "asimd", "sve")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = sorted(f for f in value.split() if f.startswith(_ISA_PREFIXES))
    return model, flags


def machine(note: str = "") -> dict[str, Any]:
    """The machine block of a benchmark JSON (call at the start of the run)."""
    import torch

    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    out: dict[str, Any] = {
        "cpu_model": model, "isa_flags": flags, "cpu_count": os.cpu_count(), "cpu_usable": usable,
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if note:
        out["note"] = note
    return out


def write_result(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` (with ``doc["machine"]`` from :func:`machine`) after stamping the end load."""
    doc.setdefault("machine", machine())
    doc["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    return path


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, dict[str, Any]]:
    """Time every callable ``rounds`` times round-robin (A, B, A, B, ...) after ``warmup``
    calls each: load from other processes on a shared machine then hits every variant alike,
    and the ratio of medians is meaningful even when absolute times are not."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: summarize(v) for k, v in times.items()}


def summarize(times: list[float]) -> dict[str, Any]:
    """Median, fastest and slowest of a list of seconds (the row every timing table uses)."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}
