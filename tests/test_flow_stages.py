"""prior-nets -> priors -> occlusion -> train -> evaluate as their real Prefect flows, against a
real Prefect API, on one tiny project (14 ground-truth-aligned synthetic faces, ~1 s of training
per stage). The assertions are on what a person sees in the Prefect UI: the flow run's state and
the artifacts (tables, markdown galleries with inline images), checked against the files the
stages write. A last test corrupts a shard on purpose and checks the failure names it.

The whole chain runs once per module (module-scoped fixtures, one after the other); each test
looks at one stage's run. After each flow, the stage runs again as ``--no-flow`` (its library
entry) in the same project: both must write the same files (tests/_flow_vs_library.py).
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ferpipe import shards

from tests._flow_vs_library import assert_same_files, flow_then_library
from tests._gt_shards import write_gt_aligned
from tests.test_flow_download import _artifacts_of
from tests.test_priors import synth_set  # noqa: F401  (session fixture: 14 rendered faces)

DATASET = "tiny"
SIZE = 112  # the orsanet-cpu preset's image size
PER_SHARD = 3
# A tiny ORSANet (as tests/test_train.py's TINY, at the preset's 112 px).
TINY_MODEL = {"depth": 1, "embed_dim": 32, "num_heads": 2, "ir_widths": [8, 8, 16], "ir_units": [1, 1, 1],
              "ir_stem_width": 8, "spade_hidden": 8, "encoder_widths": [8, 8, 16], "drop_path_rate": 0.0}
PARAMS = {
    "download": {"dataset": DATASET},
    "prior_nets": {"synthetic_n_per_class": 2, "synthetic_test_fraction": 0.5, "epochs": 1, "batch_size": 4,
                   "workers": 1, "threads": 1},
    "priors": {"kind": "maps", "backend": "ferpipe", "batch_size": 4, "device": "cpu", "threads": 1,
               "gallery_size": 3},
    "occlusion": {"gallery_size": 9},
    "train": {"epochs": 2, "batch_size": 4, "eval_batch_size": 8, "warmup_epochs": 0, "num_workers": 0,
              "threads": 1, "device": "cpu", "shuffle_buffer": 16, "model_kwargs": TINY_MODEL},
    "evaluate": {"device": "cpu", "batch_size": 8, "num_workers": 0, "fraction_bins": [0.0, 0.2, 0.4, 1.0]},
}
DATA_URI = re.compile(r'src="data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)"')


# --------------------------------------------------------------------------------------------
# helpers


def write_aligned(out_dir: Path, archive: Path, gts: dict, size: int = SIZE, per_shard: int = PER_SHARD) -> Path:
    """Aligned shards (train / val / test) on the ground-truth points; every third train face is val."""
    rows = []
    for i, (nm, g) in enumerate(sorted((n, g) for n, g in gts.items() if g.split == "train")):
        rows.append({"key": nm[:-4], "name": nm, "split": "val" if i % 3 == 2 else "train"})
    rows += [{"key": nm[:-4], "name": nm, "split": "test"} for nm, g in sorted(gts.items()) if g.split == "test"]
    return write_gt_aligned(out_dir, archive, gts, rows, ["train", "val", "test"], size, per_shard)


def table(artifact) -> list[dict]:
    assert artifact.type == "table", artifact.type
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return data


def inline_images(markdown: str) -> list[tuple[str, bytes]]:
    return [(fmt, base64.b64decode(b64)) for fmt, b64 in DATA_URI.findall(markdown)]


def assert_valid_image(fmt: str, data: bytes) -> tuple[int, int]:
    magic = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}[fmt]
    assert data.startswith(magic), (fmt, data[:8])
    im = Image.open(io.BytesIO(data))
    im.load()  # decodes every pixel: a truncated image raises here
    assert im.format.lower() == fmt and im.width > 8 and im.height > 8
    return im.size


def shard_files(d: Path, split: str) -> dict[str, Path]:
    return {e["name"]: d / e["name"] for e in shards.read_index(d, split)["shards"]}


# stage -> (the flow's files, the --no-flow run's files), filled as the chain runs
AGREEMENT: dict[str, tuple[dict, dict]] = {}


def run_flow(flow_fn, root: Path, stage: str | None = None):
    """The flow, then (when ``stage`` is named) the same stage as ``--no-flow`` over its outputs."""
    state = flow_fn(params_path=str(root / "params.yaml"), root=str(root), return_state=True)
    assert state.is_completed(), state
    assert state.name == "Completed"
    if stage is not None:
        from ferpipe.config import load_params

        AGREEMENT[stage] = flow_then_library(root, stage, DATASET, load_params(root / "params.yaml"))
    return state, _artifacts_of(state.state_details.flow_run_id)


# --------------------------------------------------------------------------------------------
# the chain, once per module


@pytest.fixture(scope="module")
def project(tmp_path_factory, synth_set):  # noqa: F811
    root = tmp_path_factory.mktemp("flow-stages")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    write_aligned(root / "data" / "aligned" / DATASET, *synth_set)
    return root


@pytest.fixture(scope="module")
def prior_nets_run(prefect_api, project):
    from flows.prior_nets import prior_nets_flow

    return run_flow(prior_nets_flow, project, "prior-nets")


@pytest.fixture(scope="module")
def priors_run(prior_nets_run, project):
    from flows.priors import priors_flow

    return run_flow(priors_flow, project, "priors")


@pytest.fixture(scope="module")
def occlusion_run(priors_run, project):
    from flows.occlusion import occlusion_flow

    return run_flow(occlusion_flow, project, "occlusion")


@pytest.fixture(scope="module")
def train_run(priors_run, project):
    from flows.train import train_flow

    return run_flow(train_flow, project, "train")


@pytest.fixture(scope="module")
def evaluate_run(train_run, occlusion_run, project):
    from flows.evaluate import evaluate_flow

    return run_flow(evaluate_flow, project, "evaluate")


# --------------------------------------------------------------------------------------------
# one test per stage


@pytest.mark.parametrize("stage", ["prior-nets", "priors", "occlusion", "train", "evaluate"])
def test_flow_and_no_flow_write_the_same_files(stage, request):
    request.getfixturevalue(f"{stage.replace('-', '_')}_run")
    assert_same_files(*AGREEMENT[stage])


def test_prior_nets_flow_publishes_held_out_metrics(prior_nets_run, project):
    state, arts = prior_nets_run
    report = state.result()
    out = project / "models" / "prior_nets"
    assert (out / "parser.pt").is_file() and (out / "landmarks.pt").is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert set(arts) >= {"prior-nets-metrics", "prior-nets-per-class-iou"}

    rows = {r["metric"]: r for r in table(arts["prior-nets-metrics"])}
    assert list(rows) == ["mIoU", "pixel accuracy", "NME (inter-ocular)", "landmark failures (NME > 0.10)"]
    assert rows["mIoU"]["clean"] == round(m["parser"]["miou"], 4)
    assert rows["mIoU"]["occluded"] == round(m["parser_occluded"]["miou"], 4)
    assert rows["pixel accuracy"]["clean"] == round(m["parser"]["pixel_accuracy"], 4)
    assert rows["NME (inter-ocular)"]["clean"] == round(m["landmarks"]["nme"], 4)
    assert rows["NME (inter-ocular)"]["occluded"] == round(m["landmarks_occluded"]["nme"], 4)
    assert rows["landmark failures (NME > 0.10)"]["clean"] == m["landmarks"]["failure_rate_0.10"]
    assert f"({report.n_test})" in arts["prior-nets-metrics"].description

    iou = arts["prior-nets-per-class-iou"]
    assert iou.type == "markdown" and "| class | iou | iou_occluded |" in iou.data
    # one row per LaPa class, with the value metrics.json has
    for cls, v in m["parser"]["iou"].items():
        assert f"| {cls} | {v} | {m['parser_occluded']['iou'][cls]} |" in iou.data


def test_priors_flow_stats_table_and_gallery(priors_run, project):
    state, arts = priors_run
    report = state.result()
    aligned = project / "data" / "aligned" / DATASET
    out = project / "data" / "priors" / DATASET
    assert set(arts) >= {f"priors-{DATASET}-shards", f"priors-{DATASET}-gallery"}

    # one row per aligned shard (every split), with that shard's real counts
    rows = table(arts[f"priors-{DATASET}-shards"])
    expected = {}
    for split in ("train", "val", "test"):
        for name, src in shard_files(aligned, split).items():
            expected[name] = (split, len(shards.tar_keys(src)))
    assert sorted(r["shard"] for r in rows) == sorted(expected) and len(rows) == 6
    for r in rows:
        split, n = expected[r["shard"]]
        tar = out / r["shard"]
        assert (r["split"], r["items"], r["written"], r["skipped"], r["resumed"]) == (split, n, n, 0, False)
        assert r["bytes"] == tar.stat().st_size and shards.sha256_file(tar).startswith(r["sha256"])
        assert len(shards.tar_keys(tar)) == n
    assert sum(r["written"] for r in rows) == 14 == sum(c["written"] for c in report.splits.values())

    md = arts[f"priors-{DATASET}-gallery"].data
    assert md.startswith(f"# {DATASET}: priors (maps, backend ferpipe)")
    assert "14 samples" in md
    assert "| key | image | parsing | landmarks | parsing (flipped view) | landmarks (flipped view) |" in md
    train_keys = [k for t in shard_files(out, "train").values() for k in shards.tar_keys(t)]
    gallery_rows = [ln for ln in md.splitlines() if ln.startswith("| `")]
    assert [ln.split("`")[1] for ln in gallery_rows] == train_keys[:3]  # gallery_size 3, first split
    # image | parsing overlay | landmarks, both views: 5 inline thumbnails per row, all decodable
    images = inline_images(md)
    assert len(images) == 5 * 3
    sizes = {assert_valid_image(fmt, data) for fmt, data in images}
    assert sizes == {(SIZE, SIZE)}
    # the overlay and landmark thumbnails are drawn on the image, not copies of it
    first = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), np.int16) for _, d in images[:3]]
    assert np.abs(first[1] - first[0]).mean() > 1 and np.abs(first[2] - first[0]).mean() > 0.05


def test_occlusion_flow_stats_table_and_gallery(occlusion_run, priors_run, project):
    from ferpipe.occlusion import SET_NAME, read_metadata

    state, arts = occlusion_run
    report = state.result()
    out = project / "data" / "occlusion" / DATASET
    src = project / "data" / "priors" / DATASET
    assert SET_NAME == "synthetic-occlusion"
    assert set(arts) >= {f"occlusion-{DATASET}-shards", f"occlusion-{DATASET}-gallery"}
    md_meta = read_metadata(out / f"{SET_NAME}.parquet")

    # one row per source (test) shard; n_<occluder> columns count what the parquet says
    rows = table(arts[f"occlusion-{DATASET}-shards"])
    src_tars = shard_files(src, "test")
    assert sorted(r["shard"] for r in rows) == sorted(n.replace("test-", f"{SET_NAME}-") for n in src_tars)
    for r in rows:
        n = len(shards.tar_keys(src / r["shard"].replace(SET_NAME, "test")))
        keys = shards.tar_keys(out / r["shard"])
        assert (r["items"], r["written"], r["skipped"]) == (n, n, 0) and len(keys) == n
        assert r["bytes"] == (out / r["shard"]).stat().st_size
        got = {k[2:]: v for k, v in r.items() if k.startswith("n_") and v}
        want = md_meta[md_meta["key"].isin(keys)]["occluder"].value_counts().to_dict()
        assert got == want, r["shard"]
    assert sum(r["written"] for r in rows) == report.samples == len(md_meta) == 7

    gallery = arts[f"occlusion-{DATASET}-gallery"]
    md = gallery.data
    # placed on the aligned samples' own 68 points (tests/_gt_shards.py), never on the priors
    assert "never a network: 7 on dataset-68" in md and set(md_meta["geometry_source"]) == {"dataset-68"}
    assert md.startswith(f"# {DATASET}: {SET_NAME}") and f"## {SET_NAME} (" in md
    # every occluder type drawn is listed (with its count) and shown
    assert report.by_occluder == md_meta["occluder"].value_counts().to_dict()
    for occluder, n in report.by_occluder.items():
        assert f"| {occluder} | {n} |" in md
        assert f"| {occluder} (" in md  # a gallery row
    # the set is named as what it is: procedural, never passed off as the real Occlu-FER
    assert "synthetic-occlusion" in md and "synthetic-occlusion" in gallery.description
    assert all(m.group(0) == "not Occlu-FER" for m in re.finditer(r"(?:not )?Occlu-FER", md))
    assert "Occlu-FER" not in gallery.description
    images = inline_images(md)
    assert len(images) == 2 * 7  # original | occluded, every sample (gallery_size 9 > 7)
    for fmt, data in images:
        assert_valid_image(fmt, data)


def test_train_flow_progress_history_and_metrics(train_run, project):
    state, arts = train_run
    report = state.result()
    assert set(arts) >= {f"train-{DATASET}-progress", f"train-{DATASET}-history", f"train-{DATASET}-metrics"}
    assert (project / "models" / "train" / DATASET / "best.pt").is_file()

    progress = arts[f"train-{DATASET}-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert "epoch 2/2" in progress.description

    history = json.loads((project / "reports" / "train" / "history.json").read_text())
    rows = table(arts[f"train-{DATASET}-history"])
    assert [r["epoch"] for r in rows] == [1, 2] == [h["epoch"] for h in history]
    for r, h in zip(rows, history):
        assert r["train_loss"] == round(h["train_loss"], 6) and r["val_acc"] == round(h["val_acc"], 6)

    metrics = json.loads((project / "reports" / "train" / "metrics.json").read_text())
    got = {r["metric"]: r["value"] for r in table(arts[f"train-{DATASET}-metrics"])}
    from ferpipe.timings import is_run_fact

    # the file holds no timings (a DVC out; they are in reports/timings/), the UI shows them too
    assert got == report.metrics and metrics == {k: v for k, v in got.items() if not is_run_fact(k)}
    assert "seconds" in got and "seconds" not in metrics
    assert got["epochs"] == 2 and got["test_n"] == 7


def test_evaluate_flow_metrics_tables_and_figures(evaluate_run, project):
    state, arts = evaluate_run
    report = state.result()
    m = json.loads((project / "reports" / "metrics.json").read_text())
    assert m == json.loads(json.dumps(report.metrics))
    assert set(arts) >= {f"evaluate-{DATASET}-{k}" for k in ("metrics", "clean-per-class", "by-occluder",
                                                            "by-region", "robustness", "figures")}

    # the metrics table: one row per evaluated set, numbers exactly those of reports/metrics.json
    rows = {r["set"]: r for r in table(arts[f"evaluate-{DATASET}-metrics"])}
    assert set(rows) == {"clean", "synthetic-occlusion"}
    assert rows["clean"]["n"] == 7 and rows["synthetic-occlusion"]["n"] == 7
    for name, r in rows.items():
        for col in ("n", "accuracy", "mean_class_accuracy", "macro_f1"):
            assert r[col] == m[name][col], (name, col)
        # every number with its 95% interval
        assert (r["accuracy_lo"], r["accuracy_hi"]) == (m[name]["accuracy_ci95"]["lo"], m[name]["accuracy_ci95"]["hi"])
        assert r["macro_f1_lo"] <= r["macro_f1"] <= r["macro_f1_hi"]
    per_class = {r["class"]: r for r in table(arts[f"evaluate-{DATASET}-clean-per-class"])}
    assert {k: {c: v[c] for c in ("precision", "recall", "f1", "n")} for k, v in per_class.items()} == \
        m["clean"]["per_class"]
    by_occ = {r["occluder"]: r for r in table(arts[f"evaluate-{DATASET}-by-occluder"])}
    assert {k: (v["accuracy"], v["accuracy_lo"], v["n"], v["few"]) for k, v in by_occ.items()} == \
        {k: (v["accuracy"], v["accuracy_ci95"]["lo"], v["n"], v["few"])
         for k, v in m["synthetic-occlusion"]["by_occluder"].items()}
    curve = table(arts[f"evaluate-{DATASET}-robustness"])
    assert [r["bin"] for r in curve] == ["0.00-0.20", "0.20-0.40", "0.40-1.00"]
    assert {r["bin"]: (r["accuracy"], r["n"], r["few"]) for r in curve} == \
        {k: (v["accuracy"], v["n"], v["few"]) for k, v in m["synthetic-occlusion"]["by_fraction"].items()}

    md = arts[f"evaluate-{DATASET}-figures"].data
    assert "| set | n | accuracy | mean class accuracy | macro-F1 |" in md and "Wilson" in md
    for name in rows:
        c = m[name]
        ci = c["accuracy_ci95"]
        assert f"| {name} | {c['n']} | {c['accuracy']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}] |" in md
    assert "- subsets: skipped (" in md  # occlusion.subsets is empty: said, not silently dropped
    # the confusion matrix (and every other figure) inline, as the PNG the stage wrote
    assert "## clean confusion" in md and "## synthetic-occlusion confusion" in md
    images = inline_images(md)
    assert len(images) == len(report.images) >= 5
    plots = project / "reports" / "plots"
    for fmt, data in images:
        assert fmt in ("png", "jpeg")
        assert_valid_image(fmt, data)
    assert (plots / "clean_confusion.png").read_bytes() in {d for _, d in images}
    assert (plots / "clean_mistakes.jpg").read_bytes() in {d for f, d in images if f == "jpeg"}


# --------------------------------------------------------------------------------------------
# a shard that cannot be processed


def _task_runs_of(flow_run_id) -> dict:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return {t.name: t for t in asyncio.run(read())}


def _copy_project(project: Path, root: Path, *stages: str) -> Path:
    import shutil

    for stage in stages:
        shutil.copytree(project / "data" / stage / DATASET, root / "data" / stage / DATASET)
    shutil.copytree(project / "models" / "prior_nets", root / "models" / "prior_nets")
    shutil.copy(project / "params.yaml", root / "params.yaml")
    return root


def _truncate(tar: Path, where: str) -> None:
    """Cut ``tar`` at the header of its last sample (the tar still reads, one sample short) or
    in the middle of its last member's bytes (the tar no longer reads)."""
    import tarfile

    with tarfile.open(tar) as t:
        members = t.getmembers()
    last_key = members[-1].name.split(".", 1)[0]
    first_of_last = next(m for m in members if m.name.split(".", 1)[0] == last_key)
    cut = first_of_last.offset if where == "at-a-sample" else members[-1].offset_data + members[-1].size // 2
    tar.write_bytes(tar.read_bytes()[:cut])


@pytest.mark.parametrize("where", ["at-a-sample", "mid-member"])
@pytest.mark.parametrize("stage, source", [("priors", "aligned"), ("occlusion", "priors")])
def test_truncated_source_shard_fails_the_flow_naming_it(stage, source, where, project, priors_run, tmp_path):
    """A source shard truncated after its index was written: the flow fails (it used to
    complete one sample short when the cut fell on a sample boundary), the message names the
    shard and why, and no stage output or artifact is published."""
    import importlib

    flow_fn = getattr(importlib.import_module(f"flows.{stage}"), f"{stage}_flow")
    root = _copy_project(project, tmp_path, source)
    bad = root / "data" / source / DATASET / "test-000001.tar"
    n = len(shards.tar_keys(bad))
    _truncate(bad, where)
    state = flow_fn(params_path=str(root / "params.yaml"), root=str(root), return_state=True)
    assert state.is_failed(), state
    msg = state.message
    assert "DataError" in msg and f"shard {bad}:" in msg and "truncated" in msg, msg
    assert ("not a readable tar" in msg) if where == "mid-member" else \
        (f"{n - 1} samples, but its split index says {n}" in msg), msg
    assert not (root / "reports" / stage).exists() and not (root / "data" / stage / DATASET / "index.json").exists()
    assert not [k for k in _artifacts_of(state.state_details.flow_run_id) if k]  # (None: Prefect's result record)
    from ferpipe.errors import DataError

    with pytest.raises(DataError, match="test-000001.tar"):
        state.result()


def test_failing_shard_is_retried_then_fails_the_flow_naming_it(project, priors_run, tmp_path, monkeypatch):
    """A shard that fails every attempt (its output path is taken by a directory): the shard task
    is retried as the flow declares, then the flow fails with the shard named, and nothing is
    published."""
    import flows.align
    import flows.occlusion
    import flows.prior_nets
    import flows.priors as fp

    # every task that does a unit of work retries (each one shard, or the one prior-nets run)
    assert fp.priors_shard_task.retries == 2 and fp.priors_shard_task.retry_delay_seconds == 5
    assert flows.occlusion.occlusion_shard_task.retries == 2
    assert flows.align.align_shard_task.retries == 2
    assert flows.prior_nets.train_prior_nets_task.retries == 1
    # the real flow, minus the 2 x 5 s wait between attempts
    monkeypatch.setattr(fp.priors_shard_task, "retry_delay_seconds", 0)

    root = _copy_project(project, tmp_path, "aligned")
    blocked = root / "data" / "priors" / DATASET / "val-000000.tar"
    (blocked / "not-a-tar").mkdir(parents=True)
    state = fp.priors_flow(params_path=str(root / "params.yaml"), root=str(root), return_state=True)
    assert state.is_failed(), state
    assert "IsADirectoryError" in state.message and str(blocked) in state.message, state.message
    assert "shard val-000000 failed" in state.message, state.message  # named whatever the error says

    runs = _task_runs_of(state.state_details.flow_run_id)
    # shards run in order, one at a time; the flow stops at the first shard that fails for good
    assert {"priors-train-0", "priors-train-1", "priors-val-0"} <= set(runs), sorted(runs)
    failed = runs.pop("priors-val-0")
    assert failed.state.is_failed() and failed.run_count == 3  # 1 + 2 retries
    assert str(blocked) in failed.state.message
    assert runs["priors-train-0"].state.is_completed() and runs["priors-train-0"].run_count == 1
    assert not [n for n, t in runs.items() if t.state.is_failed()]
    assert not [k for k in _artifacts_of(state.state_details.flow_run_id) if k]  # (None: Prefect's result record)
    assert not (root / "data" / "priors" / DATASET / "index.json").exists()
