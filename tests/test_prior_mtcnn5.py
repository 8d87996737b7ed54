"""The mtcnn5 prior backend: facenet-pytorch's O-Net (weights in its wheel) on real aligned
faces, 5 points -> a mean face bent onto them -> parsing. What it can show is limited (see
ferpipe/priors/five_point.py); these tests check it is a real function of the face."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ferpipe.align import warp as W
from ferpipe.priors import PriorsParams, build_backend, priors_stage
from ferpipe.priors.data import five_from_68
from ferpipe.priors.five_point import face_from_5
from ferpipe.priors.stage import decode_npy, decode_png
from tests._lapa_tree import _photos
from tests.test_priors import _samples, aligned_dir, synth_set  # noqa: F401

SIDE = 112


@pytest.fixture(scope="module")
def real_aligned():
    """Real faces aligned like the align stage does (MTCNN points on the full photo)."""
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    m = MTCNN(keep_all=True, device="cpu", min_face_size=20)
    tpl = W.template(SIDE, 0.0)
    crops, pts = [], []
    for rgb in _photos().values():
        _, probs, lmk = m.detect(Image.fromarray(rgb), landmarks=True)
        for p, five in zip(np.asarray(probs, dtype=float), lmk):
            if p >= 0.95:
                mat = W.estimate_similarity(np.asarray(five, float), tpl, "lstsq")
                crops.append(W.warp(rgb, mat, SIDE))
                pts.append(W.transform_points(np.asarray(five, float), mat))
    return crops, np.stack(pts)


def test_face_from_5_passes_through_the_5_points():
    rng = np.random.default_rng(0)
    tpl = W.template(SIDE, 0.0)
    for _ in range(5):
        p5 = tpl + rng.normal(0, 2.5, tpl.shape)
        p68 = face_from_5(p5)
        np.testing.assert_allclose(five_from_68(p68), p5, atol=1e-6)
        assert p68[36:42, 0].mean() < p68[42:48, 0].mean() and p68[8, 1] > p68[57, 1]


def test_mtcnn5_on_real_faces(real_aligned):
    crops, full_image_pts = real_aligned
    assert len(crops) == 8
    be = build_backend(PriorsParams(backend="mtcnn5", device="cpu"), "unused")
    five = be.five_points(crops)
    iod = np.linalg.norm(full_image_pts[:, 0] - full_image_pts[:, 1], axis=1)
    err = np.linalg.norm(five - full_image_pts, axis=2).mean(1) / iod
    assert np.median(err) < 0.08, err  # O-Net on the crop agrees with the detector on the photo
    pts, maps = be.maps(crops)
    assert pts.shape == (8, 68, 2) and maps.shape == (8, SIDE, SIDE) and maps.dtype == np.uint8
    for p, m in zip(pts, maps):
        cx, cy = np.round(p[36:42].mean(0)).astype(int)
        assert m[cy, cx] == 4
    # not a constant template: the faces' maps differ (pose, eye and mouth positions)
    spread = np.linalg.norm(pts - pts.mean(0), axis=2).mean() / iod.mean()
    assert spread > 0.03, spread


def test_mtcnn5_runs_the_stage_for_a_real_dataset(aligned_dir, tmp_path):  # noqa: F811
    rep = priors_stage(aligned_dir, tmp_path / "out", PriorsParams(backend="mtcnn5", device="cpu"), tmp_path,
                       progress=False, data_domain="real")
    assert rep.domain["nets"] == "real" and not rep.domain["mismatch"]
    s = _samples(tmp_path / "out", "test")[0]
    pts = decode_npy(s["landmarks.npy"])
    assert pts.shape == (2, 68, 2)
    for v in (0, 1):  # image-side semantics in both views
        assert pts[v, 36:42, 0].mean() < pts[v, 42:48, 0].mean()
    assert decode_png(s["parsing_flip.png"]).max() <= 10
    pr = json.loads(s["json"])["priors"]
    assert pr["backend"] == "mtcnn5" and len(pr["checkpoints"]["mtcnn_onet"]["sha256"]) == 64
    with pytest.raises(Exception, match="maps"):
        build_backend(PriorsParams(backend="mtcnn5", kind="features"), tmp_path)
