"""Model zoo: registry, official key layouts and load rules, output shapes, ORSANet modes.

State dicts are built from the key manifests of the official checkpoints (tests/data/
key_manifests, copied from shared/reference/key-manifests): random tensors of the listed
shapes, int64 for num_batches_tracked and Swin's relative_position_index. The Swin-B models are
built once per module and run at batch 1 under no_grad to keep the suite fast on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ferpipe.errors import ConfigError, FerpipeError, MissingCheckpointError
from ferpipe.models import create_model, list_models
from ferpipe.models._checkpoint import load_segface
from ferpipe.models.orsanet import count_trainable, tokenize_ir_map

MANIFESTS = Path(__file__).parent / "data" / "key_manifests"
ORSANET_LARGE_TRAINABLE = 60_289_575


pytestmark = pytest.mark.usefixtures("one_thread_module")


def manifest(name: str) -> dict[str, list[int]]:
    return json.loads((MANIFESTS / f"{name}.json").read_text())["keys"]


def random_state(keys: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the manifest's shapes; int64 where the checkpoint stores integers."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
        elif k.endswith("relative_position_index"):
            out[k] = torch.randint(0, 169, shape, generator=g, dtype=torch.int64)  # rows of a 13x13 table
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(shape, generator=g)
        else:
            out[k] = 0.02 * torch.randn(shape, generator=g)
    return out


def assert_layout(model: torch.nn.Module, keys: dict[str, list[int]]):
    sd = model.state_dict()
    assert sorted(sd) == sorted(keys)
    assert {k: list(v.shape) for k, v in sd.items()} == keys


def _image(b=1, size=224, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- registry ----------------------------------------------------------------------------------


def test_registry_lists_models_and_rejects_unknown():
    names = list_models()
    for n in ("ir50", "mobilefacenet", "segface_swin_b_lapa", "orsanet", "orsanet_small", "orsanet_large"):
        assert n in names
    assert list_models("orsanet_*") == ["orsanet_base", "orsanet_large", "orsanet_small"]
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("no_such_net")
    with pytest.raises(ConfigError, match="variant"):
        create_model("orsanet", variant="huge", priors="features")
    with pytest.raises(ConfigError, match="priors"):
        create_model("orsanet", variant="small", priors="pixels")


def test_missing_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "models" / "pretrain" / "mobilefacenet_model_best.pth.tar"
    with pytest.raises(MissingCheckpointError, match="mobilefacenet_model_best") as err:
        create_model("mobilefacenet", checkpoint=path)
    assert err.value.path == str(path)
    assert "MobileFaceNet" in str(err.value)
    with pytest.raises(MissingCheckpointError):
        create_model("orsanet", variant="small", priors="features", checkpoint=tmp_path / "nope.pth")


# -- IR-50 -------------------------------------------------------------------------------------


def test_ir50_shape_matched_load_counts_304(tmp_path):
    keys = manifest("ir50")
    state = random_state(keys, seed=1)
    extra = {"body.21.res_layer.1.weight": torch.zeros(512, 256, 3, 3)}  # fourth stage: dropped
    path = tmp_path / "ir50.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in {**state, **extra}.items()}}, path)
    model = create_model("ir50", checkpoint=path)
    assert_layout(model, keys)
    report = model.load_report
    assert report.loaded == 304 and report.skipped_shape == ["body.21.res_layer.1.weight"]
    assert torch.equal(model.state_dict()["body.20.res_layer.3.weight"], state["body.20.res_layer.3.weight"])
    model.eval()
    with torch.no_grad():
        out = model(_image(2))
    assert out.shape == (2, 256, 14, 14) and out.dtype == torch.float32


# -- MobileFaceNet -----------------------------------------------------------------------------


def test_mobilefacenet_strict_load_and_outputs(tmp_path):
    keys = manifest("mobilefacenet")
    path = tmp_path / "mobilefacenet_model_best.pth.tar"
    torch.save({"epoch": 3, "state_dict": random_state(keys, seed=2)}, path)
    model = create_model("mobilefacenet", checkpoint=path)
    assert_layout(model, keys)
    assert model.load_report.loaded == len(keys) == 333
    model.eval()
    with torch.no_grad():
        lmk, feats = model(_image(2, 112))
    assert lmk.shape == (2, 136) and feats.shape == (2, 512, 7, 7)
    assert lmk.dtype == feats.dtype == torch.float32

    bad = random_state(keys)
    bad.pop("conv_6_sep.prelu.weight")
    torch.save({"state_dict": bad}, path)
    with pytest.raises(FerpipeError, match="missing"):
        create_model("mobilefacenet", checkpoint=path)


# -- SegFace -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segface():
    keys = manifest("segface_swin_base_lapa")
    ckpt = {"epoch": 299, "state_dict_backbone": random_state(keys, seed=3)}
    model = create_model("segface_swin_b_lapa", checkpoint=ckpt).eval()
    return model, keys


def test_segface_strict_load_from_state_dict_backbone(segface):
    model, keys = segface
    assert_layout(model, keys)
    assert model.load_report.loaded == 466
    with pytest.raises(FerpipeError, match="state_dict_backbone"):
        load_segface(model, {"epoch": 1, "optimizer": {"lr": 1}})


def test_segface_stage4_and_logits(segface):
    model, _ = segface
    x = _image(1)
    with torch.no_grad():
        out = model(x)
        stage4 = model.stage4(x)
    assert out.features.shape == (1, 1024, 7, 7) and out.features.dtype == torch.float32
    assert out.logits.shape == (1, 11, 224, 224) and out.logits.dtype == torch.float32
    assert torch.equal(stage4, out.features)
    assert torch.isfinite(out.logits).all()


# -- ORSANet -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orsanet_online():
    """ORSANet large, 7 classes, online priors, loaded from an official-format container."""
    keys = manifest("orsanet_large_7classes")
    state = random_state(keys, seed=4)
    ckpt = {"iter": 10, "model_state_dict": {"module." + k: v for k, v in state.items()},
            "optimizer_state_dict": {}}
    model = create_model("orsanet", variant="large", num_classes=7, priors="online", checkpoint=ckpt)
    return model.eval(), keys, ckpt


def test_orsanet_large_layout_equals_official_manifest(orsanet_online):
    model, keys, _ = orsanet_online
    assert_layout(model, keys)
    assert model.load_reports["orsanet"].loaded == 1533


def test_orsanet_large_trainable_parameter_count(orsanet_online):
    model, _, _ = orsanet_online
    assert count_trainable(model) == ORSANET_LARGE_TRAINABLE
    assert not any(p.requires_grad for p in model.face_landback.parameters())
    assert not any(p.requires_grad for p in model.face_segment.parameters())


def test_orsanet_frozen_priors_follow_train_mode_by_default(orsanet_online):
    model, _, _ = orsanet_online
    try:
        model.train()
        assert model.face_landback.training and model.face_segment.training  # as released
        model.frozen_priors_train_mode = False
        model.train()
        assert model.ir_back.training
        assert not model.face_landback.training and not model.face_segment.training
    finally:
        model.frozen_priors_train_mode = True
        model.eval()


def test_orsanet_online_and_features_modes_agree(orsanet_online):
    """priors='features' fed the frozen nets' outputs reproduces priors='online' exactly."""
    online, _, ckpt = orsanet_online
    x = _image(1, seed=5)
    with torch.no_grad():
        logits = online(x)
        lmk, seg = online.compute_priors(x)
    assert logits.shape == (1, 7) and logits.dtype == torch.float32
    assert lmk.shape == (1, 512, 7, 7) and seg.shape == (1, 1024, 7, 7)

    feats_model = create_model("orsanet", variant="large", priors="features", checkpoint=ckpt).eval()
    report = feats_model.load_reports["orsanet"]
    assert len(report.unexpected) == 333 + 466  # the frozen nets' keys, skipped
    with torch.no_grad():
        from_cache = feats_model(x, lmk.half(), seg.half())  # the cache stores fp16
        exact = feats_model(x, lmk, seg)
        as_tokens = feats_model(x, lmk.flatten(2).transpose(1, 2), seg)
    assert from_cache.shape == (1, 7)
    assert torch.allclose(exact, logits, atol=1e-5)
    assert torch.allclose(as_tokens, logits, atol=1e-5)
    assert torch.allclose(from_cache, logits, atol=5e-2)
    with pytest.raises(ValueError, match="needs inputs"):
        feats_model(x)


def test_orsanet_maps_mode_pixel_and_normalised_landmarks():
    torch.manual_seed(0)
    model = create_model("orsanet", variant="small", priors="maps").eval()
    b = 2
    x = _image(b, seed=6)
    g = torch.Generator().manual_seed(7)
    pts = 40 + 140 * torch.rand(b, 68, 2, generator=g)
    parsing = torch.randint(0, 11, (b, 224, 224), generator=g)
    parsing[:, :10] = 255  # "ignore" pixels count as no class
    with torch.no_grad():
        logits = model(x, pts, parsing)
    assert logits.shape == (b, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    norm_model = create_model("orsanet", variant="small", priors="maps", landmark_units="normalized").eval()
    norm_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        same = norm_model(x, pts / 224, parsing)
    assert torch.allclose(same, logits, atol=1e-6)
    # the paper's segmentation encoder: 11 -> 64 s4 -> 128 -> 256 -> 512, 7x7 at 224
    assert model.seg_encoder(parsing).shape == (b, 512, 7, 7)
    assert model.lmk_encoder.heatmaps(pts / 224).shape == (b, 68, 56, 56)


def test_orsanet_maps_and_subnet_checkpoints(orsanet_online, tmp_path):
    """A release checkpoint seeds a maps-mode model; ir50.pth loads into ir_back by shape."""
    _, _, ckpt = orsanet_online
    maps = create_model("orsanet", variant="large", priors="maps", checkpoint=ckpt)
    report = maps.load_reports["orsanet"]
    assert "seg_sample.weight" in report.unexpected
    assert any(k.startswith("lmk_encoder.") for k in report.missing)
    assert torch.equal(maps.state_dict()["head.linear.weight"],
                       ckpt["model_state_dict"]["module.head.linear.weight"])

    path = tmp_path / "ir50.pth"
    torch.save(random_state(manifest("ir50"), seed=8), path)
    model = create_model("orsanet", variant="small", priors="features", ir_checkpoint=path)
    assert model.load_reports["ir"].loaded == 304
    small = create_model("orsanet", variant="small", priors="features", lmk_dim=64, seg_dim=96)
    with pytest.raises(FerpipeError, match="does not"):
        small.load_orsanet_checkpoint(ckpt)
    with pytest.raises(ConfigError, match="online"):
        create_model("orsanet", variant="small", priors="features", landmark_checkpoint=path)


@pytest.mark.parametrize("priors", ["features", "maps"])
def test_orsanet_cpu_preset_112_trains(priors):
    """A small CPU variant at 112 input keeps the shape: tokens 7x7, pyramid, SPADE, SE, head."""
    torch.manual_seed(0)
    cfg = dict(img_size=112, embed_dim=128, num_heads=4, ir_widths=(32, 64, 128), ir_units=(1, 1, 2),
               ir_stem_width=32, spade_hidden=32, encoder_widths=(16, 32, 64), depth=2)
    if priors == "features":
        cfg.update(lmk_dim=64, seg_dim=96)
    model = create_model("orsanet", variant="small", num_classes=7, priors=priors, **cfg)
    assert count_trainable(model) < 3_000_000
    b = 2
    x = _image(b, 112)
    if priors == "features":
        inputs = (torch.randn(b, 64, 7, 7), torch.randn(b, 96, 7, 7).half())
    else:
        inputs = (torch.rand(b, 68, 2) * 112, torch.randint(0, 11, (b, 112, 112)))
    logits = model(x, *inputs)
    assert logits.shape == (b, 7)
    logits.sum().backward()
    assert model.ir_layer.weight.grad is not None and model.head.linear.weight.grad is not None


def test_orsanet_flags_change_the_network():
    torch.manual_seed(0)
    base = create_model("orsanet", variant="small", priors="features").eval()
    qp = create_model("orsanet", variant="small", priors="features", query_projection=True)
    assert "pyramid_fuse.blocks.0.block_l.attn_img.q.weight" in qp.state_dict()
    assert "pyramid_fuse.blocks.0.block_l.attn_img.q.weight" not in base.state_dict()
    spatial = create_model("orsanet", variant="small", priors="features", raw_view_tokens=False).eval()
    spatial.load_state_dict(base.state_dict())  # same shapes, different token semantics
    x, lmk, seg = _image(1), torch.randn(1, 512, 7, 7), torch.randn(1, 1024, 7, 7)
    with torch.no_grad():
        assert not torch.allclose(base(x, lmk, seg), spatial(x, lmk, seg))
    tiny = dict(ir_widths=(8, 16, 16), ir_units=(1, 1, 1), embed_dim=32, spade_hidden=8, lmk_dim=8, seg_dim=8)
    assert [len(create_model("orsanet", variant=v, priors="features", **tiny).pyramid_fuse.blocks)
            for v in ("small", "base", "large")] == [4, 6, 8]


def test_tokenize_ir_map_raw_view_and_spatial():
    x = torch.arange(256 * 14 * 14, dtype=torch.float32).reshape(1, 256, 14, 14)
    raw = tokenize_ir_map(x, 7, raw_view=True)
    assert raw.shape == (1, 49, 1024)
    assert torch.equal(raw[0, 1], x.flatten()[1024:2048])  # consecutive memory, not a place
    spatial = tokenize_ir_map(x, 7, raw_view=False)
    assert spatial.shape == (1, 49, 1024)
    t = 3 * 7 + 5  # cell (3, 5): rows 6-7, columns 10-11, all channels
    assert torch.equal(spatial[0, t].sort().values, x[0, :, 6:8, 10:12].flatten().sort().values)
