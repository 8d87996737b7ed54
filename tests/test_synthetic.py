"""The embedded synthetic dataset: layout, ground truth, determinism, detector realism, learnability."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferpipe.sources.synthetic import (
    HARD,
    PARSING_CLASSES,
    five_from_68,
    load_ground_truth,
    main_synth,
    read_labels,
    render_archive,
    render_face,
    sample_scene,
    write_preview,
)

ROOT = Path(__file__).resolve().parents[1]


def _sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_small")
    return render_archive(out, n_per_class=5, size=128, seed=3, workers=1, progress=False)


def test_zip_layout(small):
    with zipfile.ZipFile(small.archive) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert all(zi.date_time == (1980, 1, 1, 0, 0, 0) for zi in zf.infolist())
        label_lines = zf.read("EmoLabel/list_patition_label.txt").decode().splitlines()
        images = sorted(n[len("Image/original/"):] for n in names if n.startswith("Image/original/"))
        listed = [ln.split(" ") for ln in label_lines]
        assert sorted(nm for nm, _ in listed) == images
        assert len(images) == 35
        for nm, lab in listed:
            assert re.fullmatch(r"(train_\d{5}|test_\d{4})\.jpg", nm), nm
            assert 1 <= int(lab) <= 7
            stem = nm[:-4]
            manu = zf.read(f"Annotation/manual/{stem}_manu_attri.txt").decode().splitlines()
            assert len(manu) == 8
            for ln in manu[:5]:
                x, y = ln.split("\t")
                assert 0 <= float(x) <= 128 and 0 <= float(y) <= 128
            assert all(re.fullmatch(r"\d+", ln) for ln in manu[5:])
            with Image.open(io.BytesIO(zf.read("Image/original/" + nm))) as im:
                assert im.size == (128, 128) and im.format == "JPEG"
    # 80/20 per class: 4 train + 1 test for each of the 7 labels
    assert small.counts == {"train": {k: 4 for k in range(1, 8)}, "test": {k: 1 for k in range(1, 8)}}
    assert [nm for nm, _ in read_labels(small.archive)][:2] == ["train_00001.jpg", "train_00002.jpg"]


def test_ground_truth_consistency(small):
    gt = load_ground_truth(small.groundtruth)
    assert len(gt) == 35
    with zipfile.ZipFile(small.archive) as zf:
        manu = {nm: zf.read(f"Annotation/manual/{nm[:-4]}_manu_attri.txt").decode() for nm in gt}
    for nm, g in gt.items():
        x0, y0, x1, y1 = g.box
        p = g.points68
        assert p.shape == (68, 2) and g.points5.shape == (5, 2)
        assert (p[:, 0] >= x0 - 1).all() and (p[:, 0] <= x1 + 1).all()
        assert (p[:, 1] >= y0 - 1).all() and (p[:, 1] <= y1 + 1).all()
        np.testing.assert_allclose(g.points5, five_from_68(p), atol=2e-3)
        # MTCNN order: left eye left of right eye, mouth corners likewise, nose between
        assert g.points5[0, 0] < g.points5[1, 0] and g.points5[3, 0] < g.points5[4, 0]
        m = np.array([[float(v) for v in ln.split("\t")] for ln in manu[nm].splitlines()[:5]])
        np.testing.assert_allclose(m, g.points5, atol=2e-3)
        par = g.parsing
        assert par.shape == (128, 128) and par.max() <= len(PARSING_CLASSES) - 1
        present = set(np.unique(par).tolist())
        assert {0, 1, 2, 3, 4, 5, 6, 7, 9} <= present, (nm, present)
        at = lambda q: int(par[int(round(q[1])), int(round(q[0]))])  # noqa: E731
        assert at(g.points5[0]) == 4 and at(g.points5[1]) == 5  # eye centres lie in the eyes
        assert at(p[30]) == 6  # nose tip in the nose
        # image-left classes are on the image left
        xs = {c: np.nonzero(par == c)[1].mean() for c in (2, 3, 4, 5)}
        assert xs[2] < xs[3] and xs[4] < xs[5]
        # skin dominates inside the box
        bx = par[int(y0):int(y1), int(x0):int(x1)]
        assert (bx == 1).mean() > 0.4
        assert g.scene["label"] == g.label and 0 <= g.intensity <= 1


def test_open_mouth_has_inner_mouth():
    rng = np.random.default_rng(0)
    sc = sample_scene(rng, 1, 256)  # surprise always drops the jaw
    out = render_face(sc, 256)
    assert (out.parsing == 8).sum() > 20


def test_determinism_and_worker_independence(tmp_path, small):
    a = render_archive(tmp_path / "a", n_per_class=5, size=128, seed=3, workers=2, progress=False)
    assert _sha(a.archive) == _sha(small.archive)
    assert _sha(a.groundtruth) == _sha(small.groundtruth)
    b = render_archive(tmp_path / "b", n_per_class=5, size=128, seed=4, workers=1, progress=False)
    assert _sha(b.archive) != _sha(small.archive)


def test_hard_mode_is_harder_in_parameters(tmp_path):
    h = render_archive(tmp_path, n_per_class=2, size=96, seed=0, workers=1, difficulty="hard", name="h",
                       progress=False)
    gt = load_ground_truth(h.groundtruth)
    for g in gt.values():
        assert g.intensity <= HARD.intensity[1] + 1e-6
    with pytest.raises(ValueError):
        render_archive(tmp_path, n_per_class=1, difficulty="nightmare")


def test_preview_and_cli(tmp_path):
    assert main_synth(["--out", str(tmp_path), "--n", "14", "--seed", "1", "--size", "96",
                       "--preview", str(tmp_path / "p.png"), "--workers", "1"]) == 0
    assert (tmp_path / "synthetic_rafdb.zip").exists() and (tmp_path / "synthetic_rafdb.groundtruth.zip").exists()
    with Image.open(tmp_path / "p.png") as im:
        assert im.height == 7 * 112
    write_preview(tmp_path / "synthetic_rafdb.zip", tmp_path / "q.png", per_class=3)
    with Image.open(tmp_path / "q.png") as im:
        assert im.size == (112 + 3 * 112, 7 * 112)


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("synthetic_mtcnn", ROOT / "benchmarks" / "synthetic_mtcnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mtcnn_finds_the_faces(tmp_path):
    """The real detector on 70 default images: >= 95% found, 5-point error median <= 0.10 IOD."""
    pytest.importorskip("facenet_pytorch")
    import torch

    torch.set_num_threads(2)
    res = render_archive(tmp_path, n_per_class=10, size=256, seed=11, workers=2, progress=False)
    bench = _load_benchmark()
    s = bench.summarise(bench.mtcnn_errors(res.archive, res.groundtruth))
    assert s["detection_rate"] >= 0.95, s
    assert s["median_nme_iod"] <= 0.10, s


# --------------------------------------------------------------------------------------------
# learnability: a small CNN on ground-truth-box crops
# --------------------------------------------------------------------------------------------

CROP_PX = 48


def _crops(archive, gt_path, split=None):
    import cv2
    import torch

    gt = load_ground_truth(gt_path)
    xs, ys = [], []
    with zipfile.ZipFile(archive) as zf:
        for nm, lab in read_labels(archive):
            g = gt[nm]
            if split and g.split != split:
                continue
            im = np.asarray(Image.open(io.BytesIO(zf.read("Image/original/" + nm))).convert("RGB"))
            x0, y0, x1, y1 = g.box
            cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 1.1
            k = CROP_PX / s
            m = np.array([[k, 0, CROP_PX / 2 - cx * k], [0, k, CROP_PX / 2 - cy * k]])
            xs.append(cv2.warpAffine(im, m, (CROP_PX, CROP_PX), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE))
            ys.append(lab - 1)
    return torch.tensor(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0, torch.tensor(ys)


def _train_small_cnn(x, y, epochs=30, seed=0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    def blk(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    net = nn.Sequential(blk(3, 16), blk(16, 32), blk(32, 64), blk(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Dropout(0.2), nn.Linear(64, 7))
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    bs = 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=epochs * ((len(x) + bs - 1) // bs))
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5  # expressions are mirror-symmetric
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            sh = torch.randint(-3, 4, (2,), generator=g)
            xb = torch.roll(xb, (int(sh[0]), int(sh[1])), (2, 3))
            loss = nn.functional.cross_entropy(net((xb - mean) / std), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()

    def accuracy(xt, yt):
        with torch.no_grad():
            pred = torch.cat([net((xt[i:i + 256] - mean) / std).argmax(1) for i in range(0, len(xt), 256)])
        return float((pred == yt).float().mean())

    return accuracy


@pytest.mark.slow
def test_learnable_but_not_trivial(tmp_path):
    """Default set (300/class): a small CNN beats chance by far on the default test split and
    stays clearly below 100% on a held-out hard split (figures at LEARN_MIN_TEST below)."""
    import torch

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    a = render_archive(tmp_path, n_per_class=300, seed=0, workers=2, progress=False)
    h = render_archive(tmp_path, n_per_class=60, seed=1, workers=2, difficulty="hard", name="hard", progress=False)
    xtr, ytr = _crops(a.archive, a.groundtruth, "train")
    xte, yte = _crops(a.archive, a.groundtruth, "test")
    xh, yh = _crops(h.archive, h.groundtruth)
    acc = _train_small_cnn(xtr, ytr)
    test_acc, hard_acc = acc(xte, yte), acc(xh, yh)
    print(f"learnability: default test {test_acc:.3f}, hard {hard_acc:.3f}, {time.perf_counter() - t0:.0f}s")
    assert test_acc >= LEARN_MIN_TEST, test_acc
    assert hard_acc <= LEARN_MAX_HARD, hard_acc
    assert hard_acc < test_acc - 0.2


# Measured on this machine (seed 0, 30 epochs, 48 px crops, ~2 CPU minutes): default test 0.81,
# hard 0.31 (chance 0.14). The bounds leave room for BLAS/thread differences elsewhere.
LEARN_MIN_TEST = 0.70
LEARN_MAX_HARD = 0.60
