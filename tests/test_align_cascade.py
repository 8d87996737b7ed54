"""ferpipe's MTCNN cascade (batched box crops) gives facenet-pytorch's ``MTCNN.detect`` bit
for bit: same boxes, scores and points, in the same order, for NCHW and channels-last nets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from facenet_pytorch.models.utils.detect_face import imresample
from skimage import data

from ferpipe.align import AlignParams, cascade
from ferpipe.align.detect import FaceDetector, _mtcnn


@pytest.fixture(scope="module")
def astro():
    return data.astronaut()


def _batch(astro: np.ndarray) -> np.ndarray:
    """256x256 images: faces at several sizes, a mirrored one, one cut by the top-left
    border (its boxes need clipping), noise and a flat grey image (no face)."""
    face = astro[20:240, 120:340]
    border = np.full((256, 256, 3), 90, np.uint8)
    border[:170, :150] = cv2.resize(face, (200, 200))[30:, 50:]
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return np.stack([
        cv2.resize(astro, (256, 256), interpolation=cv2.INTER_AREA),
        cv2.resize(astro[40:300, 120:380], (256, 256))[:, ::-1],
        cv2.resize(astro[0:400, 60:460], (256, 256), interpolation=cv2.INTER_AREA),
        border, noise, np.full((256, 256, 3), 128, np.uint8),
    ])


def _assert_same_as_facenet(images: np.ndarray, channels_last: bool) -> list:
    det = FaceDetector(AlignParams(batch_size=len(images), channels_last=channels_last))
    ours = det.detect(list(images))
    mtcnn = _mtcnn("cpu", (0.6, 0.7, 0.7), channels_last)
    mtcnn.min_face_size = det.min_face_size(images.shape[2], images.shape[1])
    with torch.inference_mode():
        boxes, probs, points = mtcnn.detect(images, landmarks=True)
    for d, b, p, pt in zip(ours, boxes, probs, points):
        if b is None:
            assert len(d) == 0
            continue
        # facenet-pytorch's arrays may be object arrays of float32 values: exact to convert.
        assert np.array_equal(d.boxes, np.asarray(b, np.float32).reshape(-1, 4))
        assert np.array_equal(d.scores, np.asarray(p, np.float32).reshape(-1))
        assert np.array_equal(d.points, np.asarray(pt, np.float32).reshape(-1, 5, 2))
    return ours


@pytest.mark.parametrize("channels_last", [False, True])
def test_astronaut_exactly_as_facenet(astro, channels_last):
    (d,) = _assert_same_as_facenet(astro[None], channels_last)
    assert len(d) >= 1


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_exactly_as_facenet(astro, channels_last):
    images = _batch(astro)
    ours = _assert_same_as_facenet(images, channels_last)
    assert [len(d) > 0 for d in ours][:4] == [True] * 4
    assert len(ours[4]) == 0 and len(ours[5]) == 0
    assert ours[3].boxes[:, :2].min() < 0  # the border face's box leaves the image


def test_float_input_takes_the_general_path_exactly(astro):
    """Non-integer pixels cannot use the integer-sum crops: the grouped pooling path."""
    images = _batch(astro)[:4].astype(np.float32) + 0.25
    mtcnn = _mtcnn("cpu", (0.6, 0.7, 0.7), False)
    mtcnn.min_face_size = 40.0
    with torch.inference_mode():
        res = cascade.detect(images, 40.0, mtcnn.pnet, mtcnn.rnet, mtcnn.onet,
                             (0.6, 0.7, 0.7), mtcnn.factor, "cpu")
        boxes, _, points = mtcnn.detect(images, landmarks=True)
    assert len(res.boxes) >= 4
    for i, (b, pt) in enumerate(zip(boxes, points)):
        sel = res.image_index == i
        if b is None:
            assert not sel.any()
            continue
        assert np.array_equal(res.boxes[sel, :4], np.asarray(b, np.float32).reshape(-1, 4))
        assert np.array_equal(res.points[sel], np.asarray(pt, np.float32).reshape(-1, 5, 2))


def _reference_crops(nchw: torch.Tensor, image_index: np.ndarray, bounds: np.ndarray,
                     size: int) -> torch.Tensor:
    # facenet-pytorch's way: one slice and one area resize per box.
    return torch.cat([imresample(nchw[i, :, y0:y1, x0:x1].unsqueeze(0), (size, size))
                      for i, (x0, y0, x1, y1) in zip(image_index.tolist(), bounds.tolist())])


@pytest.mark.parametrize("size", [24, 48])
def test_batched_crops_equal_per_box_area_resize(size):
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.integers(0, 256, (3, 97, 131, 3), dtype=np.uint8))
    nchw = x.permute(0, 3, 1, 2).float()
    n = 300
    x0 = rng.integers(0, 131, n)
    y0 = rng.integers(0, 97, n)
    # 1 px up to the whole image; many smaller than the output (windows repeat pixels)
    x1 = np.minimum(131, x0 + rng.integers(1, 140, n))
    y1 = np.minimum(97, y0 + rng.integers(1, 100, n))
    bounds = np.stack([x0, y0, x1, y1], axis=1)
    bounds[:3] = [[0, 0, 131, 97], [130, 96, 131, 97], [0, 90, 131, 97]]
    image_index = rng.integers(0, 3, n)
    ref = _reference_crops(nchw, image_index, bounds, size)
    fast = cascade._crops_uint8(cascade._HostPixels(x.numpy()), image_index, bounds, size)
    assert torch.equal(torch.from_numpy(fast), ref)
    grouped = cascade._crops_grouped(nchw.permute(0, 2, 3, 1), torch.as_tensor(image_index),
                                     bounds, size)
    assert torch.equal(grouped, ref)


def test_pyramid_levels_equal_imresample():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (2, 97, 131, 3), dtype=np.uint8)
    px = cascade._Pixels(torch.as_tensor(x), torch.float32)
    for out_h, out_w in [(98, 132), (97, 131), (69, 93), (13, 17), (12, 12), (1, 2), (2, 1), (1, 1)]:
        ref = imresample(px.nchw, (out_h, out_w))
        got = px.resized(out_h, out_w)
        assert torch.equal(got, ref) and got.stride() == ref.stride(), (out_h, out_w)
