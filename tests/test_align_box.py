"""Align picks the face the dataset's box annotates (IoU), on a real group photo, and crops by
the box when no detection overlaps it; the sample json says which rule chose the face."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from ferpipe import shards
from ferpipe.align import AlignParams, align_stage
from ferpipe.align.decode import box_region, region_image
from ferpipe.align.detect import Detections, FaceDetector, box_iou, choose_by_box
from ferpipe.manifest import manifest_table, write_manifest

pytestmark = pytest.mark.usefixtures("one_thread_module")

SPACE = {"name": "basic7", "classes": ["surprise", "fear", "disgust", "happiness", "sadness",
                                       "anger", "neutral"]}
FAST = dict(threads=1, decode_workers=0, batch_size=8)
# insightface's t1.jpg (1280x886, six people): the annotated face is the man top right, which
# is neither the largest face nor the most central one. The box is hand-set like AffectNet's
# (a little looser than a detector's).
T1_BOX = [895.0, 50.0, 1025.0, 212.0]


def _manifest(path: Path, rows: list[dict]) -> Path:
    full = [{"key": r["key"], "dataset": "t", "split": "train", "path": r["path"], "sha256": "",
             "width": 0, "height": 0, "native_label": "3", "label": 3, "status": "ok",
             "landmarks5": None, "bbox": r.get("bbox"), "landmarks": None,
             "soft_label": None} for r in rows]
    return write_manifest(manifest_table(full, SPACE, {}), path)


def _t1() -> Path:
    import insightface

    return Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


@pytest.mark.skipif(importlib.util.find_spec("insightface") is None,
                    reason="insightface not installed (its wheel ships the group photo)")
def test_group_photo_crop_is_the_annotated_face_not_the_largest(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "t1.jpg").write_bytes(_t1().read_bytes())
    man = _manifest(tmp_path / "m.parquet", [
        {"key": "boxed", "path": "t1.jpg", "bbox": T1_BOX},
        {"key": "plain", "path": "t1.jpg"},
    ])
    rep = align_stage(man, raw, tmp_path / "o", AlignParams(min_face_frac=0.05, **FAST),
                      progress=False)
    assert rep.splits["train"]["written"] == 2
    s = {x["__key__"]: x for x in shards.iter_samples(tmp_path / "o", "train")}
    boxed, plain = s["boxed"]["json"], s["plain"]["json"]
    # Without the box the usual rule takes another person: the annotated face is not the
    # largest-central one, so the box is what makes the difference.
    assert plain["chosen_by"] == "largest_central"
    assert box_iou(np.asarray([plain["box"]]), T1_BOX)[0] < 0.05
    assert boxed["chosen_by"] == "box_iou" and boxed["method"] == "mtcnn"
    assert boxed["dataset_box"] == T1_BOX and boxed["box_iou"] > 0.6
    assert box_iou(np.asarray([boxed["box"]]), T1_BOX)[0] == pytest.approx(boxed["box_iou"],
                                                                          abs=1e-3)
    # Detection ran on the box's region only, and the points map back into the box.
    assert boxed["detect"]["size"] == [256, 256] and "region_offset" in boxed["detect"]
    eyes = np.asarray(boxed["points_src"])[:2]
    assert ((eyes[:, 0] > T1_BOX[0]) & (eyes[:, 0] < T1_BOX[2]) & (eyes[:, 1] > T1_BOX[1])
            & (eyes[:, 1] < T1_BOX[3])).all()
    # The crop shows the annotated person: its centre maps back (through the recorded matrix)
    # into the annotated box and into no other face's detection; and it holds a face.
    inv = cv2.invertAffineTransform(np.asarray(boxed["matrix"]))
    cx, cy = inv @ np.array([112.0, 112.0, 1.0])
    assert T1_BOX[0] < cx < T1_BOX[2] and T1_BOX[1] < cy < T1_BOX[3]
    assert not any(b[0] < cx < b[2] and b[1] < cy < b[3] for b in plain["boxes"]
                   if box_iou(np.asarray([b]), T1_BOX)[0] < 0.3)
    pad = 56
    d = FaceDetector(AlignParams(**FAST)).detect(
        [np.pad(s["boxed"]["jpg"], ((pad, pad), (pad, pad), (0, 0)))])[0]
    assert len(d) >= 1 and d.scores.max() > 0.95


def test_no_face_on_the_box_crops_by_the_box(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(data.astronaut()).save(raw / "a.png")
    box = [380.0, 380.0, 480.0, 500.0]  # the astronaut's suit and arm: no face there
    man = _manifest(tmp_path / "m.parquet", [{"key": "a", "path": "a.png", "bbox": box}])
    rep = align_stage(man, raw, tmp_path / "o", AlignParams(**FAST), progress=False)
    (s,) = list(shards.iter_samples(tmp_path / "o", "train"))
    meta = s["json"]
    assert meta["method"] == "box_crop" and meta["chosen_by"] == "box_crop"
    assert meta["fallback_reason"] == "no_detection_on_box"
    assert rep.noted_by_reason == {"box_crop": 1}
    # The crop is the box's square: its centre pixel is the box centre's.
    src = data.astronaut()[440, 430].astype(int)
    assert np.abs(s["jpg"][112, 112].astype(int) - src).max() < 30


def test_choose_by_box_and_region_mapping():
    boxes = np.array([[0, 0, 50, 50], [60, 60, 100, 100], [55, 55, 105, 105]], np.float32)
    det = Detections(boxes, np.array([0.99, 0.95, 0.999], np.float32),
                     np.zeros((3, 5, 2), np.float32))
    assert choose_by_box(det, [58, 58, 102, 102], 0.3)[0] in (1, 2)
    k, iou = choose_by_box(det, [200, 200, 240, 240], 0.3)
    assert k is None and iou == 0.0
    # A region crop maps back exactly: a bright square lands where the mapping says.
    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[100:140, 250:290] = 255
    region = box_region([250, 100, 290, 140], 0.5)
    img, scale, off = region_image(rgb, region, 160)
    ys, xs = np.nonzero(img[..., 0] > 127)
    src_x0, src_y0 = xs.min() / scale[0] + off[0], ys.min() / scale[1] + off[1]
    assert abs(src_x0 - 250) < 1.0 and abs(src_y0 - 100) < 1.0
