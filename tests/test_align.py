"""The align stage on real faces (skimage's astronaut, insightface's group photo if present)
and on every odd input kind: odd modes, EXIF rotation, huge/tiny, corrupt, bombs, no face."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data

from ferpipe import shards
from ferpipe.align import AlignParams, align_stage, failure_gallery_markdown, failure_thumbnails
from ferpipe.align.detect import (
    Detections,
    FaceDetector,
    choose_face,
    snapped_min_face_size,
)
from ferpipe.align.warp import ARCFACE_112, estimate_similarity, template

LABEL_SPACE = {"name": "basic7", "classes": ["surprise", "fear", "disgust", "happiness",
                                             "sadness", "anger", "neutral"]}
FAST = dict(threads=2, decode_workers=1, batch_size=8)


def write_manifest(path: Path, raw: Path, entries: list[dict]) -> Path:
    """A small manifest in the contract's columns, written straight with pyarrow."""
    rows = []
    for e in entries:
        f = raw / e["path"]
        b = f.read_bytes() if f.exists() else b""
        rows.append({
            "key": e["key"], "dataset": "testset", "split": e.get("split", "train"),
            "path": e["path"], "sha256": hashlib.sha256(b).hexdigest() if b else "",
            "width": 0, "height": 0, "native_label": str(e.get("label", 0)),
            "label": e.get("label", 0), "status": e.get("status", "ok"),
            "landmarks5": e.get("landmarks5"),
        })
    schema = pa.schema([("key", pa.string()), ("dataset", pa.string()), ("split", pa.string()),
                        ("path", pa.string()), ("sha256", pa.string()), ("width", pa.int32()),
                        ("height", pa.int32()), ("native_label", pa.string()),
                        ("label", pa.int16()), ("status", pa.string()),
                        ("landmarks5", pa.list_(pa.float32()))])
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(
        {b"ferpipe.label_space": json.dumps(LABEL_SPACE).encode()})
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def astro():
    return data.astronaut()


@pytest.fixture(scope="module")
def odd_raw(tmp_path_factory, astro):
    """One image per odd kind, all made from the astronaut's face with PIL/OpenCV."""
    raw = tmp_path_factory.mktemp("raw")
    a = astro
    Image.fromarray(a).save(raw / "rgb.jpg", quality=95)
    Image.fromarray(a).convert("L").save(raw / "grey.png")
    rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])
    rgba[:40, :, 3] = 0  # some transparency
    Image.fromarray(rgba, "RGBA").save(raw / "rgba.png")
    Image.fromarray(a).convert("CMYK").save(raw / "cmyk.jpg", quality=95)
    grey16 = (a.mean(axis=2) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(raw / "grey16.png")
    cv2.imwrite(str(raw / "rgb16.png"), (a[..., ::-1].astype(np.uint16) * 257))
    # Stored sideways; EXIF orientation 6 says "rotate 90 degrees clockwise to view".
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).transpose(Image.Transpose.ROTATE_90).save(
        raw / "exif6.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(cv2.resize(a, (3000, 3000), interpolation=cv2.INTER_CUBIC)).save(
        raw / "huge.jpg", quality=90)
    Image.fromarray(cv2.resize(a[20:276, 100:356], (128, 128),
                               interpolation=cv2.INTER_AREA)).save(raw / "tiny.png")
    (raw / "corrupt.jpg").write_bytes((raw / "rgb.jpg").read_bytes()[:600])
    (raw / "notimage.jpg").write_bytes(b"this is not an image")
    Image.new("L", (5000, 5000)).save(raw / "bomb.png")  # 25 Mpx > 2 x 10 Mpx limit
    grad = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    grad[..., 1] = grad[..., 1][::-1]
    Image.fromarray(grad).save(raw / "gradient.png")
    return raw


ODD = ["rgb.jpg", "grey.png", "rgba.png", "cmyk.jpg", "grey16.png", "rgb16.png", "exif6.jpg",
       "huge.jpg", "tiny.png"]
BAD = {"corrupt.jpg": "corrupt_image", "notimage.jpg": "corrupt_image",
       "bomb.png": "decompression_bomb", "gradient.png": "no_face",
       "missing.jpg": "missing_file"}


def _entries():
    names = ODD + sorted(BAD)
    return [{"key": f"img{i:02d}_{Path(n).stem}", "path": n, "label": i % 7}
            for i, n in enumerate(names)]


def _eye_error(rgb: np.ndarray, det: FaceDetector, size: int) -> float:
    """Max distance (px) between MTCNN's eyes on an aligned crop and the template's eyes."""
    # MTCNN misses landmarks of a face that fills the frame: re-detect on a padded crop.
    pad = size // 4
    d = det.detect([cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT)])[0]
    assert len(d) >= 1, "no face found on the aligned crop"
    k = int(np.argmax(d.scores))
    tpl = template(size)
    return float(np.max(np.linalg.norm(d.points[k, :2] - pad - tpl[:2], axis=1)))


@pytest.fixture(scope="module")
def odd_run(odd_raw, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("odd")
    man = write_manifest(tmp / "m.parquet", odd_raw, _entries())
    params = AlignParams(max_image_pixels=10_000_000, samples_per_shard=5, **FAST)
    report = align_stage(man, odd_raw, tmp / "out", params, progress=False)
    samples = {s["__key__"]: s for s in shards.iter_samples(tmp / "out", "train")}
    return report, samples, tmp / "out", params


def test_every_odd_kind_aligned(odd_run):
    report, samples, _, params = odd_run
    det = FaceDetector(params)
    for e in _entries()[: len(ODD)]:
        s = samples.get(e["key"])
        assert s is not None, f"{e['path']} was not aligned: {report.failures}"
        meta = s["json"]
        assert s["jpg"].shape == (224, 224, 3)
        assert s["cls"] == e["label"] and meta["method"] == "mtcnn"
        assert len(meta["boxes"]) >= 1 and meta["box"] is not None
        err = _eye_error(s["jpg"], det, 224)
        assert err < 6.0, f"{e['path']}: eyes {err:.1f}px off the template"
    meta = samples[_entries()[ODD.index("exif6.jpg")]["key"]]["json"]
    assert meta["source"]["exif_transposed"] is True
    assert (meta["source"]["width"], meta["source"]["height"]) == (512, 512)
    huge = samples[_entries()[ODD.index("huge.jpg")]["key"]]["json"]
    assert huge["source"]["width"] == 3000 and huge["detect"]["size"] == [480, 480]
    assert huge["box"][2] - huge["box"][0] > 300  # box in full-resolution coordinates
    tiny = samples[_entries()[ODD.index("tiny.png")]["key"]]["json"]
    assert tiny["detect"]["size"] == [160, 160]


def test_bad_inputs_listed_with_reasons(odd_run):
    report, samples, out, _ = odd_run
    by_path = {f["path"]: f for f in report.failures}
    for name, reason in BAD.items():
        assert by_path[name]["reason"] == reason, by_path[name]
        assert by_path[name]["kind"] == "skipped"
    assert report.splits["train"]["written"] == len(ODD)
    assert report.splits["train"]["skipped"] == len(BAD)
    assert report.skipped_by_reason["corrupt_image"] == 2
    idx = shards.read_index(out, "train")
    assert idx["totals"] == {"bytes": idx["totals"]["bytes"], "items": len(ODD) + len(BAD),
                             "noted": 0, "samples": len(ODD), "shards": 3,
                             "skipped": len(BAD)}


def test_failure_gallery(odd_run, odd_raw):
    report, *_ = odd_run
    thumbs = failure_thumbnails(report.failures, odd_raw, size=64)
    by_path = {t["path"]: t for t in thumbs}
    assert by_path["gradient.png"]["data_uri"].startswith("data:image/jpeg;base64,")
    assert by_path["corrupt.jpg"]["data_uri"] is None
    md = failure_gallery_markdown(thumbs, total=len(report.failures))
    assert "no_face" in md and "<img src=\"data:image/jpeg;base64," in md


def test_no_face_center_crop_and_status_rows(odd_raw, tmp_path):
    man = write_manifest(tmp_path / "m.parquet", odd_raw, [
        {"key": "grad", "path": "gradient.png", "label": 2},
        {"key": "dup", "path": "rgb.jpg", "status": "duplicate"},
        {"key": "other", "path": "rgb.jpg", "label": -1},
    ])
    rep = align_stage(man, odd_raw, tmp_path / "out",
                      AlignParams(no_face="center_crop", **FAST), progress=False)
    samples = list(shards.iter_samples(tmp_path / "out", "train"))
    assert [s["__key__"] for s in samples] == ["grad"]
    assert samples[0]["json"]["method"] == "center_crop"
    assert samples[0]["json"]["fallback_reason"] == "no_face"
    assert rep.noted_by_reason == {"no_face": 1}
    assert rep.skipped_by_reason == {"label_outside_space": 1, "manifest_duplicate": 1}
    assert {f["key"] for f in rep.failures} == {"grad", "dup", "other"}


def test_dataset_points_and_passthrough(odd_raw, tmp_path, astro):
    det = FaceDetector(AlignParams(**FAST)).detect([astro])[0]
    lm = det.points[int(np.argmax(det.scores))].ravel().tolist()
    man = write_manifest(tmp_path / "m.parquet", odd_raw, [
        {"key": "a", "path": "rgb.jpg", "landmarks5": lm},
        {"key": "b", "path": "gradient.png"},  # no points, no face
    ])
    rep = align_stage(man, odd_raw, tmp_path / "ds", AlignParams(points="auto", **FAST),
                      progress=False)
    s = {x["__key__"]: x for x in shards.iter_samples(tmp_path / "ds", "train")}
    assert s["a"]["json"]["method"] == "dataset" and s["a"]["json"]["boxes"] == []
    assert rep.skipped_by_reason == {"no_face": 1}
    tpl = template(224)
    # Least-squares residual of a smiling, slightly turned face: eyes near, mouth wider.
    assert np.linalg.norm(np.asarray(s["a"]["json"]["points_aligned"])[:2] - tpl[:2],
                          axis=1).max() < 7

    align_stage(man, odd_raw, tmp_path / "pt",
                AlignParams(method="passthrough", output_size=112, **FAST), progress=False)
    s = {x["__key__"]: x for x in shards.iter_samples(tmp_path / "pt", "train")}
    assert s["a"]["jpg"].shape == (112, 112, 3) and s["b"]["json"]["method"] == "passthrough"
    assert s["a"]["json"]["points_aligned"][0] == pytest.approx(
        [v * 112 / 512 for v in lm[:2]], abs=0.01)


def test_output_112_with_margin_realigns(odd_raw, tmp_path):
    man = write_manifest(tmp_path / "m.parquet", odd_raw, [{"key": "a", "path": "rgb.jpg"}])
    params = AlignParams(output_size=112, estimator="lmeds", **FAST)
    align_stage(man, odd_raw, tmp_path / "o", params, progress=False)
    (s,) = list(shards.iter_samples(tmp_path / "o", "train"))
    assert _eye_error(s["jpg"], FaceDetector(AlignParams(**FAST)), 112) < 3.5


@pytest.mark.skipif(importlib.util.find_spec("insightface") is None,
                    reason="insightface not installed (optional)")
def test_group_photo_picks_largest_central_face(tmp_path):
    import insightface

    src = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "t1.jpg").write_bytes(src.read_bytes())
    man = write_manifest(tmp_path / "m.parquet", raw, [{"key": "g", "path": "t1.jpg"}])
    align_stage(man, raw, tmp_path / "o", AlignParams(min_face_frac=0.05, **FAST),
                progress=False)
    (s,) = list(shards.iter_samples(tmp_path / "o", "train"))
    meta = s["json"]
    assert len(meta["boxes"]) >= 4, meta["boxes"]
    b = np.asarray(meta["boxes"])
    w, h = meta["source"]["width"], meta["source"]["height"]
    size = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (w * h))
    dist = np.hypot((b[:, 0] + b[:, 2]) / 2 - w / 2, (b[:, 1] + b[:, 3]) / 2 - h / 2)
    assert meta["chosen"] == int(np.argmax(size - dist / (np.hypot(w, h) / 2)))
    assert _eye_error(s["jpg"], FaceDetector(AlignParams(**FAST)), 224) < 6.0


def test_choose_face_rule():
    boxes = np.array([[0, 0, 50, 50], [70, 70, 130, 130], [100, 100, 140, 140]], np.float32)
    det = Detections(boxes, np.array([0.99, 0.95, 0.999], np.float32),
                     np.zeros((3, 5, 2), np.float32))
    p = AlignParams()
    assert choose_face(det, 200, 200, p) == 1  # big and central beats the corner face
    assert choose_face(det, 200, 200, AlignParams(choose="score")) == 2
    hint = np.tile([[120.0, 120.0]], (5, 1))
    assert choose_face(det, 200, 200, p, hint) == 2
    same = Detections(np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32),
                      np.array([0.9, 0.95], np.float32), np.zeros((2, 5, 2), np.float32))
    assert choose_face(same, 10, 10, p) == 1  # tie broken by the detector score


def test_min_face_snaps_to_default_pyramid():
    assert snapped_min_face_size(100, 100, 0.0, 20) == 20
    m = snapped_min_face_size(480, 360, 0.2, 20)
    k = np.log(m / 20) / np.log(1 / 0.709)
    assert abs(k - round(k)) < 1e-9 and 20 <= m <= 72


def test_similarity_matches_template():
    tpl = template(224)
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    src = (tpl - 112) @ rot.T * 0.5 + 300
    for est in ("lstsq", "lmeds"):
        m = estimate_similarity(src, tpl, est)
        assert np.abs(src @ m[:, :2].T + m[:, 2] - tpl).max() < 1e-3
    assert np.allclose(template(112), ARCFACE_112)
    assert np.allclose(template(224, margin=1.0) - 112, (ARCFACE_112 * 2 - 112) / 2)


_RESUME_SCRIPT = textwrap.dedent("""
    import sys
    from ferpipe.align import AlignParams, align_stage
    p = AlignParams(samples_per_shard=2, threads=1, decode_workers=0, batch_size=4)
    align_stage(sys.argv[1], sys.argv[2], sys.argv[3], p, progress=False)
""")


def astro_crops(raw: Path, astro: np.ndarray, n: int, seed: int, widths=(160,)) -> list[dict]:
    """``n`` shifted 160 px-high crops of the astronaut's face as JPEGs in ``raw`` (widths taken in
    turn), and their manifest entries."""
    raw.mkdir()
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        y, x = rng.integers(0, 80, size=2)
        crop = cv2.resize(astro[y:y + 300, 80 + x:380 + x], (widths[i % len(widths)], 160),
                          interpolation=cv2.INTER_AREA)
        Image.fromarray(crop).save(raw / f"f{i}.jpg", quality=92)
        entries.append({"key": f"f{i:02d}", "path": f"f{i}.jpg", "label": i % 7})
    return entries


@pytest.mark.slow
def test_sigkill_resume_is_byte_identical(odd_raw, tmp_path, astro):
    raw = tmp_path / "raw"
    entries = astro_crops(raw, astro, 10, seed=0)
    (raw / "bad.jpg").write_bytes(b"nope")
    entries.append({"key": "f99", "path": "bad.jpg"})
    man = write_manifest(tmp_path / "m.parquet", raw, entries)
    params = AlignParams(samples_per_shard=2, threads=1, decode_workers=0, batch_size=4)

    ref = tmp_path / "ref"
    align_stage(man, raw, ref, params, progress=False)
    again = align_stage(man, raw, ref, params, progress=False)
    assert again.shards_resumed == 6 and again.images_processed == 0

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", _RESUME_SCRIPT, str(man), str(raw),
                             str(out)], env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("*_stats.json"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the stage finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in out.glob("*_stats.json"))
    assert 2 <= len(done_before) < 6
    assert not (out / "train_index.json").exists()

    rep = align_stage(man, raw, out, params, progress=False)
    assert rep.shards_resumed == len(done_before)
    names = sorted(p.name for p in ref.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for n in names:
        if n.endswith(".tar") or n.endswith("index.json"):
            assert (ref / n).read_bytes() == (out / n).read_bytes(), n


def test_channels_last_detection_equals_facenet_pytorch(astro):
    """The stage's MTCNN (channels-last nets, planar crops) finds the same faces as
    facenet-pytorch called the usual way (NCHW, uint8 NHWC input), to float rounding."""
    import cv2

    from ferpipe.align.detect import FaceDetector, _mtcnn

    imgs = [cv2.resize(astro, (256, 256)), cv2.resize(astro, (256, 256))[:, ::-1].copy(),
            cv2.resize(astro[40:300, 120:380], (256, 256))]
    fast = FaceDetector(AlignParams(batch_size=8, channels_last=True)).detect(imgs)
    usual = _mtcnn("cpu", (0.6, 0.7, 0.7), False)
    usual.min_face_size = FaceDetector(AlignParams()).min_face_size(256, 256)
    boxes, probs, points = usual.detect(np.stack(imgs), landmarks=True)
    for d, b, p, pt in zip(fast, boxes, probs, points):
        assert len(d) == len(b) >= 1
        assert np.abs(d.boxes - np.asarray(b, np.float32)).max() < 1e-2
        assert np.abs(d.points - np.asarray(pt, np.float32)).max() < 1e-2
        assert np.abs(d.scores - np.asarray(p, np.float32)).max() < 1e-5


def test_detection_lanes_and_decode_threads_leave_the_bytes_alone(tmp_path, astro):
    """Lanes detect several batches at once, each with one torch thread: the shards are the same
    bytes whatever the lanes and decode threads, and torch's thread count is put back."""
    import torch

    raw = tmp_path / "raw"
    entries = astro_crops(raw, astro, 12, seed=1, widths=(144, 160))  # two sizes: two batch shapes
    man = write_manifest(tmp_path / "m.parquet", raw, entries)
    threads_before = torch.get_num_threads()
    digests = {}
    for lanes, decoders in ((1, 0), (3, 2)):
        out = tmp_path / f"out{lanes}"
        rep = align_stage(man, raw, out, AlignParams(samples_per_shard=6, threads=lanes, decode_workers=decoders,
                                                     batch_size=2), progress=False)
        assert rep.images_processed == 12 and sum(c["written"] for c in rep.splits.values()) == 12
        digests[lanes] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}
        assert torch.get_num_threads() == threads_before
    assert len(digests[1]) == 2 and digests[1] == digests[3]


def test_concurrent_shards_share_one_set_of_lanes():
    """A flow runs shard tasks concurrently in threads: they feed the same lanes (one per core),
    which the last one to finish closes."""
    from ferpipe.align.detect import _SHARED, shared_lanes

    p = AlignParams(threads=2)
    with shared_lanes(p) as first:
        with shared_lanes(p) as second:
            assert second is first and first.count == 2
        assert not first._pool._shutdown  # still in use by the first
    assert first._pool._shutdown and not _SHARED
    with shared_lanes(p) as later:
        assert later is not first
