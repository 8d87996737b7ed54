"""A sharded stage (align, priors, occlusion): plan, one shard at a time, finish.

The shape every sharded stage follows, and the one runner of its local (``--no-flow``) path::

    job = stage.plan(params, layout)            # ShardJob: the plan and what every shard needs
    stats = stage.run_shard(spec, job)          # one shard, idempotent (a flow maps this)
    report = stage.finish(params, layout, job, stats_by_split, started)
                                                # indexes, the report (library-built), its file

:meth:`ShardedStage.run` is ``plan`` + the local loop over the shards (:func:`ferpipe.shards.
process_plans`, one worker kept for all of them) + ``finish``; ``flows/_stage.py`` maps
``run_shard`` as retried Prefect tasks and calls the same ``finish``, so both paths write the same
shards and the same report. A stage supplies ``plan``, ``worker`` (the per-shard function and a
description of whatever besides its params decides the output bytes) and ``report`` (from the
shards' :class:`ShardTotals`).

Every shard's fingerprint is :func:`stage_fingerprint`: the shard's items, the stage's params less
those that change speed but no output byte (``non_output``), the stage name, the ferpipe version
and the worker's description. A rerun resumes every shard whose fingerprint is unchanged.
"""

from __future__ import annotations

import re
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from ferpipe import __version__, shards
from ferpipe.shards import ShardSink, ShardSpec

_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{%d})\.tar$" % shards.SHARD_DIGITS)
Stats = Mapping[str, Sequence[Mapping[str, Any]]]


def stage_fingerprint(spec: ShardSpec, params: Any, non_output: Iterable[str], stage: str, desc: str) -> str:
    """A shard's fingerprint: its items, ``params`` (a pydantic section) without the ``non_output``
    names, and ``<stage>/<ferpipe version>/<desc>``."""
    p = params.model_dump(mode="json")
    for k in non_output:
        p.pop(k, None)
    return shards.fingerprint_items(spec, p, extra=f"{stage}/{__version__}/{desc}")


def mirror_shards(source_dir: str | Path, split: str, out_split: str,
                  items: Callable[[Mapping[str, Any], list[str]], Iterable[Mapping[str, Any]]]) -> list[ShardSpec]:
    """One spec per shard of ``source_dir``'s ``split`` (same index, named ``out_split``); its items
    are ``items(index entry, the shard's keys)``. Keys are read from the tars and checked against
    the index (a shard truncated since is a DataError naming it)."""
    source_dir = Path(source_dir)
    specs = []
    for entry in shards.read_index(source_dir, split)["shards"]:
        m = _SHARD_RE.match(entry["name"])
        if m is None:
            raise ValueError(f"{source_dir}/{entry['name']}: not a <split>-NNNNNN.tar name")
        keys = shards.indexed_tar_keys(source_dir, entry)
        specs.append(ShardSpec(split=out_split, index=int(m.group("index")), items=tuple(items(entry, keys))))
    return specs


@dataclass
class ShardJob:
    """One planned run of a sharded stage: what every shard needs. Picklable: a flow sends it to
    its tasks (a Dask task runner, to other processes)."""

    dataset: str
    out_dir: Path
    plans: dict[str, list[ShardSpec]]
    params: Any                                           # the stage's params section
    inputs: dict[str, Any] = field(default_factory=dict)  # the stage's own: source dirs, label space, ...
    verify: bool = True

    @property
    def specs(self) -> list[ShardSpec]:
        return [s for plan in self.plans.values() for s in plan]

    def by_split(self, results: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Per-shard stats in :attr:`specs` order, grouped by split as ``finish`` takes them."""
        stats: dict[str, list[dict[str, Any]]] = {split: [] for split in self.plans}
        for spec, st in zip(self.specs, results, strict=True):
            stats[spec.split].append(st)
        return stats


@dataclass
class ShardTotals:
    """The shards' stats of one run, added up: what every sharded report is built from."""

    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # items, written, skipped, noted, shards
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    noted_by_reason: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)     # every skipped / noted item
    shard_rows: list[dict[str, Any]] = field(default_factory=list)   # one per shard
    processed: int = 0   # items in the shards this run computed (resumed ones not counted)
    resumed: int = 0     # shards resumed
    written: int = 0
    bytes: int = 0

    def per_second(self, seconds: float) -> float:
        return round(self.processed / seconds, 3) if seconds > 0 else 0.0


def _add_counts(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for reason, n in counts.items():
        into[reason] = into.get(reason, 0) + n


def _shard_row(split: str, st: Mapping[str, Any]) -> dict[str, Any]:
    c = st["counts"]
    return {"split": split, "shard": st["shard"], "items": c["items"], "written": c["written"],
            "skipped": c["skipped"], "noted": c["noted"], "seconds": st.get("seconds"),
            "items_per_second": st.get("items_per_second"), "bytes": st["bytes"],
            "resumed": bool(st.get("resumed")), "sha256": st["sha256"][:16]}


def aggregate(stats: Stats, row_extra: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None) -> ShardTotals:
    """Add up per-shard stats (:func:`ferpipe.shards.process_shard`'s, per split);
    ``row_extra(stats)``: a stage's own columns for a shard's row."""
    t = ShardTotals()
    for split, sts in stats.items():
        c = {"items": 0, "written": 0, "skipped": 0, "noted": 0, "shards": len(sts), "shards_resumed": 0}
        for st in sts:
            n, resumed = st["counts"], bool(st.get("resumed"))
            for k in ("items", "written", "skipped", "noted"):
                c[k] += n[k]
            c["shards_resumed"] += resumed
            t.resumed += resumed
            t.processed += 0 if resumed else n["items"]
            t.written += n["written"]
            t.bytes += st["bytes"]
            _add_counts(t.skipped_by_reason, n["skipped_by_reason"])
            _add_counts(t.noted_by_reason, n["noted_by_reason"])
            for kind, entries in (("skipped", st["skipped"]), ("noted", st["noted"])):
                t.failures.extend({"split": split, "shard": st["shard"], "kind": kind, **e} for e in entries)
            t.shard_rows.append({**_shard_row(split, st), **(row_extra(st) if row_extra else {})})
        t.splits[split] = c
    t.skipped_by_reason = dict(sorted(t.skipped_by_reason.items()))
    t.noted_by_reason = dict(sorted(t.noted_by_reason.items()))
    return t


class ShardWorker(Protocol):
    """A stage's per-shard function (:data:`ferpipe.shards.ShardFn`) that can say what, besides
    the stage's params, decides its output (label space, backend checkpoints, ...)."""

    def __call__(self, spec: ShardSpec, sink: ShardSink) -> Mapping[str, Any] | None: ...

    def describe(self) -> str: ...


class ShardedStage:
    """The shape of a sharded stage; subclasses give ``plan``, ``worker`` and ``report``."""

    name: str = ""
    non_output: tuple[str, ...] = ()  # params that change speed, never an output byte

    # --- what a stage supplies ---------------------------------------------------------------

    def plan(self, params: Any, layout: Any) -> ShardJob:
        """The run's :class:`ShardJob` from the whole params; refuses bad inputs before any shard."""
        raise NotImplementedError

    def worker(self, job: ShardJob) -> AbstractContextManager[ShardWorker]:
        """A context giving the per-shard function (models loaded, pools started) and closing it."""
        raise NotImplementedError

    def report(self, job: ShardJob, totals: ShardTotals, stats: Stats, seconds: float) -> Any:
        """The stage's report, once every shard is done and the indexes are written."""
        raise NotImplementedError

    def row_extra(self, stats: Mapping[str, Any]) -> dict[str, Any]:
        """A stage's own columns of a shard's row in the report (none by default)."""
        return {}

    def complete(self, report: Any, params: Any, layout: Any, job: ShardJob) -> None:
        """What a stage does after its shards beyond the report (occlusion: the real subsets)."""

    # --- the runner ----------------------------------------------------------------------------

    def fingerprint(self, spec: ShardSpec, job: ShardJob, worker: ShardWorker) -> str:
        return stage_fingerprint(spec, job.params, self.non_output, self.name, worker.describe())

    def run_shard(self, spec: ShardSpec, job: ShardJob) -> dict[str, Any]:
        """One shard (idempotent: a done one is kept) and its stats: what a flow maps."""
        with self.worker(job) as w:
            return shards.process_shard(spec, w, job.out_dir, fingerprint=self.fingerprint(spec, job, w),
                                        verify=job.verify)

    def process(self, job: ShardJob, progress: Any = None) -> dict[str, list[dict[str, Any]]]:
        """Every shard in order, one worker for all (the local loop)."""
        with self.worker(job) as w:
            return shards.process_plans(job.plans, w, job.out_dir, partial(self.fingerprint, job=job, worker=w),
                                        job.verify, progress, self.name)

    def summarize(self, job: ShardJob, stats: Stats, seconds: float) -> Any:
        """The indexes, then the report (not written: :meth:`finish` writes it)."""
        shards.finalize_stage(job.out_dir, job.plans, stats, seconds)
        return self.report(job, aggregate(stats, self.row_extra), stats, seconds)

    def run_job(self, job: ShardJob, progress: Any = None, started: float | None = None) -> Any:
        """A planned job, locally: every shard, the indexes, the report (for path-level callers)."""
        started = time.perf_counter() if started is None else started
        stats = self.process(job, progress)
        return self.summarize(job, stats, time.perf_counter() - started)

    def finish(self, params: Any, layout: Any, job: ShardJob, stats: Stats, started: float) -> Any:
        """After every shard: indexes, the report, whatever :meth:`complete` adds, the report file."""
        from ferpipe.timings import write_report  # noqa: PLC0415

        report = self.summarize(job, stats, time.perf_counter() - started)
        self.complete(report, params, layout, job)
        report.seconds = round(time.perf_counter() - started, 3)
        write_report(layout.stage_report(self.name, job.dataset), report.to_dict())
        return report

    def run(self, params: Any, layout: Any, progress: Any = None) -> Any:
        """``ferpipe <stage> --no-flow``: plan, every shard here, finish."""
        started = time.perf_counter()
        job = self.plan(params, layout)
        return self.finish(params, layout, job, self.process(job, progress), started)
