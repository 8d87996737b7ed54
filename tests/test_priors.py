"""The priors stage: shapes, dtypes, flip views, flip convention, determinism, resume,
missing checkpoints, the official backends (random weights in the official containers), and
the insightface backend with a tiny exported ONNX model (no real insightface model pack is
available offline, so the real 2d106det semantics are not exercised here)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferpipe import shards

from tests._gt_shards import write_gt_aligned
from ferpipe.errors import ConfigError, MissingCheckpointError
from ferpipe.priors import (
    IBUG68_FLIP,
    LAPA_FLIP,
    PriorsParams,
    build_backend,
    flip_landmarks,
    flip_parsing,
    parsing_from_68,
    plan_priors,
    priors_gallery,
    priors_shard,
    priors_stage,
)
from ferpipe.priors.nets import PriorNet, save_prior_net
from ferpipe.priors.stage import decode_npy, decode_png

ALIGNED = 160


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory):
    from ferpipe.sources.synthetic import load_ground_truth, render_archive

    d = tmp_path_factory.mktemp("synth")
    res = render_archive(d, n_per_class=2, size=192, seed=7, workers=1, progress=False)
    return res.archive, load_ground_truth(res.groundtruth)


def write_aligned(out_dir: Path, archive: Path, gts: dict, size: int = ALIGNED, per_shard: int = 4):
    """Aligned shards (train / test) on the ground-truth points (no MTCNN: these tests are about priors)."""
    rows = [{"key": nm[:-4], "split": g.split, "name": nm} for nm, g in sorted(gts.items())]
    return write_gt_aligned(out_dir, archive, gts, rows, ["train", "test"], size, per_shard)


@pytest.fixture(scope="session")
def aligned_dir(tmp_path_factory, synth_set):
    return write_aligned(tmp_path_factory.mktemp("aligned") / "synthetic", *synth_set)


@pytest.fixture(scope="session")
def random_prior_nets(tmp_path_factory):
    """parser.pt / landmarks.pt with seeded random weights (shapes and plumbing only)."""
    models = tmp_path_factory.mktemp("models")
    for task, name in (("parser", "parser.pt"), ("landmarks", "landmarks.pt")):
        torch.manual_seed(0)
        save_prior_net(PriorNet(task), models / "prior_nets" / name, {}, {})
    return models


@pytest.fixture(scope="session")
def official_models(tmp_path_factory):
    """MobileFaceNet and SegFace with random weights, saved in the official containers:
    {'state_dict'} (.pth.tar) and {epoch, iteration, state_dict_backbone, ...} (model_299.pt)."""
    from ferpipe.models import create_model

    d = tmp_path_factory.mktemp("official")
    (d / "pretrain").mkdir()
    torch.manual_seed(1)
    mfn = create_model("mobilefacenet").eval()
    # BN running stats of a fresh net make every activation ~equal: give them spread.
    for m in mfn.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.1, 0.1)
    torch.save({"epoch": 1, "state_dict": mfn.state_dict()}, d / "pretrain" / "mobilefacenet_model_best.pth.tar")
    seg = create_model("segface_swin_b_lapa")
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in seg.state_dict().items()}
    torch.save({"epoch": 299, "iteration": 0, "state_dict_backbone": sd, "optimizer": {},
                "scheduler": {}}, d / "pretrain" / "model_299.pt")
    return d


def _samples(out_dir: Path, split: str = "train") -> list[dict]:
    out = []
    for url in shards.shard_urls(out_dir, split):
        cur = None
        for name, data in shards.iter_tar_members(url):
            k, ext = name.split(".", 1)
            if cur is None or cur["__key__"] != k:
                cur = {"__key__": k}
                out.append(cur)
            cur[ext] = data
    return out


def _differs(a: np.ndarray, b: np.ndarray, rel: float = 0.05) -> bool:
    a, b = a.astype(np.float32), b.astype(np.float32)
    return float(np.abs(a - b).max()) > rel * float(np.abs(a).max())


def _tree_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())
            if p.suffix == ".tar" or p.name.endswith("_index.json") or p.name == "index.json"}


# --------------------------------------------------------------------------------------------
# conventions


def test_flip_permutation_is_an_involution():
    assert (IBUG68_FLIP[IBUG68_FLIP] == np.arange(68)).all()
    assert (LAPA_FLIP[LAPA_FLIP] == np.arange(11)).all()
    assert IBUG68_FLIP[36] == 45 and IBUG68_FLIP[48] == 54 and IBUG68_FLIP[30] == 30


def test_flip_convention_on_ground_truth(synth_set):
    """Mirrored ground truth keeps image-side semantics: class 4 and points 36-41 are the eye on
    the image's left of the flipped image, and points still land on their own classes."""
    _, gts = synth_set
    g = next(iter(gts.values()))
    par, pts = g.parsing, g.points68.astype(np.float64)
    w = par.shape[1]
    fpar, fpts = flip_parsing(par), flip_landmarks(pts, w)
    assert (flip_parsing(fpar) == par).all()
    np.testing.assert_allclose(flip_landmarks(fpts, w), pts)
    for m, p in ((par, pts), (fpar, fpts)):
        xl = np.nonzero(m == 4)[1].mean()
        xr = np.nonzero(m == 5)[1].mean()
        assert xl < xr
        assert p[36:42, 0].mean() < p[42:48, 0].mean()
        # eye centres fall in their own eye class
        for idx, cls in ((slice(36, 42), 4), (slice(42, 48), 5)):
            cx, cy = np.round(p[idx].mean(0)).astype(int)
            assert m[cy, cx] == cls


def test_parsing_from_68_regions(synth_set):
    _, gts = synth_set
    g = next(iter(gts.values()))
    m = parsing_from_68(g.points68, g.parsing.shape)
    assert m.dtype == np.uint8 and m.shape == g.parsing.shape
    assert set(np.unique(m)) >= {0, 1, 2, 3, 4, 5, 6, 7, 9}
    inter = ((m > 0) & (g.parsing > 0)).sum() / max(((m > 0) | (g.parsing > 0)).sum(), 1)
    assert inter > 0.6  # the face region from landmarks overlaps the true face


# --------------------------------------------------------------------------------------------
# features / maps with ferpipe nets (random weights: plumbing, shapes, determinism)


def test_plan_mirrors_aligned_shards(aligned_dir):
    plans = plan_priors(aligned_dir)
    assert list(plans) == ["train", "test"]
    idx = shards.read_index(aligned_dir, "train")
    assert [s.name + ".tar" for s in plans["train"]] == [e["name"] for e in idx["shards"]]
    assert sum(len(s) for s in plans["train"]) == idx["totals"]["samples"]


def test_features_shapes_dtypes_and_flip_views(aligned_dir, random_prior_nets, tmp_path):
    # batch 1: the re-computation below must see the same batch composition (oneDNN's
    # results differ in the last bits between batch sizes)
    p = PriorsParams(kind="features", backend="ferpipe", batch_size=1)
    rep = priors_stage(aligned_dir, tmp_path / "out", p, random_prior_nets, progress=False)
    assert rep.splits["train"]["written"] == 7 and rep.splits["test"]["written"] == 7
    samples = _samples(tmp_path / "out")
    aligned = {s["__key__"]: s for s in _samples(aligned_dir)}
    be = build_backend(p, random_prior_nets)
    for s in samples[:2]:
        assert s["jpg"] == aligned[s["__key__"]]["jpg"]  # bytes unchanged
        assert s["cls"] == aligned[s["__key__"]]["cls"]
        lmk, seg = decode_npy(s["lmk.npy"]), decode_npy(s["seg.npy"])
        assert lmk.dtype == np.float16 and lmk.shape == (2, 192, 7, 7)
        assert seg.dtype == np.float16 and seg.shape == (2, 192, 7, 7)
        meta = json.loads(s["json"])
        pr = meta["priors"]
        assert pr["kind"] == "features" and pr["backend"] == "ferpipe"
        assert pr["resize"] == "PIL-bilinear" and pr["normalisation"]["mean"] == [0.485, 0.456, 0.406]
        assert pr["shapes"]["lmk"] == [2, 192, 7, 7] and len(pr["checkpoints"]["parser"]["sha256"]) == 64
        assert meta["key"] == s["__key__"]  # the align json is kept
        # view 1 is computed from the flipped image, not the flipped features
        assert _differs(lmk[1], lmk[0][:, :, ::-1])
        assert _differs(seg[1], seg[0][:, :, ::-1])
        rgb = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
        l1, s1 = be.features([np.ascontiguousarray(rgb[:, ::-1])])
        np.testing.assert_array_equal(l1[0], lmk[1])
        np.testing.assert_array_equal(s1[0], seg[1])


def test_maps_shapes_and_png(aligned_dir, random_prior_nets, tmp_path):
    p = PriorsParams(kind="maps", backend="ferpipe")
    priors_stage(aligned_dir, tmp_path / "out", p, random_prior_nets, progress=False)
    s = _samples(tmp_path / "out", "test")[0]
    pts = decode_npy(s["landmarks.npy"])
    assert pts.dtype == np.float32 and pts.shape == (2, 68, 2)
    for ext in ("parsing.png", "parsing_flip.png"):
        m = decode_png(s[ext])
        assert m.dtype == np.uint8 and m.shape == (ALIGNED, ALIGNED) and m.max() < 11
    md = priors_gallery(tmp_path / "out", "maps", limit=2)
    assert md.count("data:image/jpeg;base64,") == 10


def test_deterministic_and_resumable(aligned_dir, random_prior_nets, tmp_path):
    p = PriorsParams(kind="maps", backend="ferpipe", batch_size=2)
    a = priors_stage(aligned_dir, tmp_path / "a", p, random_prior_nets, progress=False)
    b = priors_stage(aligned_dir, tmp_path / "b", p, random_prior_nets, progress=False)
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    assert a.index_sha256 == b.index_sha256
    again = priors_stage(aligned_dir, tmp_path / "a", p, random_prior_nets, progress=False)
    assert again.shards_resumed == sum(len(v) for v in plan_priors(aligned_dir).values())
    # one shard removed: only it is redone, to the same bytes
    tar = sorted((tmp_path / "a").glob("train-*.tar"))[0]
    before = tar.read_bytes()
    tar.unlink()
    third = priors_stage(aligned_dir, tmp_path / "a", p, random_prior_nets, progress=False)
    assert third.shards_resumed == again.shards_resumed - 1 and tar.read_bytes() == before


def test_one_shard_for_a_flow(aligned_dir, random_prior_nets, tmp_path):
    p = PriorsParams(kind="maps", backend="ferpipe")
    spec = plan_priors(aligned_dir)["test"][0]
    st = priors_shard(spec, aligned_dir, tmp_path, p, random_prior_nets)
    assert st["counts"]["written"] == len(spec) and not st["resumed"]
    assert priors_shard(spec, aligned_dir, tmp_path, p, random_prior_nets)["resumed"]


def test_corrupt_sample_is_skipped_and_listed(aligned_dir, random_prior_nets, tmp_path):
    import shutil

    bad = tmp_path / "aligned"
    shutil.copytree(aligned_dir, bad)
    tar = sorted(bad.glob("test-*.tar"))[0]
    members = list(shards.iter_tar_members(tar))
    first_key = members[0][0].split(".")[0]
    samples, cur = [], None
    for name, data in members:
        k, ext = name.split(".", 1)
        if cur is None or cur["__key__"] != k:
            cur = {"__key__": k}
            samples.append(cur)
        cur[ext] = b"not a jpeg" if (k == first_key and ext == "jpg") else data
    shards.write_tar(tar, samples)
    rep = priors_stage(bad, tmp_path / "out", PriorsParams(), random_prior_nets, progress=False)
    assert rep.skipped_by_reason == {"corrupt_sample": 1}
    assert rep.failures[0]["key"] == first_key


# --------------------------------------------------------------------------------------------
# missing checkpoints


def test_missing_checkpoints_are_clear(aligned_dir, tmp_path):
    with pytest.raises(MissingCheckpointError, match="mobilefacenet_model_best.pth.tar.*MobileFaceNet"):
        build_backend(PriorsParams(kind="features", backend="official"), tmp_path)
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "mobilefacenet_model_best.pth.tar").write_bytes(b"")
    with pytest.raises(MissingCheckpointError, match="model_299.pt.*SegFace"):
        build_backend(PriorsParams(kind="features", backend="official"), tmp_path)
    with pytest.raises(MissingCheckpointError, match="parser.pt.*ferpipe prior-nets"):
        priors_stage(aligned_dir, tmp_path / "out", PriorsParams(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="insightface_dir"):
        build_backend(PriorsParams(backend="insightface"), tmp_path)
    with pytest.raises(MissingCheckpointError, match="2d106det.onnx"):
        build_backend(PriorsParams(backend="insightface", insightface_dir=str(tmp_path)), tmp_path)
    with pytest.raises(ConfigError, match="maps"):
        build_backend(PriorsParams(kind="features", backend="insightface",
                                   insightface_dir=str(tmp_path)), tmp_path)


# --------------------------------------------------------------------------------------------
# official backends, random weights in the official containers


@pytest.fixture(scope="session")
def one_aligned(tmp_path_factory, synth_set):
    """A 1-sample aligned set (Swin-B costs ~1 s per image per view here)."""
    archive, gts = synth_set
    first = dict([sorted((n, g) for n, g in gts.items() if g.split == "train")[0]])
    return write_aligned(tmp_path_factory.mktemp("aligned1") / "synthetic", archive, first)


@pytest.mark.slow
def test_official_features(one_aligned, official_models, tmp_path):
    torch.set_num_threads(2)
    p = PriorsParams(kind="features", backend="official")
    rep = priors_stage(one_aligned, tmp_path / "out", p, official_models, progress=False)
    s = _samples(tmp_path / "out", "train")[0]
    lmk, seg = decode_npy(s["lmk.npy"]), decode_npy(s["seg.npy"])
    assert lmk.shape == (2, 512, 7, 7) and seg.shape == (2, 1024, 7, 7)
    assert lmk.dtype == seg.dtype == np.float16 and np.isfinite(seg.astype(np.float32)).all()
    assert _differs(seg[1], seg[0][:, :, ::-1])
    assert _differs(lmk[1], lmk[0][:, :, ::-1])
    pr = json.loads(s["json"])["priors"]
    assert set(pr["checkpoints"]) == {"mobilefacenet", "segface"}
    assert pr["input_size"] == 224 and pr["models"]["lmk"]["input_size"] == 112
    # exactly what the models give on exactly the documented tensor
    from ferpipe.models import create_model
    from ferpipe.priors import model_input

    rgb = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
    x = model_input([rgb], 224)
    mfn = create_model("mobilefacenet", checkpoint=official_models / "pretrain" /
                       "mobilefacenet_model_best.pth.tar").eval()
    with torch.inference_mode():
        ref = mfn(x[:, :, ::2, ::2])[1].half().numpy()
    np.testing.assert_array_equal(ref[0], lmk[0])


@pytest.mark.slow
def test_official_maps(one_aligned, official_models, tmp_path):
    torch.set_num_threads(2)
    p = PriorsParams(kind="maps", backend="official")
    rep = priors_stage(one_aligned, tmp_path / "out", p, official_models, progress=False)
    s = _samples(tmp_path / "out", "train")[0]
    pts = decode_npy(s["landmarks.npy"])
    assert pts.shape == (2, 68, 2) and pts.dtype == np.float32 and np.isfinite(pts).all()
    m = decode_png(s["parsing.png"])
    assert m.shape == (ALIGNED, ALIGNED) and m.dtype == np.uint8 and m.max() < 11


# --------------------------------------------------------------------------------------------
# insightface backend with a tiny exported ONNX model


def _fake_106(p68: np.ndarray) -> np.ndarray:
    """A 106-point layout in insightface 2d106 groups built from 68 ground-truth points."""
    from ferpipe.priors.insightface106 import GROUPS_2D106, _resample

    def ring(idx, n):
        poly = p68[list(idx) + [idx[0]]]
        return _resample(poly, n + 1)[:-1]

    out = np.zeros((106, 2))
    jaw = _resample(p68[0:17], 33)
    out[GROUPS_2D106["contour"]] = jaw[np.r_[16, 0:16, 17:33]]  # order inside a group is free
    out[GROUPS_2D106["eye_a"]] = ring(list(range(42, 48)), 10)  # the image-right eye first
    out[GROUPS_2D106["eye_b"]] = ring(list(range(36, 42)), 10)
    brow_r = np.concatenate([p68[22:27] - [0, 2], p68[23:27][::-1] + [0, 2]])
    brow_l = np.concatenate([p68[17:22] - [0, 2], p68[18:22][::-1] + [0, 2]])
    out[GROUPS_2D106["brow_a"]] = brow_l
    out[GROUPS_2D106["brow_b"]] = brow_r
    out[GROUPS_2D106["mouth"]] = p68[48:68]
    nose = np.concatenate([p68[27:36], _resample(p68[31:36], 6)])
    out[GROUPS_2D106["nose"]] = nose
    return out


def _export_tiny_2d106(path: Path, p106_img: np.ndarray, size: int) -> None:
    """An ONNX model with 2d106det's signature ('data' [1,3,192,192] -> 'fc1' [1,212]) whose
    output is a fixed face layout (in the crop frame insightface builds from the face box),
    nudged by the input so it is a real function of the image."""
    from insightface.utils import face_align

    _, m = face_align.transform(np.zeros((size, size, 3), np.uint8), (size / 2, size / 2), 192,
                                192 / (size * 1.5), 0)
    crop = p106_img @ m[:, :2].T + m[:, 2]
    q = torch.tensor((crop / 96.0 - 1.0).reshape(1, 212), dtype=torch.float32)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("q", q)
            self.conv = torch.nn.Conv2d(3, 1, 3, stride=8)

        def forward(self, x):
            return self.q + 1e-4 * torch.tanh(self.conv(x).mean(dim=(1, 2, 3))).reshape(-1, 1)

    torch.onnx.export(Tiny().eval(), torch.zeros(1, 3, 192, 192), str(path), input_names=["data"],
                      output_names=["fc1"], dynamo=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_insightface_backend_tiny_onnx(one_aligned, tmp_path):
    s = _samples(one_aligned, "train")[0]
    p68 = np.asarray(json.loads(s["json"])["points68_aligned"])
    pack = tmp_path / "pack"
    pack.mkdir()
    _export_tiny_2d106(pack / "2d106det.onnx", _fake_106(p68), ALIGNED)
    p = PriorsParams(kind="maps", backend="insightface", insightface_dir=str(pack))
    rep = priors_stage(one_aligned, tmp_path / "out", p, tmp_path, progress=False)
    out = _samples(tmp_path / "out", "train")[0]
    pts = decode_npy(out["landmarks.npy"])
    assert pts.shape == (2, 68, 2)
    iod = np.linalg.norm(p68[36] - p68[45])
    # the geometric 106 -> 68 re-derivation lands near the true 68 points
    err = np.linalg.norm(pts[0] - p68, axis=1) / iod
    assert np.median(err) < 0.05 and err[36:48].max() < 0.1, err
    m = decode_png(out["parsing.png"])
    cx, cy = np.round(p68[36:42].mean(0)).astype(int)
    assert m[cy, cx] == 4
    assert json.loads(out["json"])["priors"]["backend"] == "insightface"


# --------------------------------------------------------------------------------------------
# the Prefect flows (params injected: config.py composes the priors sections separately)


def _fake_params(**sections):
    from types import SimpleNamespace

    return SimpleNamespace(download=SimpleNamespace(dataset="synthetic", source="synthetic"), **sections)


def test_priors_flow_publishes_stats_and_gallery(prefect_api, aligned_dir, random_prior_nets,
                                                 tmp_path, monkeypatch):
    import shutil

    import flows.priors as fp
    from tests.test_flow_download import _artifacts_of

    root = tmp_path / "proj"
    shutil.copytree(aligned_dir, root / "data" / "aligned" / "synthetic")
    shutil.copytree(random_prior_nets / "prior_nets", root / "models" / "prior_nets")
    monkeypatch.setattr("flows._common.params_for", lambda path, ov: _fake_params(
        priors=PriorsParams(kind="maps", backend="ferpipe", gallery_size=3)))
    state = fp.priors_flow(params_path="unused", root=str(root), return_state=True)
    assert state.is_completed()
    report = state.result()
    assert report.splits["train"]["written"] == 7
    assert (root / "reports" / "priors" / "synthetic.json").is_file()
    assert (root / "data" / "priors" / "synthetic" / "index.json").is_file()
    arts = _artifacts_of(state.state_details.flow_run_id)
    assert arts["priors-synthetic-shards"].type == "table"
    gallery = arts["priors-synthetic-gallery"]
    assert gallery.type == "markdown" and gallery.data.count("data:image/jpeg;base64,") == 15


@pytest.mark.slow
def test_prior_nets_flow_publishes_metrics(prefect_api, tmp_path, monkeypatch):
    import flows.prior_nets as fpn
    from ferpipe.priors import PriorNetsParams
    from tests.test_flow_download import _artifacts_of

    monkeypatch.setattr("flows._common.params_for", lambda path, ov: _fake_params(
        prior_nets=PriorNetsParams(synthetic_n_per_class=2, synthetic_test_fraction=0.5, epochs=1,
                                   batch_size=4, workers=1)))
    state = fpn.prior_nets_flow(params_path="unused", root=str(tmp_path), return_state=True)
    assert state.is_completed()
    assert (tmp_path / "models" / "prior_nets" / "parser.pt").is_file()
    arts = _artifacts_of(state.state_details.flow_run_id)
    assert "mIoU" in str(arts["prior-nets-metrics"].data)
    assert arts["prior-nets-per-class-iou"].type == "markdown"


# Fields of a report that are this run's timings (they differ between any two runs).
TIMING_FIELDS = ("seconds", "samples_per_second", "items_per_second")


def _without_timings(x):
    if isinstance(x, dict):
        return {k: _without_timings(v) for k, v in x.items() if k not in TIMING_FIELDS}
    if isinstance(x, list):
        return [_without_timings(v) for v in x]
    return x


def test_flow_and_no_flow_write_the_same_report_and_shards(prefect_api, aligned_dir, random_prior_nets,
                                                           tmp_path, monkeypatch):
    """``ferpipe priors`` (the flow: shards as tasks, the report built after) and ``ferpipe priors
    --no-flow`` (the library loop) give the same shards and the same report, timings aside."""
    import shutil

    import flows.priors as fp
    from ferpipe.layout import Layout
    from ferpipe.priors import PRIORS

    root = tmp_path / "proj"
    shutil.copytree(aligned_dir, root / "data" / "aligned" / "synthetic")
    shutil.copytree(random_prior_nets / "prior_nets", root / "models" / "prior_nets")
    params = _fake_params(priors=PriorsParams(kind="maps", backend="ferpipe", gallery_size=0, threads=1))
    monkeypatch.setattr("flows._common.params_for", lambda path, ov: params)
    out_dir, report_path = root / "data" / "priors" / "synthetic", root / "reports" / "priors" / "synthetic.json"

    assert fp.priors_flow(params_path="unused", root=str(root), return_state=True).is_completed()
    by_flow = json.loads(report_path.read_text())
    shards_by_flow = _tree_bytes(out_dir)
    shutil.rmtree(out_dir)
    report_path.unlink()
    PRIORS.run(params, Layout(root))
    by_library = json.loads(report_path.read_text())

    assert _tree_bytes(out_dir) == shards_by_flow
    assert by_flow["prior"]["flip_convention"] and by_flow["prior"]["views"] == ["original", "hflip"]
    assert {"kind", "backend", "coordinates", "checkpoints"} <= set(by_flow["prior"])
    assert _without_timings(by_library) == _without_timings(by_flow)
