"""A stage run's timings, kept apart from the stage's DVC-tracked report.

A report under ``reports/`` is a DVC out: re-running a finished stage must leave it byte-identical
(or ``dvc status`` calls the stage modified, and a resumed run rewrites "2,100 images" as "0 images
in 0.9 s"). So what describes one run rather than its result — seconds, throughput, how many
images this run processed, which shards it resumed — is split off the report and written to
``reports/timings/<stage>/<dataset>.json`` instead: git-ignored, no DVC out, overwritten by each
run. The stage's console summary and Prefect artifacts still show them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

# Keys that hold facts of one run, at any depth of a report.
RUN_KEYS = frozenset({"resumed", "shards_resumed", "resumed_from_epoch", "images_processed", "samples_processed",
                      "seconds_by_part", "elapsed_s"})
RUN_SUFFIXES = ("seconds", "per_second", "_per_s")
# Kept beside split-off list items, so the timings say which shard they belong to.
_ID_KEYS = ("split", "shard", "name", "epoch")


def is_run_fact(key: str) -> bool:
    return key in RUN_KEYS or key.endswith(RUN_SUFFIXES)


def split_run_facts(doc: Any) -> tuple[Any, Any]:
    """``(stable, run)``: ``doc`` without its run facts, and the run facts in the same nesting
    (None where there are none)."""
    if isinstance(doc, Mapping):
        stable, run = {}, {}
        for k, v in doc.items():
            if is_run_fact(str(k)):
                run[k] = v
                continue
            s, r = split_run_facts(v)
            stable[k] = s
            if r is not None:
                run[k] = r
        return stable, (run or None)
    if isinstance(doc, (list, tuple)):
        pairs = [split_run_facts(v) for v in doc]
        runs = [r for _, r in pairs]
        if not any(r is not None for r in runs):
            return [s for s, _ in pairs], None
        ids = [{k: v[k] for k in _ID_KEYS if isinstance(v, Mapping) and k in v} for v in doc]
        return [s for s, _ in pairs], [{**i, **(r or {})} if isinstance(r, Mapping) or r is None else r
                                       for i, r in zip(ids, runs)]
    return doc, None


def timings_path(report_path: str | os.PathLike) -> Path:
    """``reports/<stage>/<x>.json`` -> ``reports/timings/<stage>/<x>.json``."""
    p = Path(report_path)
    return p.parent.parent / "timings" / p.parent.name / p.name


def write_report(path: str | os.PathLike, doc: Any, indent: int | None = 1,
                 timings: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write ``doc`` without its run facts to ``path`` (sorted keys, atomically) and the run facts
    to ``timings`` (default :func:`timings_path`); returns the run facts."""
    from ferpipe.shards import write_json_atomic  # noqa: PLC0415

    stable, run = split_run_facts(doc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, stable, indent=indent)
    tpath = Path(timings) if timings is not None else timings_path(path)
    tpath.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(tpath, run or {}, indent=indent)
    return run or {}
