"""Deterministic WebDataset shards: planning, writing, done markers, indexes, reading.

Every stage that writes shards (align, priors, occlusion) goes through this module, so that
the same inputs give byte-identical tars and an interrupted run resumes shard by shard.

Layout of one stage's output for one dataset (``out_dir`` = ``data/<stage>/<dataset>``)::

    train-000000.tar           samples, members sorted by (key, extension), fixed headers
    train-000000_stats.json    written last: the shard's done marker (counts, skips, sha256;
                               no timings, so identical runs give an identical directory)
    train-000001.tar ...
    train_index.json           per split, written after all its shards: order, counts, sha256

A shard is *done* when its ``_stats.json`` exists, names the same fingerprint (inputs + params)
and the tar's sha256 matches the one recorded. Anything else is redone from scratch.

Stages supply a pure per-shard function ``fn(spec, sink) -> dict | None``: it reads the items
of ``spec``, calls ``sink.add(sample)`` for each sample (in key order) and ``sink.skip(...)``
for each item it could not use. :func:`process_shard` wraps it with the temp-file/rename,
the stats and the resume check; :func:`process_plans` is the local loop over a plan and
:func:`finalize_stage` writes the indexes after it. The stages build on these through
:mod:`ferpipe.sharded` (one fingerprint, one stats aggregation, one runner; a flow maps
``run_shard`` instead of the local loop).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

# 2000-01-01T00:00:00Z: any constant works; 0 upsets some tar readers and backup tools.
FIXED_MTIME = 946684800
FILE_MODE = 0o644
SHARD_DIGITS = 6
STATS_SUFFIX = "_stats.json"
INDEX_SUFFIX = "_index.json"
_KEY_RE = re.compile(r"^[^./\\\s][^./\\]*$")
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class ShardSpec:
    """One shard of a plan: which items go into ``<split>-<index>.tar``.

    ``items`` are plain dicts (manifest rows); they must be JSON-serialisable enough for
    :func:`fingerprint_items` (str/int/float/None/lists).
    """

    split: str
    index: int
    items: tuple[Mapping[str, Any], ...]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)

    @property
    def keys(self) -> list[str]:
        return [str(it["key"]) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:0{SHARD_DIGITS}d}"


def plan_shards(items: Sequence[Mapping[str, Any]], samples_per_shard: int, split: str,
                sort_by_key: bool = True) -> list[ShardSpec]:
    """Split ``items`` of one split into consecutive shards of ``samples_per_shard`` items.

    Items are sorted by ``key`` first (keys are stable, so shard contents are stable across
    reruns); pass ``sort_by_key=False`` if the caller already fixed an order.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    rows = [dict(it) for it in items]
    keys = [str(r["key"]) for r in rows]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"duplicate keys in split {split!r}: {dup}")
    for k in keys:
        if not _KEY_RE.match(k):
            raise ValueError(f"key {k!r} is not a valid WebDataset key (no dots, slashes)")
    if sort_by_key:
        rows.sort(key=lambda r: str(r["key"]))
    return [
        ShardSpec(split=split, index=i // samples_per_shard,
                  items=tuple(rows[i:i + samples_per_shard]))
        for i in range(0, len(rows), samples_per_shard)
    ]


def plan_splits(rows: Iterable[Mapping[str, Any]], samples_per_shard: int,
                splits: Sequence[str] | None = None) -> dict[str, list[ShardSpec]]:
    """Group rows by their ``split`` column and plan each split (splits in sorted order)."""
    by_split: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_split.setdefault(str(r["split"]), []).append(r)
    names = sorted(by_split) if splits is None else list(splits)
    return {s: plan_shards(by_split.get(s, []), samples_per_shard, s) for s in names}


def _jsonable(x: Any) -> Any:
    # numpy scalars/arrays and pandas NA leak out of parquet rows; normalise for hashing/JSON.
    # Exact builtin types first, leaf floats inline: every sample's metadata passes through here,
    # and the ABC checks below (isinstance(x, Mapping)) cost more than the rest of the walk.
    t = type(x)
    if t is list or t is tuple:
        return [v if type(v) is float and v == v else _jsonable(v) for v in x]
    if t is dict:
        return {str(k): (v if type(v) is float and v == v else _jsonable(v)) for k, v in x.items()}
    if t is float:
        return None if x != x else x
    if x is None or isinstance(x, (str, bool, int)):
        return x
    if isinstance(x, float):
        return None if x != x else x
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    if hasattr(x, "item"):
        return _jsonable(x.item())
    try:
        import pandas as pd  # noqa: PLC0415

        if pd.isna(x):
            return None
    except (ImportError, TypeError, ValueError):
        pass
    return str(x)


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted JSON bytes: the same object always gives the same bytes."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


def fingerprint_items(spec: ShardSpec, params: Any = None, extra: str = "") -> str:
    """sha256 over the shard's items, the stage params and any extra string (e.g. code version).

    Stored in the stats; a shard whose fingerprint changed is redone.
    """
    if params is not None and hasattr(params, "model_dump"):
        params = params.model_dump(mode="json")
    h = hashlib.sha256()
    h.update(canonical_json({"split": spec.split, "index": spec.index,
                             "items": list(spec.items), "params": params, "extra": extra}))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Writing


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = FIXED_MTIME
    ti.mode = FILE_MODE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode("ascii")
    if isinstance(value, Mapping | list):
        return canonical_json(value)
    raise TypeError(f"shard sample values must be bytes/str/int/dict/list, got {type(value)}")


class DeterministicTarWriter:
    """Writes WebDataset samples to a tar with sorted members and fixed headers.

    A sample is a dict ``{"__key__": key, "<ext>": value, ...}``; values are bytes, str, int
    (written as text, e.g. ``.cls``) or dict/list (canonical JSON). Members of a sample are
    written in sorted extension order; keys must be strictly increasing across samples so the
    whole tar is sorted by (key, extension).
    """

    def __init__(self, fileobj: io.BufferedIOBase):
        # PAX only emits extended headers when a field needs it (long names), so plain
        # members have identical bytes to ustar; GNU would also do. Never the default
        # format: it changed across Python versions.
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT)
        self._last_key: str | None = None
        self.count = 0

    def write(self, sample: Mapping[str, Any]) -> None:
        key = str(sample["__key__"])
        if not _KEY_RE.match(key):
            raise ValueError(f"invalid sample key {key!r}: no dots or slashes allowed")
        if self._last_key is not None and key <= self._last_key:
            raise ValueError(f"sample keys must be strictly increasing: {key!r} after "
                             f"{self._last_key!r}")
        for ext in sorted(k for k in sample if not k.startswith("__")):
            data = _to_bytes(sample[ext])
            self._tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
        self._last_key = key
        self.count += 1

    def close(self) -> None:
        self._tar.close()


def write_tar(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]]) -> int:
    """Write ``samples`` to ``path`` atomically (temp file + rename). Returns the sample count."""
    path = Path(path)
    with atomic_file(path) as f:
        w = DeterministicTarWriter(f)
        for s in samples:
            w.write(s)
        w.close()
        return w.count


class atomic_file:  # noqa: N801 - used as a context manager like open()
    """``with atomic_file(p) as f``: write to ``.p.partial-<pid>``, fsync, rename onto ``p``.

    On an exception (or a kill) the final name is never left holding a partial file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")

    def __enter__(self) -> io.BufferedWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.tmp, "wb")  # noqa: SIM115
        return self._f

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._f.flush()
                os.fsync(self._f.fileno())
            self._f.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """JSON with sorted keys (readable indent), written via temp file + rename."""
    data = json.dumps(_jsonable(obj), sort_keys=True, indent=indent, ensure_ascii=False,
                      allow_nan=False).encode("utf-8") + b"\n"
    with atomic_file(path) as f:
        f.write(data)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# One shard: sink, stats, done markers


@dataclass
class ShardSink:
    """What a stage's per-shard function writes into.

    ``add`` streams a sample into the tar; ``skip`` records an item that produced no sample;
    ``note`` records an item that was written in a degraded way (e.g. a no-face fallback crop)
    so it still shows in the failure listings.
    """

    _writer: DeterministicTarWriter
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, sample: Mapping[str, Any]) -> None:
        self._writer.write(sample)

    def skip(self, key: str, path: str, reason: str, detail: str = "") -> None:
        self.skipped.append({"key": str(key), "path": str(path), "reason": reason,
                             "detail": detail})

    def note(self, key: str, path: str, reason: str, detail: str = "") -> None:
        self.notes.append({"key": str(key), "path": str(path), "reason": reason,
                           "detail": detail})

    @property
    def written(self) -> int:
        return self._writer.count


ShardFn = Callable[[ShardSpec, ShardSink], "Mapping[str, Any] | None"]


def shard_paths(out_dir: str | os.PathLike, spec_or_name: ShardSpec | str) -> tuple[Path, Path]:
    """(tar path, stats path) of a shard."""
    name = spec_or_name.name if isinstance(spec_or_name, ShardSpec) else spec_or_name
    out = Path(out_dir)
    return out / f"{name}.tar", out / f"{name}{STATS_SUFFIX}"


def read_stats(out_dir: str | os.PathLike, spec_or_name: ShardSpec | str) -> dict | None:
    _, stats_path = shard_paths(out_dir, spec_or_name)
    try:
        return json.loads(stats_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def shard_is_done(out_dir: str | os.PathLike, spec: ShardSpec, fingerprint: str | None = None,
                  verify: bool = True) -> dict | None:
    """The shard's stats if it is complete and valid, else None.

    Valid = stats parse, the fingerprint matches (when given), the tar exists and its sha256
    (when ``verify``; otherwise its size) matches the recorded one.
    """
    stats = read_stats(out_dir, spec)
    if stats is None:
        return None
    if fingerprint is not None and stats.get("fingerprint") != fingerprint:
        return None
    tar_path, _ = shard_paths(out_dir, spec)
    if not tar_path.is_file() or tar_path.stat().st_size != stats.get("bytes"):
        return None
    if verify and sha256_file(tar_path) != stats.get("sha256"):
        return None
    return stats


def _count(entries: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        out[e["reason"]] = out.get(e["reason"], 0) + 1
    return dict(sorted(out.items()))


def process_shard(spec: ShardSpec, fn: ShardFn, out_dir: str | os.PathLike,
                  fingerprint: str | None = None, verify: bool = True,
                  force: bool = False) -> dict[str, Any]:
    """Produce one shard (idempotent) and return its stats dict.

    If the shard is already done (see :func:`shard_is_done`) it is not recomputed; the stats
    then carry ``"resumed": true`` in the returned dict (not in the file). Otherwise any stale
    stats file is removed first, ``fn(spec, sink)`` streams samples into a temp tar that is
    renamed into place, and the stats file is written last as the done marker.
    """
    out_dir = Path(out_dir)
    if fingerprint is None:
        fingerprint = fingerprint_items(spec)
    if not force:
        done = shard_is_done(out_dir, spec, fingerprint, verify=verify)
        if done is not None:
            return {**done, "resumed": True}
    tar_path, stats_path = shard_paths(out_dir, spec)
    # The done marker must never outlive the tar it vouches for.
    stats_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with atomic_file(tar_path) as f:
        writer = DeterministicTarWriter(f)
        sink = ShardSink(writer)
        extra = fn(spec, sink) or {}
        writer.close()
    seconds = time.perf_counter() - t0
    n_items = len(spec.items)
    stats = {
        "shard": tar_path.name,
        "split": spec.split,
        "index": spec.index,
        "fingerprint": fingerprint,
        "counts": {
            "items": n_items,
            "written": sink.written,
            "skipped": len(sink.skipped),
            "skipped_by_reason": _count(sink.skipped),
            "noted": len(sink.notes),
            "noted_by_reason": _count(sink.notes),
        },
        "skipped": sink.skipped,
        "noted": sink.notes,
        "bytes": tar_path.stat().st_size,
        "sha256": sha256_file(tar_path),
        "extra": {k: v for k, v in extra.items() if not _is_timing(k)},
    }
    # The marker holds no timings: it lives in the DVC-tracked directory, and identical shards
    # must hash identically on every run. This run's timings go back to the caller (reports).
    write_json_atomic(stats_path, stats)
    return {**stats, "extra": dict(extra), "seconds": round(seconds, 3),
            "items_per_second": round(n_items / seconds, 3) if seconds > 0 else None, "resumed": False}


def _is_timing(key: str) -> bool:
    # A shard function's extra stats named *seconds / *per_second are timings (see process_shard).
    return key.endswith(("seconds", "per_second"))


# --------------------------------------------------------------------------------------------
# Index and the local loop


def index_path(out_dir: str | os.PathLike, split: str) -> Path:
    return Path(out_dir) / f"{split}{INDEX_SUFFIX}"


def finalize_split(out_dir: str | os.PathLike, split: str, plan: Sequence[ShardSpec],
                   remove_stale: bool = True) -> dict[str, Any]:
    """Write ``<split>_index.json`` from the shards' stats; every shard must be done.

    The index holds no timings, so it is byte-identical across identical runs. Shards of this
    split beyond the plan (left by an earlier, larger run) are removed when ``remove_stale``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    totals = {"shards": 0, "items": 0, "samples": 0, "skipped": 0, "noted": 0, "bytes": 0}
    skipped_by_reason: dict[str, int] = {}
    for spec in plan:
        st = read_stats(out_dir, spec)
        if st is None:
            raise RuntimeError(f"shard {spec.name} in {out_dir} is not done (no valid "
                               f"{spec.name}{STATS_SUFFIX}); run it before finalizing")
        c = st["counts"]
        shards.append({"name": st["shard"], "items": c["items"], "samples": c["written"],
                       "skipped": c["skipped"], "noted": c["noted"], "bytes": st["bytes"],
                       "sha256": st["sha256"]})
        totals["shards"] += 1
        totals["items"] += c["items"]
        totals["samples"] += c["written"]
        totals["skipped"] += c["skipped"]
        totals["noted"] += c["noted"]
        totals["bytes"] += st["bytes"]
        for r, n in c["skipped_by_reason"].items():
            skipped_by_reason[r] = skipped_by_reason.get(r, 0) + n
    if remove_stale:
        names = {spec.name for spec in plan}
        pat = re.compile(rf"^({re.escape(split)}-\d{{{SHARD_DIGITS}}})"
                         rf"(\.tar|{re.escape(STATS_SUFFIX)})$")
        partial = re.compile(rf"^\.{re.escape(split)}-\d{{{SHARD_DIGITS}}}\.tar\.partial-(\d+)$")
        from ferpipe.tempfiles import writer_alive  # noqa: PLC0415

        for p in sorted(out_dir.iterdir()):
            m = pat.match(p.name)
            mp = partial.match(p.name)
            # Left by a killed writer of this split (a live one's temp file is its own business).
            if (m and m.group(1) not in names) or (mp and not writer_alive(int(mp.group(1)))):
                p.unlink(missing_ok=True)
    index = {"split": split, "shards": shards, "totals": totals,
             "skipped_by_reason": dict(sorted(skipped_by_reason.items()))}
    write_json_atomic(index_path(out_dir, split), index)
    return index


def write_dataset_index(out_dir: str | os.PathLike,
                        indexes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``index.json``: every split's index plus one sha256 over them (what checkpoints record)."""
    splits = {s: dict(indexes[s]) for s in sorted(indexes)}
    doc = {"splits": splits, "sha256": hashlib.sha256(canonical_json(splits)).hexdigest()}
    write_json_atomic(Path(out_dir) / "index.json", doc)
    return doc


@dataclass
class StageRun:
    """What :func:`run_sharded_stage` returns: per-split stats and indexes."""

    stats: dict[str, list[dict[str, Any]]]
    indexes: dict[str, dict[str, Any]]
    seconds: float

    @property
    def resumed_shards(self) -> int:
        return sum(1 for sts in self.stats.values() for s in sts if s.get("resumed"))


def process_plans(plans: Mapping[str, Sequence[ShardSpec]], process_shard_fn: ShardFn,
                  out_dir: str | os.PathLike, fingerprint_fn: Callable[[ShardSpec], str] | None = None,
                  verify: bool = True, progress: Any = True, desc: str = "shards",
                  ) -> dict[str, list[dict[str, Any]]]:
    """Every shard of every split in order (resuming done ones): each shard's stats, per split.

    ``progress``: a :class:`ferpipe.progress.Progress`, or True / False for a tqdm bar / none.
    """
    from ferpipe.progress import as_progress  # noqa: PLC0415

    fp = fingerprint_fn or (lambda s: fingerprint_items(s))
    bar = as_progress(progress)
    bar.start(sum(len(p) for p in plans.values()), desc)
    stats: dict[str, list[dict[str, Any]]] = {}
    try:
        for split, plan in plans.items():
            stats[split] = []
            for spec in plan:
                st = process_shard(spec, process_shard_fn, out_dir, fingerprint=fp(spec), verify=verify)
                stats[split].append(st)
                bar.advance(1, split=split, resumed=st["resumed"])
    finally:
        bar.close()
    return stats


def run_sharded_stage(plans: Mapping[str, Sequence[ShardSpec]], process_shard_fn: ShardFn,
                      out_dir: str | os.PathLike,
                      fingerprint_fn: Callable[[ShardSpec], str] | None = None,
                      verify: bool = True, progress: Any = True,
                      desc: str = "shards") -> StageRun:
    """:func:`process_plans`, then the indexes (:func:`finalize_stage`).

    ``fingerprint_fn(spec)`` gives each shard's fingerprint (default: items only; stages mix
    in their params: :mod:`ferpipe.sharded`). Flows that map shards themselves call
    :func:`process_shard` per shard and :func:`finalize_stage` at the end instead.
    """
    t0 = time.perf_counter()
    stats = process_plans(plans, process_shard_fn, out_dir, fingerprint_fn, verify, progress, desc)
    return finalize_stage(out_dir, plans, stats, time.perf_counter() - t0)


def finalize_stage(out_dir: str | os.PathLike, plans: Mapping[str, Sequence[ShardSpec]],
                   stats: Mapping[str, list[dict[str, Any]]], seconds: float) -> StageRun:
    """After every shard is done: the split indexes, the dataset index, the run's record.

    The one ending of a sharded stage, whether its shards ran in the local loop or as tasks
    of a flow.
    """
    indexes = {split: finalize_split(out_dir, split, plan) for split, plan in plans.items()}
    write_dataset_index(out_dir, indexes)
    return StageRun(stats=dict(stats), indexes=indexes, seconds=seconds)


# --------------------------------------------------------------------------------------------
# Reading


def read_index(out_dir: str | os.PathLike, split: str) -> dict[str, Any]:
    p = index_path(out_dir, split)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no shard index {p}: run the stage that writes {out_dir} "
                                f"first") from None


def shard_urls(out_dir: str | os.PathLike, split: str) -> list[str]:
    """Paths of a split's shards in index order (only shards with at least one sample)."""
    idx = read_index(out_dir, split)
    return [str(Path(out_dir) / s["name"]) for s in idx["shards"] if s["samples"] > 0]


def iter_samples(out_dir: str | os.PathLike, split: str, decode: str | None = "rgb8",
                 ) -> Iterator[dict[str, Any]]:
    """Iterate a split's samples in order through a WebDataset pipeline (for tests/reports).

    ``decode`` is a webdataset image decoder spec ("rgb8" gives HxWx3 uint8 arrays, "pil"
    PIL images); ``None`` leaves raw bytes. ``.json`` is parsed and ``.cls`` becomes an int
    whenever ``decode`` is set.
    """
    import webdataset as wds  # noqa: PLC0415

    urls = shard_urls(out_dir, split)
    if not urls:
        return iter(())
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    if decode is not None:
        ds = ds.decode(decode)
    return iter(ds)


def iter_tar_members(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) in file order, without WebDataset: for checks and debugging."""
    with tarfile.open(path, "r") as tar:
        for m in tar:
            f = tar.extractfile(m)
            yield m.name, (f.read() if f is not None else b"")


def first_sample_json(urls: Iterable[str | os.PathLike]) -> dict[str, Any] | None:
    """The json of the first sample that has one, over the shards ``urls`` in order (read lazily,
    so later shards are not opened); None when none has."""
    for url in urls:
        for name, data in iter_tar_members(url):
            if name.endswith(".json"):
                return json.loads(data)
    return None


def tar_keys(path: str | os.PathLike) -> list[str]:
    """The sample keys of one shard, in file order (headers only; no member is read)."""
    keys: list[str] = []
    with tarfile.open(path, "r") as tar:
        for m in tar:
            k = m.name.split(".", 1)[0]
            if not keys or keys[-1] != k:
                keys.append(k)
    return keys


def indexed_tar_keys(out_dir: str | os.PathLike, entry: Mapping[str, Any]) -> list[str]:
    """The sample keys of a shard listed in a split index (``entry``: one of its ``shards``),
    checked against that entry: a shard truncated or rewritten since the index was written (an
    unreadable tar, or fewer / more samples) is a :class:`~ferpipe.errors.DataError` naming it,
    never a silently shorter plan. Headers only, as :func:`tar_keys` (no sha256 of the bytes)."""
    from ferpipe.errors import DataError  # noqa: PLC0415

    if not entry["samples"]:
        return []
    path = Path(out_dir) / entry["name"]
    redo = f"re-run the stage that writes {Path(out_dir)} (it redoes the shard)"
    try:
        keys = tar_keys(path)
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(f"shard {path}: not a readable tar ({type(exc).__name__}: {exc}); truncated or "
                        f"corrupted after its split index was written; {redo}") from exc
    if len(keys) != entry["samples"]:
        raise DataError(f"shard {path}: {len(keys)} samples, but its split index says {entry['samples']} "
                        f"(truncated or replaced after the index was written); {redo}")
    return keys


def iter_tar_samples(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one shard, in file order, without WebDataset.

    Members of a sample are adjacent (the writer guarantees it); the extension is everything
    after the key's first dot, as WebDataset splits it.
    """
    key, fields = None, {}
    for name, data in iter_tar_members(path):
        k, ext = name.split(".", 1)
        if k != key and key is not None:
            yield key, fields
            fields = {}
        key = k
        fields[ext] = data
    if key is not None:
        yield key, fields


# --------------------------------------------------------------------------------------------
# Member codecs shared by the stages that write arrays into shards (fixed settings: same bytes)


def encode_npy(a) -> bytes:
    import numpy as np  # noqa: PLC0415

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes):
    import numpy as np  # noqa: PLC0415

    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_png(a, compression: int) -> bytes:
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a), [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes):
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)

