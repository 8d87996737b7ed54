"""The prior-nets stage: ferpipe's own parser and landmark net, their data, their checkpoints,
and the learned priors' flip convention through the priors stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ferpipe.errors import DataError, MissingCheckpointError
from ferpipe.models import create_model
from ferpipe.priors import PriorNetsParams, PriorsParams, flip_landmarks, priors_stage
from ferpipe.priors.data import JD106_TO_68, lapa_faces, read_lapa_landmarks, synthetic_faces
from ferpipe.priors.nets import LANDMARK_ARCH, PARSER_ARCH, PriorNet, load_prior_net, soft_argmax
from ferpipe.priors.stage import decode_npy, decode_png
from ferpipe.priors.training import METRICS_FILE, confusion, parsing_metrics, prior_nets_stage
from tests.test_priors import _samples, aligned_dir, synth_set  # noqa: F401  (fixtures)

# What the short in-test training must reach on held-out synthetic faces (the full default
# run reaches more; see benchmarks/results and the stage's metrics.json).
MIN_TEST_MIOU = 0.45
MAX_TEST_NME = 0.15


def test_nets_shapes_and_registry():
    x = torch.zeros(2, 3, 112, 112)
    p = create_model(PARSER_ARCH)
    out = p.eval()(x)
    assert out["logits"].shape == (2, 11, 112, 112) and out["features"].shape == (2, 192, 7, 7)
    lm = create_model(LANDMARK_ARCH).eval()(x)
    assert lm["points"].shape == (2, 68, 2) and lm["features"].shape == (2, 192, 7, 7)
    assert PriorNet("parser", input_size=96).eval()(torch.zeros(1, 3, 96, 96))["features"].shape[-1] == 7


def test_soft_argmax_finds_the_peak():
    h = torch.full((1, 1, 28, 28), -50.0)
    h[0, 0, 7, 21] = 50.0
    u = soft_argmax(h)[0, 0]
    assert abs(float(u[0]) - 21.5 / 28) < 1e-4 and abs(float(u[1]) - 7.5 / 28) < 1e-4


def test_miou_metric():
    t = np.zeros((4, 4), np.uint8)
    t[:2] = 1
    m = parsing_metrics(confusion(t.copy(), t))
    assert m["miou"] == 1.0 and m["iou"]["left_eye"] is None
    pred = t.copy()
    pred[0, 0] = 0
    assert parsing_metrics(confusion(pred, t))["miou"] < 1.0


def test_missing_prior_net_checkpoint(tmp_path):
    with pytest.raises(MissingCheckpointError, match="parser.pt.*ferpipe prior-nets"):
        load_prior_net(tmp_path / "parser.pt", PARSER_ARCH)


def _write_lapa(root, synth_set, n_train=3, n_test=2):
    archive, gts = synth_set
    import io
    import zipfile

    zf = zipfile.ZipFile(archive)
    names = sorted(gts)
    for split, chunk in (("train", names[:n_train]), ("test", names[n_train:n_train + n_test])):
        for sub in ("images", "labels", "landmarks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for nm in chunk:
            g = gts[nm]
            stem = nm[:-4]
            (root / split / "images" / f"{stem}.jpg").write_bytes(zf.read(f"Image/original/{nm}"))
            Image.fromarray(g.parsing).save(root / split / "labels" / f"{stem}.png")
            p106 = np.zeros((106, 2))
            p106[JD106_TO_68] = g.points68
            rest = np.setdiff1d(np.arange(106), JD106_TO_68)
            p106[rest] = g.points68.mean(0)
            lines = ["106"] + [f"{x:.3f} {y:.3f}" for x, y in p106]
            (root / split / "landmarks" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_lapa_reader(tmp_path, synth_set):  # noqa: F811
    root = _write_lapa(tmp_path / "LaPa", synth_set)
    fs = lapa_faces(root, "train", 224, 0.0, 112, 0, (0.05, 5.0, 0.03))
    assert fs.images.shape == (3, 112, 112, 3) and fs.parsing.shape == (3, 112, 112)
    assert fs.points.shape == (3, 68, 2) and -0.3 < fs.points.min() and fs.points.max() < 1.3
    # the same face through the synthetic path gives the same aligned labels (no jitter)
    _, gts = synth_set
    a = lapa_faces(root, "test", 224, 0.0, 112, 0, (0, 0, 0))
    txt = next((root / "test" / "landmarks").glob("*.txt"))
    txt.write_text("68\n" + "0 0\n" * 68)
    with pytest.raises(DataError, match=f"{txt.name}.*106"):
        read_lapa_landmarks(txt)
    assert a.parsing.max() <= 10


def test_synthetic_alignment_labels_match_points(synth_set):  # noqa: F811
    archive, gts = synth_set
    groundtruth = archive.with_name(archive.name.replace(".zip", ".groundtruth.zip"))
    fs = synthetic_faces(archive, groundtruth, 224, 0.0, 112, 0, (0, 0, 0), "train")
    s = 112
    for img_lab, pts in zip(fs.parsing, fs.points):
        for idx, cls in ((slice(36, 42), 4), (slice(42, 48), 5)):
            cx, cy = np.round(pts[idx].mean(0) * s - 0.5).astype(int)
            assert img_lab[cy, cx] == cls


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short training run: 7 x 24 synthetic faces, 6 epochs (~1-2 min on 2 cores)."""
    out = tmp_path_factory.mktemp("models") / "prior_nets"
    p = PriorNetsParams(synthetic_n_per_class=24, synthetic_test_fraction=0.25, epochs=6,
                        batch_size=16, workers=1)
    report = prior_nets_stage(p, out, log=lambda s: None)
    return out, report


@pytest.mark.slow
def test_prior_nets_learn_parsing_and_landmarks(trained):
    out, report = trained
    m = json.loads((out / METRICS_FILE).read_text())
    assert m["parser"]["miou"] >= MIN_TEST_MIOU, m["parser"]
    assert m["landmarks"]["nme"] <= MAX_TEST_NME, m["landmarks"]
    # real priors degrade under occlusion
    assert m["parser_occluded"]["miou"] < m["parser"]["miou"]
    assert m["landmarks_occluded"]["nme"] > m["landmarks"]["nme"]
    net = load_prior_net(out / "parser.pt", PARSER_ARCH)
    assert not net.training and net.metrics["parser"]["miou"] == m["parser"]["miou"]
    assert "summary" in dir(report) and "mIoU" in report.summary()


@pytest.mark.slow
def test_learned_maps_follow_the_flip_convention(trained, aligned_dir, tmp_path):  # noqa: F811
    out, _ = trained
    p = PriorsParams(kind="maps", backend="ferpipe")
    priors_stage(aligned_dir, tmp_path / "priors", p, out.parent, progress=False)
    errs = []
    for s in _samples(tmp_path / "priors", "train"):
        pts = decode_npy(s["landmarks.npy"])
        w = decode_png(s["parsing.png"]).shape[1]
        for v in (0, 1):  # image-side semantics in both views
            assert pts[v, 36:42, 0].mean() < pts[v, 42:48, 0].mean()
        iod = np.linalg.norm(pts[0, 36] - pts[0, 45])
        errs.append(np.linalg.norm(pts[1] - flip_landmarks(pts[0], w), axis=1).mean() / iod)
        f = decode_png(s["parsing_flip.png"])
        if (f == 4).any() and (f == 5).any():
            assert np.nonzero(f == 4)[1].mean() < np.nonzero(f == 5)[1].mean()
    # view 1 ~ view 0 mirrored with the convention (a learned net is nearly flip-equivariant)
    assert np.median(errs) < 0.1, errs


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    p = PriorNetsParams(synthetic_n_per_class=3, synthetic_test_fraction=0.34, epochs=1,
                        batch_size=4, workers=1)
    a = prior_nets_stage(p, tmp_path / "a", log=lambda s: None)
    b = prior_nets_stage(p, tmp_path / "b", log=lambda s: None)
    assert a.metrics == b.metrics
    sa = torch.load(tmp_path / "a" / "landmarks.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b" / "landmarks.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pixel_confusion_and_miou_match_a_direct_count():
    """The parser's confusion (scikit-learn) equals counting (truth, prediction) pixel pairs,
    also with classes absent from the truth or never predicted; mIoU averages only the classes
    present in the truth."""
    rng = np.random.default_rng(3)
    n = 11
    for hi_true, hi_pred in ((n, n), (6, n), (n, 4)):
        t = rng.integers(0, hi_true, (5, 24, 24)).astype(np.uint8)
        p = rng.integers(0, hi_pred, (5, 24, 24)).astype(np.uint8)
        want = np.zeros((n, n), np.int64)
        np.add.at(want, (t.ravel().astype(int), p.ravel().astype(int)), 1)
        got = confusion(p, t)
        assert got.dtype == np.int64 and (got == want).all()
        m = parsing_metrics(got)
        present = [c for c in range(n) if (t == c).any()]
        ious = [((t == c) & (p == c)).sum() / ((t == c) | (p == c)).sum() for c in present]
        assert m["miou"] == pytest.approx(float(np.mean(ious)), abs=1e-12)
        assert sum(v is not None for v in m["iou"].values()) == len(present)
        assert m["pixel_accuracy"] == pytest.approx(float((t == p).mean()), abs=1e-12)
