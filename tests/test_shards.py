"""ferpipe.shards: deterministic tars, plans, done markers, resume, indexes, reading."""

from __future__ import annotations

import json
import tarfile

import pytest

from ferpipe import shards


def _items(n, split="train"):
    # Deliberately unsorted: the plan sorts by key.
    return [{"key": f"k{(i * 7) % n:04d}", "split": split, "path": f"img/{i}.png",
             "label": i % 7} for i in range(n)]


def _fn(spec, sink):
    for it in spec.items:
        if it["label"] == 3:
            sink.skip(it["key"], it["path"], "label_three", "test skip")
            continue
        if it["label"] == 5:
            sink.note(it["key"], it["path"], "degraded")
        sink.add({"__key__": it["key"], "txt": f"hello {it['key']}", "cls": it["label"],
                  "json": {"b": 1, "a": [1.5, None]}})
    return {"custom": 1}


def test_plan_is_sorted_and_sized():
    plan = shards.plan_shards(_items(25), 10, "train")
    assert [s.name for s in plan] == ["train-000000", "train-000001", "train-000002"]
    assert [len(s) for s in plan] == [10, 10, 5]
    keys = [k for s in plan for k in s.keys]
    assert keys == sorted(keys) and len(set(keys)) == 25


def test_plan_rejects_bad_keys():
    with pytest.raises(ValueError, match="duplicate"):
        shards.plan_shards([{"key": "a"}, {"key": "a"}], 2, "train")
    with pytest.raises(ValueError, match="WebDataset key"):
        shards.plan_shards([{"key": "a.b"}], 2, "train")


def test_plan_splits_groups():
    plans = shards.plan_splits(_items(5, "train") + _items(3, "test"), 2)
    assert list(plans) == ["test", "train"]
    assert [len(s) for s in plans["train"]] == [2, 2, 1]


def test_tar_members_sorted_and_fixed_headers(tmp_path):
    p = tmp_path / "x.tar"
    shards.write_tar(p, [{"__key__": "a", "txt": "t", "cls": 1, "json": {"z": 1, "a": 2}},
                         {"__key__": "b", "jpg": b"\xff\xd8"}])
    with tarfile.open(p) as t:
        ms = t.getmembers()
    assert [m.name for m in ms] == ["a.cls", "a.json", "a.txt", "b.jpg"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in ms} == {
        (shards.FIXED_MTIME, 0, 0, "", "", 0o644)}
    members = dict(shards.iter_tar_members(p))
    assert members["a.json"] == b'{"a":2,"z":1}' and members["a.cls"] == b"1"
    assert not list(tmp_path.glob(".*partial*"))


def test_tar_rejects_unsorted_keys(tmp_path):
    with pytest.raises(ValueError, match="strictly increasing"):
        shards.write_tar(tmp_path / "x.tar", [{"__key__": "b", "txt": ""},
                                              {"__key__": "a", "txt": ""}])
    assert not (tmp_path / "x.tar").exists()
    assert not list(tmp_path.iterdir())


def test_stage_is_byte_identical_and_resumes(tmp_path):
    plans = shards.plan_splits(_items(23) + _items(4, "val"), 10)
    a, b = tmp_path / "a", tmp_path / "b"
    ra = shards.run_sharded_stage(plans, _fn, a, progress=False)
    shards.run_sharded_stage(plans, _fn, b, progress=False)
    tars = sorted(p.name for p in a.glob("*.tar"))
    assert tars == ["train-000000.tar", "train-000001.tar", "train-000002.tar",
                    "val-000000.tar"]
    # Every file, done markers included, is byte-identical: DVC hashes the whole directory.
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in sorted(a.iterdir()):
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    assert "seconds" not in (a / "train-000000_stats.json").read_text()
    assert ra.stats["train"][0]["seconds"] >= 0  # this run's timings reach the caller
    st = json.loads((a / "train-000000_stats.json").read_text())
    assert st["counts"]["items"] == 10
    assert st["counts"]["written"] + st["counts"]["skipped"] == 10
    assert st["sha256"] == shards.sha256_file(a / "train-000000.tar")
    assert st["extra"] == {"custom": 1}
    assert all(s["reason"] == "label_three" for s in st["skipped"])
    idx = shards.read_index(a, "train")
    assert idx["totals"]["items"] == 23 and idx["totals"]["shards"] == 3
    assert ra.resumed_shards == 0

    # Resume: corrupt one tar, delete one stats file, leave the rest.
    (a / "train-000001.tar").write_bytes(b"garbage")
    (a / "train-000002_stats.json").unlink()
    calls = []

    def counting(spec, sink):
        calls.append(spec.name)
        return _fn(spec, sink)

    r2 = shards.run_sharded_stage(plans, counting, a, progress=False)
    assert calls == ["train-000001", "train-000002"]
    assert r2.resumed_shards == 2
    for name in tars:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_fingerprint_change_redoes(tmp_path):
    plan = shards.plan_shards(_items(5), 10, "train")
    s1 = shards.process_shard(plan[0], _fn, tmp_path, fingerprint="one")
    s2 = shards.process_shard(plan[0], _fn, tmp_path, fingerprint="one")
    s3 = shards.process_shard(plan[0], _fn, tmp_path, fingerprint="two")
    assert (s1["resumed"], s2["resumed"], s3["resumed"]) == (False, True, False)


def test_failed_shard_leaves_no_marker(tmp_path):
    plan = shards.plan_shards(_items(5), 10, "train")

    def boom(spec, sink):
        sink.add({"__key__": spec.keys[0], "txt": "x"})
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        shards.process_shard(plan[0], boom, tmp_path)
    assert not list(tmp_path.iterdir())


def test_stale_shards_and_partials_removed(tmp_path):
    shards.run_sharded_stage(shards.plan_splits(_items(30), 10), _fn, tmp_path, progress=False)
    (tmp_path / ".train-000000.tar.partial-999").write_bytes(b"x")
    shards.run_sharded_stage(shards.plan_splits(_items(12), 10), _fn, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "index.json", "train-000000.tar", "train-000000_stats.json", "train-000001.tar",
        "train-000001_stats.json", "train_index.json"]


def test_iter_samples_reads_in_order(tmp_path):
    shards.run_sharded_stage(shards.plan_splits(_items(23), 10), _fn, tmp_path, progress=False)
    got = list(shards.iter_samples(tmp_path, "train", decode="rgb8"))
    keys = [s["__key__"] for s in got]
    assert keys == sorted(keys) and len(keys) == shards.read_index(tmp_path, "train")[
        "totals"]["samples"]
    assert got[0]["json"] == {"a": [1.5, None], "b": 1}
    assert isinstance(got[0]["cls"], int)
