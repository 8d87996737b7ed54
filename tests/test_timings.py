"""Run timings are split off the DVC-tracked reports (ferpipe.timings)."""

from __future__ import annotations

import json

from ferpipe.timings import split_run_facts, timings_path, write_report


def test_split_run_facts_at_any_depth():
    doc = {"samples": 10, "seconds": 1.5, "samples_per_second": 6.7, "shards_resumed": 1,
           "shard_stats": [{"shard": "a.tar", "items": 5, "seconds": 0.5, "resumed": True},
                           {"shard": "b.tar", "items": 5, "seconds": 1.0, "resumed": False}],
           "train": {"parser": {"loss": 0.1, "seconds": 3.0}}, "history": [{"epoch": 1, "acc": 0.5}]}
    stable, run = split_run_facts(doc)
    assert stable == {"samples": 10, "shard_stats": [{"shard": "a.tar", "items": 5}, {"shard": "b.tar", "items": 5}],
                      "train": {"parser": {"loss": 0.1}}, "history": [{"epoch": 1, "acc": 0.5}]}
    assert run == {"seconds": 1.5, "samples_per_second": 6.7, "shards_resumed": 1,
                   "shard_stats": [{"shard": "a.tar", "seconds": 0.5, "resumed": True},
                                   {"shard": "b.tar", "seconds": 1.0, "resumed": False}],
                   "train": {"parser": {"seconds": 3.0}}}
    assert split_run_facts([{"epoch": 2, "seconds": 4.0}]) == ([{"epoch": 2}], [{"epoch": 2, "seconds": 4.0}])


def test_write_report_twice_same_bytes(tmp_path):
    path = tmp_path / "reports" / "align" / "ds.json"
    write_report(path, {"images": 3, "images_processed": 3, "seconds": 2.0})
    first = path.read_bytes()
    write_report(path, {"images": 3, "images_processed": 0, "seconds": 0.9})  # a resumed rerun
    assert path.read_bytes() == first and json.loads(first) == {"images": 3}
    assert timings_path(path) == tmp_path / "reports" / "timings" / "align" / "ds.json"
    assert json.loads(timings_path(path).read_text()) == {"images_processed": 0, "seconds": 0.9}
