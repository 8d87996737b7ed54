"""The sharded-stage machinery (ferpipe/sharded.py): fingerprints that already-built shards resume
by, the one aggregation of shard stats, the one runner; and the flow-vs-library comparison helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferpipe import shards
from ferpipe.sharded import ShardedStage, ShardJob, aggregate, stage_fingerprint
from tests._flow_vs_library import assert_same_files, stage_files

SPEC = shards.ShardSpec("train", 3, ({"key": "a", "x": 1.5}, {"key": "b", "x": None}))


def test_fingerprints_are_those_shards_were_built_with():
    """The hex strings each stage's own ``_fingerprint`` gave before they were folded into one
    function: a change here would redo every shard already built."""
    from ferpipe.align.params import AlignParams
    from ferpipe.align.stage import ALIGN
    from ferpipe.occlusion.params import OcclusionParams
    from ferpipe.occlusion.stage import OCCLUSION
    from ferpipe.priors.params import PriorsParams
    from ferpipe.priors.stage import PRIORS

    def fp(stage, params, desc):
        return stage_fingerprint(SPEC, params, stage.non_output, stage.name, desc)

    assert fp(ALIGN, AlignParams(threads=3), "basic") == \
        "f52e7a19622a17fda9c029291583be912d43e3f2897f660f98b09c56d570bbd0"
    assert fp(PRIORS, PriorsParams(threads=2), shards.canonical_json({"b": 1}).decode()) == \
        "1f590433a0a6928cf832a1598b54ff63d1ba221f7544ac3cca55f7749ee6d795"
    assert fp(OCCLUSION, OcclusionParams(), "rec/desc") == \
        "4d291e3ff83746094e5ad98277751426f63f1d1b26d867362d8f4c7d2eb5aae1"
    # speed-only params stay out; an output param does not
    assert fp(ALIGN, AlignParams(threads=1, decode_workers=0), "basic") == fp(ALIGN, AlignParams(), "basic")
    assert fp(ALIGN, AlignParams(output_size=64), "basic") != fp(ALIGN, AlignParams(), "basic")


def _stats(shard: str, written: int, skipped: list, noted: list = (), resumed: bool = False) -> dict:
    def by_reason(entries):
        out: dict[str, int] = {}
        for e in entries:
            out[e["reason"]] = out.get(e["reason"], 0) + 1
        return out

    items = written + len(skipped)
    return {"shard": shard, "counts": {"items": items, "written": written, "skipped": len(skipped),
                                       "skipped_by_reason": by_reason(skipped), "noted": len(noted),
                                       "noted_by_reason": by_reason(noted)},
            "skipped": list(skipped), "noted": list(noted), "bytes": 100 * written, "sha256": "ab" * 32,
            "resumed": resumed, "seconds": None if resumed else 1.0, "extra": {"n": written}}


def test_aggregate_adds_up_splits_reasons_failures_and_resumes():
    bad = {"key": "k1", "path": "p1", "reason": "corrupt", "detail": "x"}
    note = {"key": "k2", "path": "p2", "reason": "no_face", "detail": "y"}
    stats = {"train": [_stats("train-000000.tar", 3, [bad], [note]), _stats("train-000001.tar", 2, [], resumed=True)],
             "test": [_stats("test-000000.tar", 1, [dict(bad, key="k3")])]}
    t = aggregate(stats, row_extra=lambda st: {"n": st["extra"]["n"]})
    assert t.splits == {"train": {"items": 6, "written": 5, "skipped": 1, "noted": 1, "shards": 2, "shards_resumed": 1},
                        "test": {"items": 2, "written": 1, "skipped": 1, "noted": 0, "shards": 1, "shards_resumed": 0}}
    assert t.skipped_by_reason == {"corrupt": 2} and t.noted_by_reason == {"no_face": 1}
    assert [(f["split"], f["shard"], f["kind"], f["key"]) for f in t.failures] == [
        ("train", "train-000000.tar", "skipped", "k1"), ("train", "train-000000.tar", "noted", "k2"),
        ("test", "test-000000.tar", "skipped", "k3")]
    assert (t.processed, t.resumed, t.written, t.bytes) == (6, 1, 6, 600)  # the resumed shard's 2 items not processed
    assert [r["n"] for r in t.shard_rows] == [3, 2, 1] and t.shard_rows[1]["resumed"] is True
    assert t.per_second(2.0) == 3.0 and t.per_second(0) == 0.0


class _Upper:
    def __call__(self, spec, sink):
        for it in spec.items:
            sink.add({"__key__": it["key"], "txt": it["key"].upper()})

    def describe(self) -> str:
        return "upper"


class _Stage(ShardedStage):
    name = "toy"
    non_output = ("threads",)

    def worker(self, job):
        from contextlib import nullcontext

        return nullcontext(_Upper())

    def report(self, job, totals, stats, seconds):
        return totals


def test_run_shard_and_the_local_loop_write_the_same_shards(tmp_path):
    """The flow's path (run_shard per shard, then summarize) and the local one (run_job) agree,
    and a second local run resumes every shard."""
    from ferpipe.align.params import AlignParams

    plans = shards.plan_splits([{"key": f"k{i:02d}", "split": "train"} for i in range(7)], 3)

    def job(out):
        return ShardJob(dataset="toy", out_dir=tmp_path / out, plans=plans, params=AlignParams())

    stage = _Stage()
    a = job("a")
    stage.summarize(a, a.by_split([stage.run_shard(s, a) for s in a.specs]), 1.0)
    totals = stage.run_job(job("b"))
    assert totals.written == 7 and totals.resumed == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and "index.json" in names
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    assert stage.run_job(job("b")).resumed == 3


def test_the_comparison_sees_one_changed_byte(tmp_path):
    """tests/_flow_vs_library.py can fail: a byte changed in a declared output is named."""
    out = tmp_path / "data" / "aligned" / "ds"
    out.mkdir(parents=True)
    (out / "train-000000.tar").write_bytes(b"\0" * 512)
    (tmp_path / "reports" / "align").mkdir(parents=True)
    (tmp_path / "reports" / "align" / "ds.json").write_text(json.dumps({"a": 1}))
    before = stage_files(tmp_path, "align", "ds")
    assert sorted(before) == ["data/aligned/ds/train-000000.tar", "reports/align/ds.json"]
    assert_same_files(before, stage_files(tmp_path, "align", "ds"))
    (out / "train-000000.tar").write_bytes(b"\0" * 511 + b"\1")
    with pytest.raises(AssertionError, match="train-000000.tar"):
        assert_same_files(before, stage_files(tmp_path, "align", "ds"))
    Path(tmp_path / "reports" / "align" / "ds.json").unlink()
    with pytest.raises(AssertionError):
        assert_same_files(before, stage_files(tmp_path, "align", "ds"))
