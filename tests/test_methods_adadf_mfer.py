"""Ada-DF, MFER and the IR-50 baseline: shapes, release behaviours, losses against hand-computed
values, the LD update, and checkpoint loaders on fake files.

Everything runs on the CPU at 64 px with batches of 4-8 and the tiny MFER variant; the base MFER
is only built on the meta device to count its parameters.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from ferpipe.errors import FerpipeError, MissingCheckpointError
from ferpipe.losses.ada_df import (AdaDFCriterion, fuse_targets, initial_distributions, kl_to_target,
                                   rank_regularization, warmup_alphas)
from ferpipe.losses.criterion import EpochContext, create_criterion, list_criteria
from ferpipe.losses.mfer import MFERCriterion
from ferpipe.models import create_model, list_models
from ferpipe.models.mfer import DSAttention

MANIFESTS = Path(__file__).parent / "data" / "key_manifests"


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _images(b=4, size=64, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered():
    assert {"ada_df", "mfer", "ir50_baseline"} <= set(list_models())
    assert {"ada_df", "mfer"} <= set(list_criteria())
    assert isinstance(create_criterion("ada_df", 7, threshold=0.5, beta=5), AdaDFCriterion)
    assert isinstance(create_criterion("mfer", 7), MFERCriterion)


# -- Ada-DF model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ada_df_model():
    torch.manual_seed(0)
    return create_model("ada_df", num_classes=7)


def test_ada_df_outputs_and_identical_branches(ada_df_model):
    model = ada_df_model.eval()
    with torch.no_grad():
        out = model(_images())
    for k in ("logits", "out1", "out2"):
        assert out[k].shape == (4, 7)
    for k in ("alpha1", "alpha2", "weights"):
        assert out[k].shape == (4, 1)
    assert torch.equal(out["logits"], out["out2"])
    torch.testing.assert_close(out["weights"], (out["alpha1"] + out["alpha2"]) / 2)
    # Same branch weights at init: the unscaled logits agree, only the alpha heads differ.
    b1, b2 = model.branch1.state_dict(), model.branch2.state_dict()
    assert b1.keys() == b2.keys() and all(torch.equal(b1[k], b2[k]) for k in b1)
    assert all(p1 is not p2 for p1, p2 in zip(model.branch1.parameters(), model.branch2.parameters()))
    torch.testing.assert_close(out["out1"] / out["alpha1"], out["out2"] / out["alpha2"])
    assert not torch.equal(model.alpha1.weight, model.alpha2.weight)


def test_ada_df_stem_frozen_but_bn_in_train_mode(ada_df_model):
    model = ada_df_model
    assert all(not p.requires_grad for p in model.stem.parameters())
    others = [p for n, p in model.named_parameters() if not n.startswith("stem.")]
    assert others and all(p.requires_grad for p in others)
    model.train()
    assert model.stem.bn1.training  # as released: running statistics still move
    before = model.stem.bn1.running_mean.clone()
    with torch.no_grad():
        model(_images(seed=1))
    assert not torch.equal(before, model.stem.bn1.running_mean)
    model.eval()
    unfrozen = create_model("ada_df", freeze_stem=False)
    assert all(p.requires_grad for p in unfrozen.parameters())


def test_ada_df_parameter_count():
    with torch.device("meta"):
        model = create_model("ada_df", num_classes=7)
    assert _count(model) == 22_203_728
    assert sum(p.numel() for p in model.stem.parameters()) == 157_504


# -- Ada-DF loss pieces ------------------------------------------------------------------------


def test_warmup_alphas_hand_computed():
    assert warmup_alphas(1, 3) == pytest.approx((math.exp(-4 / 9), 1.0))
    assert warmup_alphas(2, 3) == pytest.approx((math.exp(-1 / 9), 1.0))
    assert warmup_alphas(3, 3) == pytest.approx((1.0, 1.0))
    assert warmup_alphas(6, 3) == pytest.approx((1.0, math.exp(-0.25)))
    assert warmup_alphas(10, 5) == pytest.approx((1.0, math.exp(-0.25)))
    crit = AdaDFCriterion(7, beta=3)
    crit.set_epoch(4)
    assert crit.alphas() == pytest.approx((1.0, math.exp(-1 / 16)))
    assert AdaDFCriterion(7, alpha=0.3).alphas() == pytest.approx((0.3, 0.7))


def test_rank_regularization_hand_computed():
    # B=8, k=floor(5.6)=5: high {.9,.8,.7,.6,.5} mean .7, low {.3,.2,.1} mean .2 -> margin met.
    w = torch.tensor([0.9, 0.8, 0.5, 0.1, 0.3, 0.6, 0.7, 0.2])[:, None]
    assert rank_regularization(w, 0.7, 0.07).item() == 0.0
    # B=4, k=2: high mean .525, low mean .505 -> .07 - .02 = .05.
    w = torch.tensor([0.50, 0.53, 0.51, 0.52])[:, None]
    assert rank_regularization(w, 0.7, 0.07).item() == pytest.approx(0.05, abs=1e-6)
    # The release's configured size on a bigger (ten-crop) batch: k=int(4*.7)=2 top, 2 bottom of 6.
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.45, 0.5])[:, None]
    assert rank_regularization(w, 0.7, 0.4, batch_size=4).item() == pytest.approx(0.4 - (0.475 - 0.15))
    with pytest.raises(ValueError, match="drop_last"):
        rank_regularization(w, 0.7, 0.07, batch_size=8)


def _fusion_case():
    ld = initial_distributions(3, 0.7)  # diag .7, off .15
    out1 = torch.zeros(3, 3, requires_grad=True)  # softmax: 1/3 each
    weights = torch.tensor([[0.1], [0.3], [0.5]])  # min-max to [.2, 1]: .2, .6, 1.0
    target = torch.tensor([0, 2, 1])
    expected = torch.tensor([
        [0.8 / 3 + 0.2 * 0.7, 0.8 / 3 + 0.2 * 0.15, 0.8 / 3 + 0.2 * 0.15],
        [0.4 / 3 + 0.6 * 0.15, 0.4 / 3 + 0.6 * 0.15, 0.4 / 3 + 0.6 * 0.7],
        [0.15, 0.7, 0.15],
    ])
    return ld, out1, weights, target, expected


def test_initial_distributions_rows_sum_to_one():
    ld = initial_distributions(7, 0.7)
    torch.testing.assert_close(ld.sum(1), torch.ones(7))
    assert ld[2, 2].item() == pytest.approx(0.7) and ld[2, 3].item() == pytest.approx(0.05)


def test_fused_target_and_kl_hand_computed():
    ld, out1, weights, target, expected = _fusion_case()
    t = fuse_targets(out1, weights, ld, target, min_weight=0.2, max_weight=1.0)
    torch.testing.assert_close(t, expected)
    out2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    logq = [[1 - math.log(math.e + 2), -math.log(math.e + 2), -math.log(math.e + 2)],
            [-math.log(2 + math.e**2), 2 - math.log(2 + math.e**2), -math.log(2 + math.e**2)],
            [-math.log(3)] * 3]
    e = expected.tolist()
    kl = sum(e[i][j] * (math.log(e[i][j]) - logq[i][j]) for i in range(3) for j in range(3)) / 3
    assert kl_to_target(out2, t).item() == pytest.approx(kl, rel=1e-5)
    # softmax(out1) is not detached: the KL also trains branch 1.
    kl_to_target(out2, t).backward()
    assert out1.grad is not None and out1.grad.abs().sum() > 0


def test_ada_df_criterion_total_hand_computed():
    ld, _, weights, target, expected = _fusion_case()
    out1 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    crit = AdaDFCriterion(3, threshold=0.7, beta=3)
    crit.set_epoch(1)
    loss = crit({"out1": out1, "out2": out2, "weights": weights}, target)
    ce = math.log(3)  # uniform out1
    kl = kl_to_target(out2, expected).item()
    rr = max(0.0, 0.07 - (0.4 - 0.1))  # k = int(2.1) = 2: high .5,.3 (mean .4), low .1
    assert loss.item() == pytest.approx(math.exp(-4 / 9) * kl + 1.0 * ce + rr, rel=1e-5)
    crit.set_epoch(6)
    loss = crit({"out1": out1, "out2": out2, "weights": weights}, target)
    assert loss.item() == pytest.approx(kl + math.exp(-0.25) * ce + rr, rel=1e-5)


# -- Ada-DF end of epoch -----------------------------------------------------------------------


class _LogitsAsModel(nn.Module):
    """Returns its input as branch-1 logits, and records the mode it was called in."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return {"out1": x, "logits": x}


def _ctx(model, batches, num_classes=3):
    return EpochContext(epoch=1, model=model, device=torch.device("cpu"), num_classes=num_classes,
                        train_batches=lambda: iter(batches))


def test_end_epoch_updates_ld_with_fixed_fallback():
    # Class 0 confident (mean p0 = .8 >= .7), class 1 unsure (mean p1 < .7), class 2 absent.
    p_conf = torch.tensor([0.8, 0.1, 0.1]).log()
    p_unsure = torch.tensor([0.3, 0.5, 0.2]).log()
    batches = [(torch.stack([p_conf, p_unsure]), (), torch.tensor([0, 1])),
               (torch.stack([p_conf, p_unsure]), (), torch.tensor([0, 1]))]
    model = _LogitsAsModel().train()
    crit = AdaDFCriterion(3, threshold=0.7)
    crit.end_epoch(_ctx(model, batches))
    assert model.modes == [False, False] and model.training  # eval during the pass, restored after
    torch.testing.assert_close(crit.LD[0], torch.tensor([0.8, 0.1, 0.1]))
    torch.testing.assert_close(crit.LD[1], torch.tensor([0.15, 0.7, 0.15]))
    torch.testing.assert_close(crit.LD[2], torch.tensor([0.15, 0.15, 0.7]))
    torch.testing.assert_close(crit.LD.sum(1), torch.ones(3))


def test_end_epoch_release_fallback_rows_sum_to_tau_plus_04():
    batches = [(torch.zeros(2, 7), (), torch.tensor([0, 1]))]  # uniform: every class falls back
    crit = AdaDFCriterion(7, threshold=0.5, fallback_off_diagonal="release")
    model = _LogitsAsModel().eval()
    crit.end_epoch(_ctx(model, batches, 7))
    assert not model.training
    torch.testing.assert_close(crit.LD.sum(1), torch.full((7,), 0.9))
    assert crit.LD[3, 3].item() == pytest.approx(0.5) and crit.LD[3, 0].item() == pytest.approx(0.4 / 6)


def test_end_epoch_flattens_stacked_crops():
    # One sample with two crops [B=1, n=2, 3, 1, 1]; the "pixels" are the crop's logits.
    crops = torch.tensor([[0.1, 0.9, 1e-9], [0.3, 0.7, 1e-9]]).log().reshape(1, 2, 3, 1, 1)

    class _Crops(_LogitsAsModel):
        def forward(self, x):
            assert x.shape == (2, 3, 1, 1)
            return super().forward(x.flatten(1))

    crit = AdaDFCriterion(3, threshold=0.7)
    crit.end_epoch(_ctx(_Crops(), [(crops, (), torch.tensor([1]))]))
    torch.testing.assert_close(crit.LD[1], torch.tensor([0.2, 0.8, 0.0]), atol=1e-6, rtol=0)


def test_ld_is_checkpointed(ada_df_model):
    crit = AdaDFCriterion(7, threshold=0.7)
    assert "LD" in crit.state_dict()
    batches = [(_images(4, seed=s), (), torch.tensor([0, 1, 2, 3])) for s in range(2)]
    ada_df_model.train()
    crit.end_epoch(_ctx(ada_df_model, batches, 7))  # the real model, 2 batches
    assert ada_df_model.training
    assert torch.isfinite(crit.LD).all()
    restored = AdaDFCriterion(7, threshold=0.7)
    restored.load_state_dict(crit.state_dict())
    assert torch.equal(restored.LD, crit.LD)
    ada_df_model.eval()


# -- MFER --------------------------------------------------------------------------------------


def test_mfer_tiny_outputs_and_heads():
    torch.manual_seed(0)
    model = create_model("mfer", variant="tiny", num_classes=7).eval()
    with torch.no_grad():
        out = model(_images())
    assert out["features"].shape == (4, 256)
    assert len(out["head_logits"]) == 3 and all(h.shape == (4, 7) for h in out["head_logits"])
    torch.testing.assert_close(out["logits"], sum(out["head_logits"]))
    assert [h.fc1.in_features for h in model.heads] == [128, 192, 256]
    # The first head only sees the first half of the channels.
    feat = out["features"].clone()
    feat[:, 128:] = 0
    torch.testing.assert_close(model.heads[0](feat), out["head_logits"][0])
    names = [n for n, _ in model.named_modules() if n.endswith("ds_attention")]
    assert names == ["backbone.stages.2.blocks.ds_attention", "backbone.stages.3.blocks.ds_attention"]
    assert create_model("mfer", variant="tiny", ds_attention=False)(_images(2)).keys() == out.keys()


def test_ds_attention_shape_and_formula():
    torch.manual_seed(0)
    attn = DSAttention(16).eval()
    x = torch.randn(2, 16, 5, 6)
    y = attn(x)
    assert y.shape == x.shape
    # Channels-first restatement: LN over channels of GELU(conv(x)), softmax over the 30 positions.
    q = F.layer_norm(F.gelu(attn.query(x)).permute(0, 2, 3, 1), (16,), attn.query_norm.weight,
                     attn.query_norm.bias, attn.query_norm.eps).permute(0, 3, 1, 2)
    xt = x.permute(0, 2, 3, 1)
    k = (attn.key(xt) * xt).permute(0, 3, 1, 2)
    v = attn.value(xt).permute(0, 3, 1, 2)
    s = torch.softmax((q + k).flatten(2), dim=-1).view_as(x)
    torch.testing.assert_close(y, x + s * v)
    assert sum(p.numel() for p in attn.query.parameters()) == 16 * 16 * 49 + 16  # a full conv


def test_mfer_base_parameter_count():
    with torch.device("meta"):
        model = create_model("mfer", variant="base", num_classes=7)
    ds = sum(p.numel() for n, p in model.named_parameters() if ".ds_attention." in n)
    heads = _count(model.heads)
    assert _count(model) == 155_357_013
    assert (_count(model) - ds - heads, ds, heads) == (87_566_464, 65_871_552, 1_918_997)


def _lsce(logits, target, eps):
    logp = F.log_softmax(logits, dim=1)
    nll = -logp[torch.arange(len(target)), target]
    return ((1 - eps) * nll + eps * (-logp.mean(1))).mean()


def test_mfer_criterion_is_sum_of_three_lsce():
    g = torch.Generator().manual_seed(0)
    heads = [torch.randn(5, 7, generator=g) for _ in range(3)]
    target = torch.tensor([0, 3, 6, 2, 2])
    outputs = {"logits": sum(heads), "head_logits": heads, "features": torch.randn(5, 32, generator=g)}
    expected = sum(_lsce(h, target, 0.1) for h in heads)
    torch.testing.assert_close(MFERCriterion(7)(outputs, target), expected)
    # Center loss: 0.5 * mean ||f - c_y||^2, centers are trainable criterion parameters.
    crit = MFERCriterion(7, feature_loss="center", feature_weight=0.001, feat_dim=32)
    assert [n for n, _ in crit.named_parameters()] == ["centers"]
    center = 0.5 * ((outputs["features"] - crit.centers[target]) ** 2).sum(1).mean()
    torch.testing.assert_close(crit(outputs, target), expected + 0.001 * center)
    with pytest.raises(ValueError, match="feat_dim"):
        MFERCriterion(7, feature_loss="center", feat_dim=64)(outputs, target)
    with pytest.raises(ValueError, match="feature_loss"):
        MFERCriterion(7, feature_loss="dsf")


# -- IR-50 baseline ----------------------------------------------------------------------------


def test_ir50_baseline_shapes_and_count():
    model = create_model("ir50_baseline", num_classes=7, widths=(16, 32, 64), units=(1, 1, 1), stem_width=16)
    out = model(_images(2, 64))  # resized to 112 inside, like ORSANet's trunk
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)
    with torch.device("meta"):
        assert _count(create_model("ir50_baseline", num_classes=7)) == 17_613_767


# -- every loss goes down on a fixed batch -----------------------------------------------------


def _descends(model, criterion, x, y, steps=3, lr=1e-3):
    params = [p for p in list(model.parameters()) + list(criterion.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_losses_decrease_on_a_fixed_batch():
    torch.manual_seed(0)
    x, y = _images(8, seed=3), torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    crit = create_criterion("ada_df", 7, threshold=0.7, beta=3)
    crit.set_epoch(2)
    _descends(create_model("ada_df", num_classes=7), crit, x, y)
    _descends(create_model("mfer", variant="tiny", drop_path_rate=0.0), create_criterion("mfer", 7), x, y)
    _descends(create_model("mfer", variant="tiny", drop_path_rate=0.0),
              create_criterion("mfer", 7, feature_loss="center", feat_dim=256), x, y)
    _descends(create_model("ir50_baseline", widths=(16, 32, 64), units=(1, 1, 1), stem_width=16, input_size=56),
              create_criterion("ce", 7), x, y)


# -- checkpoints -------------------------------------------------------------------------------


def _randomised(state, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
            for k, v in state.items()}


def test_ada_df_loads_msceleb_resnet18(tmp_path):
    state = _randomised(timm.create_model("resnet18", pretrained=False).state_dict())
    assert state["fc.weight"].shape == (1000, 512)
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = create_model("ada_df", num_classes=7, checkpoint=str(path))
    assert model.load_report.loaded == len(state)
    assert torch.equal(model.stem.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.stem.layer1[0].bn1.running_var, state["layer1.0.bn1.running_var"])
    for branch in (model.branch1, model.branch2):
        assert torch.equal(branch.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
        assert branch.fc.weight.shape == (7, 512)
    assert all(not p.requires_grad for p in model.stem.parameters())

    del state["layer3.0.conv1.weight"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(FerpipeError, match="missing keys"):
        create_model("ada_df", checkpoint=str(path))
    with pytest.raises(MissingCheckpointError, match="resnet18_msceleb.pth") as err:
        create_model("ada_df", checkpoint=str(tmp_path / "pretrain" / "resnet18_msceleb.pth"))
    assert "MS-Celeb" in str(err.value) and "models/pretrain/" in str(err.value)


def _facebook_names(timm_state):
    """timm ConvNeXt keys -> the facebookresearch release's names (the inverse of timm's remap)."""
    out = {}
    for k, v in timm_state.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.norm.", "norm.")
        out[k] = v
    return out


def test_mfer_loads_imagenet_convnext(tmp_path):
    plain = timm.models.convnext.ConvNeXt(num_classes=1000, dims=(32, 64, 128, 256), depths=(1, 1, 2, 1))
    state = _randomised(plain.state_dict())
    fb = _facebook_names({k.replace("head.fc.", "head."): v for k, v in state.items()})
    assert "downsample_layers.0.0.weight" in fb and "stages.2.1.dwconv.weight" in fb and "head.weight" in fb
    path = tmp_path / "convnext_fb.pth"
    torch.save({"model": fb}, path)
    model = create_model("mfer", variant="tiny", checkpoint=str(path))
    report = model.load_report
    backbone = model.backbone.state_dict()
    for k in ("stem.0.weight", "stages.2.blocks.1.mlp.fc2.weight", "stages.3.blocks.0.gamma", "head.norm.bias"):
        assert torch.equal(backbone[k], state[k]), k
    assert report.loaded == len(state) - 2  # all but the ImageNet classifier
    assert sorted(report.unexpected) == ["head.fc.bias", "head.fc.weight"]
    assert report.missing and all(".ds_attention." in k or k.startswith("heads.") for k in report.missing)
    assert any(k.startswith("heads.") for k in report.missing)

    # timm's own layout, bare, loads too.
    torch.save(state, tmp_path / "convnext_timm.pth")
    model = create_model("mfer", variant="tiny", checkpoint=str(tmp_path / "convnext_timm.pth"))
    assert torch.equal(model.backbone.state_dict()["stages.1.blocks.0.conv_dw.weight"],
                       state["stages.1.blocks.0.conv_dw.weight"])

    with pytest.raises(FerpipeError, match="does not fit"):
        create_model("mfer", variant="tiny", dims=(32, 64, 128, 512), checkpoint=str(path))
    with pytest.raises(FerpipeError, match="does not fit"):
        create_model("mfer", variant="tiny", depths=(1, 1, 3, 1), checkpoint=str(path))
    with pytest.raises(MissingCheckpointError, match="convnext_base_22k_224.pth"):
        create_model("mfer", variant="tiny", checkpoint=str(tmp_path / "convnext_base_22k_224.pth"))


def test_ir50_baseline_loads_poster_ir50(tmp_path):
    keys = json.loads((MANIFESTS / "ir50.json").read_text())["keys"]
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randint(0, 9, s, generator=g) if k.endswith("num_batches_tracked")
                 else torch.rand(s, generator=g) + 0.5) for k, s in keys.items()}
    path = tmp_path / "ir50.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = create_model("ir50_baseline", num_classes=7, checkpoint=str(path))
    report = model.load_report
    assert report.loaded == len(state) - 12  # the unused output_layer (12 tensors) is not built
    assert all(k.startswith("output_layer.") for k in report.skipped_shape)
    assert torch.equal(model.backbone.body[20].res_layer[1].weight, state["body.20.res_layer.1.weight"])
    with pytest.raises(MissingCheckpointError, match="ir50.pth"):
        create_model("ir50_baseline", checkpoint=str(tmp_path / "missing" / "ir50.pth"))
