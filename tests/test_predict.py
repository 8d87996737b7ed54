"""``ferpipe predict`` / ``ferpipe.load_model`` / ``ferpipe export`` on a tiny real project: rendered
faces, MTCNN alignment, prior nets, priors and a tiny ORSANet (maps priors) trained a few steps,
exactly as the pipeline makes them (tests/test_flow_pipeline.py's TINY params)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferpipe.errors import FerpipeError
from tests.test_flow_pipeline import TINY

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from ferpipe.config import params_from_dict
    from ferpipe.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("proj")
    # New photos come without an annotated face box, so predict detects on the whole image; the
    # exact match with evaluate holds when align did too (with align.use_dataset_box the align stage
    # detects inside the dataset's box, and crops differ by the detector's sub-pixel jitter).
    params = params_from_dict({**TINY, "align": {**TINY["align"], "use_dataset_box": False},
                               "evaluate": {**TINY["evaluate"], "sets": ["clean"]}})
    run_pipeline(params, root, ["download", "align", "prior-nets", "priors", "train", "evaluate"])
    return root


@pytest.fixture(scope="module")
def ckpt(project) -> Path:
    return project / "models" / "train" / "tiny" / "best.pt"


@pytest.fixture(scope="module")
def test_split(project) -> pd.DataFrame:
    from ferpipe.manifest import read_manifest

    man = read_manifest(project / "data" / "manifests" / "tiny.parquet").frame
    t = man[man.split == "test"].copy()
    t["file"] = [str(project / "data" / "raw" / "tiny" / p) for p in t.path]
    return t


def test_predict_on_raw_test_images_matches_the_evaluate_stage(project, ckpt, test_split, tmp_path):
    """The done-when: same predictions, same accuracy as `evaluate` for every aligned test image."""
    from ferpipe.cli import main
    from ferpipe.evaluate import CheckpointPredictor
    from ferpipe.shards import shard_urls
    from ferpipe.train.checkpoint import load

    out = tmp_path / "preds.parquet"
    assert main(["predict", *test_split.file, "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    df = pd.read_parquet(out)
    classes = load(ckpt)["label_space"]["classes"]
    assert list(df.columns[-len(classes) - 2:]) == classes + ["top_class", "top_prob"]

    evaluated = pd.read_csv(project / "reports" / "plots" / "clean_predictions.csv")   # the evaluate stage's
    metrics = json.loads((project / "reports" / "metrics.json").read_text())["clean"]
    aligned = set(evaluated.key)
    assert aligned and len(aligned) == metrics["n"]
    chosen = df[df.chosen.fillna(False).astype(bool)]
    key_of = dict(zip(test_split.file, test_split.key))
    chosen = chosen.assign(key=[key_of[s] for s in chosen.source]).set_index("key")
    assert aligned <= set(chosen.index)          # every image evaluate saw has its face here
    ev = evaluated.set_index("key")
    assert all(chosen.loc[k, "top_class"] == ev.loc[k, "predicted"] for k in aligned)
    acc = np.mean([chosen.loc[k, "top_class"] == ev.loc[k, "actual"] for k in sorted(aligned)])
    assert acc == pytest.approx(metrics["accuracy"], abs=1e-6)
    # Not just the argmax: the probabilities are the evaluate path's to float precision.
    pr = CheckpointPredictor(ckpt, device="cpu").predict(shard_urls(project / "data" / "priors" / "tiny", "test"))
    got = chosen.loc[pr.keys, classes].to_numpy(np.float32)
    assert np.abs(got - pr.y_prob).max() < 1e-5


def _two_faces(files):
    from PIL import Image

    a, b = (np.asarray(Image.open(f).convert("RGB")) for f in files[:2])
    return np.concatenate([a, b[:, ::-1]], axis=1)


def test_api_multi_face_no_face_bad_files_and_video(ckpt, test_split, tmp_path):
    import cv2
    from PIL import Image

    import ferpipe

    model = ferpipe.load_model(ckpt, batch_size=4)
    assert model.classes == list(model.recipe.label_space["classes"])
    files = list(test_split.file)
    blank = np.full((120, 160, 3), 127, np.uint8)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "trunc.jpg").write_bytes(Path(files[0]).read_bytes()[:400])
    df = model.predict([_two_faces(files), Image.fromarray(blank), str(tmp_path / "notes.txt"),
                        str(tmp_path / "trunc.jpg")])
    two = df[df.source == "<array 0>"]
    assert len(two) == 2 and two.chosen.sum() == 1 and (two.status == "ok").all()
    assert two.face.tolist() == [0, 1] and np.allclose(two[model.classes].sum(axis=1), 1, atol=1e-5)
    assert df[df.source == "<array 1>"].status.tolist() == ["no_face"]
    notes = df[df.source.str.endswith("notes.txt")]
    assert notes.status.tolist() == ["error"] and "not_image_or_video" in notes.detail.iloc[0]
    assert df[df.source.str.endswith("trunc.jpg")].status.tolist() == ["error"]

    # A video rendered from the test faces: streamed rows, frame indexes and timestamps by --every.
    frames = [cv2.imread(f) for f in files[:3]]
    h, w = frames[0].shape[:2]
    vid = tmp_path / "clip.avi"
    wr = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for i in range(12):
        wr.write(frames[(i // 4) % 3])
    wr.release()
    rows = list(model.predict_video(vid, every=4))
    assert [r["frame"] for r in rows] == [0, 4, 8] and [r["timestamp"] for r in rows] == [0.0, 0.4, 0.8]
    assert all(r["status"] == "ok" and r["kind"] == "video" for r in rows)
    # The video frame is the same face as the photo it was rendered from: same class.
    photo = model.predict(files[:3])
    assert [r["top_class"] for r in rows] == photo[photo.chosen.astype(bool)].top_class.tolist()
    # fps sampling: 5 of 10 fps -> every other frame.
    assert [r["frame"] for r in model.predict_video(vid, fps=5)] == [0, 2, 4, 6, 8, 10]

    # Damaged videos: bytes zeroed in the middle; the second half cut off (frames declared in the
    # header are missing). Rows for the frames read, error rows for those that cannot be, no crash.
    data = vid.read_bytes()
    mid = len(data) // 2
    (tmp_path / "damaged.avi").write_bytes(data[:mid] + b"\x00" * 4000 + data[mid + 4000:])
    (tmp_path / "cut.avi").write_bytes(data[:int(len(data) * 0.6)])
    for name in ("damaged.avi", "cut.avi"):
        rows = list(model.iter_rows([str(tmp_path / name)]))
        assert {r["status"] for r in rows} == {"ok", "error"}, name
        errors = [r for r in rows if r["status"] == "error"]
        assert all(r["frame"] is not None and "frame" in r["detail"] for r in errors)
        assert [r["frame"] for r in rows] == sorted(r["frame"] for r in rows)


def test_cli_annotates_and_refuses_to_overwrite(ckpt, test_split, tmp_path, capsys):
    from ferpipe.cli import main

    d = tmp_path / "in"
    d.mkdir()
    for f in test_split.file[:2]:
        shutil.copy(f, d)
    (d / "sub").mkdir()
    shutil.copy(test_split.file.iloc[2], d / "sub" / "x.jpg")
    args = ["predict", str(d), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.json"),
            "--annotate", str(tmp_path / "ann"), "--no-progress"]
    assert main(args) == 0
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 3 and {r["status"] for r in rows} == {"ok"}        # the folder, recursively
    assert len(list((tmp_path / "ann").glob("*.jpg"))) == 3
    assert main(args) == 2 and "refusing to overwrite" in capsys.readouterr().err      # never silently overwritten


def test_refuses_checkpoints_without_label_map_or_preprocessing_and_other_prior_nets(ckpt, tmp_path):
    import torch

    import ferpipe
    from ferpipe.predict.recipe import RecipeError
    from ferpipe.train.checkpoint import load

    state = load(ckpt)
    rec = state["preprocess"]       # what the trainer records for prediction
    assert rec["align"]["output_size"] == rec["aligned"]["output_size"] == 224 and "threads" not in rec["align"]
    assert rec["priors"]["backend"] == "ferpipe" and set(rec["prior_meta"]["checkpoints"]) == {"parser", "landmarks"}
    torch.save(rec, tmp_path / "rec.pt")    # plain data: loads without unpickling any object
    assert torch.load(tmp_path / "rec.pt", weights_only=True) == rec
    bad = dict(state, label_space=None)
    torch.save(bad, tmp_path / "nolabels.pt")
    with pytest.raises(FerpipeError, match="label map"):
        ferpipe.load_model(tmp_path / "nolabels.pt")
    old = {k: v for k, v in state.items() if k != "preprocess"}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(RecipeError, match="does not record its preprocessing"):
        ferpipe.load_model(tmp_path / "old.pt")
    other = json.loads(json.dumps(state["preprocess"]))
    other["prior_meta"]["checkpoints"]["parser"]["sha256"] = "0" * 64
    torch.save(dict(state, preprocess=other), tmp_path / "other.pt")
    with pytest.raises(RecipeError, match="parser"):
        ferpipe.load_model(tmp_path / "other.pt", models_dir=ckpt.parents[2])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_and_states_the_label_order(ckpt, test_split, tmp_path, fmt):
    import torch
    from PIL import Image

    import ferpipe
    from ferpipe.predict.export import export_model

    card = export_model(ckpt, fmt, tmp_path / fmt)
    assert card["check"]["max_abs_logit_diff_vs_pytorch"] < 1e-4
    ref = ferpipe.load_model(ckpt)
    assert card["label_map"] == ref.classes and card["opset"] == (17 if fmt == "onnx" else None)
    assert [i["name"] for i in card["inputs"]] == ["image", "landmarks", "parsing"]
    assert card["inputs"][0]["shape"][0] == "B" and card["data_index_sha256"]
    md = (tmp_path / fmt / "MODEL_CARD.md").read_text()
    assert all(f"| {i} | {c} |" in md for i, c in enumerate(ref.classes))
    # Real faces through both: logits within 1e-4, batch 5 (traced with 2).
    rgbs = [np.asarray(Image.open(f).convert("RGB")) for f in test_split.file[:5]]
    faces = [f for ff in ref.pre.faces(rgbs) for f in ff.faces if f.chosen]
    image, priors = ref.pre.tensors(faces)
    exported = ferpipe.load_model(model=tmp_path / fmt / card["file"])
    want = ref.runner(image, priors)
    got = exported.runner(image, priors)
    assert got.shape == want.shape == (len(faces), len(ref.classes)) and np.abs(got - want).max() < 1e-4
    # The bundled prior nets make the export self-contained: predict gives the checkpoint's answers.
    a = ref.predict(list(test_split.file))
    b = exported.predict(list(test_split.file))
    assert a.top_class.tolist() == b.top_class.tolist()
    assert np.abs(a[ref.classes].to_numpy(float) - b[ref.classes].to_numpy(float)).max() < 1e-4
    with pytest.raises(FerpipeError, match="overwrite"):
        export_model(ckpt, fmt, tmp_path / fmt)
    torch.set_num_threads(1)


def test_import_ferpipe_stays_light():
    import subprocess
    import sys

    code = ("import sys, ferpipe, ferpipe.predict; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(ferpipe.load_model)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_predict_flow_publishes_table_and_gallery(ckpt, test_split, tmp_path, prefect_api):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.predict import predict_flow

    rep = predict_flow(paths=list(test_split.file[:3]), checkpoint=str(ckpt), out=str(tmp_path / "p.csv"))
    assert rep.faces == 3 and len(rep.gallery) == 3 and (tmp_path / "p.csv").is_file()

    async def keys():
        async with get_client() as c:
            return {a.key for a in await c.read_artifacts()}

    assert {"predict-tiny-table", "predict-tiny-gallery"} <= asyncio.run(keys())
