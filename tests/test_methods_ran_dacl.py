"""RAN, DACL and the ResNet-18 baseline: outputs, losses against hand-computed values, the
released checkpoint layouts, and that each criterion's loss falls on a fixed tiny batch.

Small inputs (32-64 px, batch 4) and one intra-op thread keep it fast on 2 shared cores.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ferpipe.errors import ConfigError, FerpipeError, MissingCheckpointError
from ferpipe.losses import DACLCriterion, RANCriterion, center_update, region_biased_loss, sparse_center_loss
from ferpipe.losses.criterion import Criterion, create_criterion
from ferpipe.models import create_model
from ferpipe.models.ran import REGION_SETS, crop_regions
from ferpipe.models.resnet18 import load_resnet18_weights, trunk_output_size


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _build(name, seed=0, **kw):
    torch.manual_seed(seed)
    return create_model(name, **kw)


def _trunk_state(model):
    return {k: v for k, v in model.state_dict().items() if k.split(".")[0] in
            ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")}


# --- models -----------------------------------------------------------------------------------------


def test_output_shapes():
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        out = _build("ran", num_classes=7).eval()(x)
        assert set(out) == {"logits", "alpha"}
        assert out["logits"].shape == (4, 7) and out["alpha"].shape == (4, 8)
        torch.testing.assert_close(out["alpha"].sum(1), torch.ones(4))  # softmax across regions

        out = _build("dacl", num_classes=7, img_size=64).eval()(x)
        assert set(out) == {"logits", "features", "attention"}
        assert out["logits"].shape == (4, 7)
        assert out["features"].shape == (4, 512) and out["attention"].shape == (4, 512)
        assert ((out["attention"] > 0) & (out["attention"] < 1)).all()

        assert _build("resnet18", num_classes=5).eval()(x).shape == (4, 5)


def test_trunk_output_size_and_dacl_attention_input():
    assert [trunk_output_size(s) for s in (224, 112, 64, 32)] == [7, 4, 2, 1]
    assert _build("dacl", img_size=112, attention_hidden=(8, 4)).attention[0].in_features == 8192
    model = _build("dacl", img_size=64, attention_hidden=(8, 4))
    with pytest.raises(ValueError, match="img_size=64"):
        model(torch.rand(2, 3, 112, 112))


def test_dacl_release_init():
    model = _build("dacl", img_size=32)
    for m in (*model.attention, model.attention_heads):
        if isinstance(m, torch.nn.Linear):
            assert (m.bias == 0).all()
            # Kaiming-normal fan_in: std sqrt(2 / fan_in)
            assert abs(m.weight.std().item() / (2 / m.in_features) ** 0.5 - 1) < 0.1


def test_ran_keys_match_release_layout():
    keys = set(_build("ran").state_dict())
    assert {"alpha.0.weight", "alpha.0.bias", "beta.0.weight", "beta.0.bias", "fc.weight", "fc.bias",
            "conv1.weight", "layer4.1.bn2.running_var"} <= keys
    assert _build("ran").fc.in_features == 1024 and _build("ran").beta[0].in_features == 1024


def test_ran_attention_flag_changes_alpha():
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        soft = _build("ran", attention="softmax").eval()
        sig = _build("ran", attention="sigmoid").eval()  # same seed: same weights
        a_soft, a_sig = soft(x)["alpha"], sig(x)["alpha"]
    assert not torch.allclose(a_soft, a_sig)
    torch.testing.assert_close(a_soft, a_sig.softmax(dim=1))  # release = paper's weights, softmaxed
    assert not torch.allclose(a_sig.sum(1), torch.ones(2))


@pytest.mark.parametrize("attention", ["softmax", "sigmoid"])
def test_ran_forward_matches_formula(attention):
    model = _build("ran", attention=attention).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        f = model.region_features(x)  # [B,K+1,512]
        expected = []
        for b in range(2):
            mu = torch.sigmoid(f[b] @ model.alpha[0].weight.t() + model.alpha[0].bias)[:, 0]
            mu = mu.softmax(0) if attention == "softmax" else mu
            f_m = (mu[:, None] * f[b]).sum(0) / mu.sum()
            cat = torch.cat([f[b], f_m.expand_as(f[b])], dim=1)
            nu = torch.sigmoid(cat @ model.beta[0].weight.t() + model.beta[0].bias)[:, 0]
            nu = nu.softmax(0) if attention == "softmax" else nu
            w = mu * nu
            expected.append(model.fc((w[:, None] * cat).sum(0) / w.sum()))
    torch.testing.assert_close(out["logits"], torch.stack(expected), rtol=1e-4, atol=1e-5)


def test_crop_regions():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    parts = crop_regions(x, [(0.0, 0.0, 0.5, 0.5), (0.25, 0.5, 1.0, 1.0)], mode="nearest")
    assert len(parts) == 3 and all(p.shape == x.shape for p in parts)
    assert parts[-1] is x  # the whole face last
    torch.testing.assert_close(parts[0], x[..., :4, :4].repeat_interleave(2, -1).repeat_interleave(2, -2))
    # int() truncation of the boxes, as the release's PIL crops: 0.25*8 = 2, 0.5*8 = 4
    torch.testing.assert_close(parts[1][..., ::2, :], F.interpolate(x[..., 4:, 2:], size=(4, 8)))
    assert len(REGION_SETS["affectnet"]) == 7


def test_ran_precut_regions_and_fused_trunk_agree():
    model = _build("ran").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)["logits"]
        precut = torch.stack(crop_regions(x, model.boxes), dim=1)  # [B,K+1,3,S,S]
        torch.testing.assert_close(model(precut)["logits"], ref)
        model.fuse_regions = True  # eval BN: batching the regions together changes nothing
        torch.testing.assert_close(model(x)["logits"], ref, rtol=1e-4, atol=1e-5)


def test_bad_model_config():
    with pytest.raises(ConfigError):
        create_model("ran", attention="tanh")
    with pytest.raises(ConfigError):
        create_model("ran", crops="nope")
    with pytest.raises(ConfigError):
        create_model("ran", crops=[(0.5, 0.0, 0.2, 1.0)])


# --- losses -----------------------------------------------------------------------------------------


def test_region_biased_loss_by_hand():
    alpha = torch.tensor([[0.10, 0.30, 0.20, 0.25],   # best region 0.30 beats the face by 0.05 > delta
                          [0.05, 0.10, 0.10, 0.50]])  # 0.02 - (0.10 - 0.50) = 0.42
    assert region_biased_loss(alpha, 0.02).item() == pytest.approx(0.21)
    assert region_biased_loss(alpha, 0.1).item() == pytest.approx((0.05 + 0.5) / 2)


def test_ran_criterion_value():
    crit = create_criterion("ran", num_classes=3, delta=0.02, rb_weight=2.0)
    assert isinstance(crit, RANCriterion) and isinstance(crit, Criterion)
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]])
    alpha = torch.tensor([[0.10, 0.30, 0.20, 0.25], [0.05, 0.10, 0.10, 0.50]])
    y = torch.tensor([0, 2])
    expected = F.cross_entropy(logits, y) + 2.0 * 0.21
    assert crit({"logits": logits, "alpha": alpha}, y).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(TypeError):
        crit(logits, y)


# f, A, y, centers for the hand computations: diffs f - c_y are [1, 2] and [2, -1].
_F = [[1.0, 2.0], [3.0, 0.0]]
_A = [[0.5, 1.0], [1.0, 0.25]]
_Y = [0, 1]
_C = [[0.0, 0.0], [1.0, 1.0]]


def test_sparse_center_loss_value_and_gradients():
    f = torch.tensor(_F, requires_grad=True)
    a = torch.tensor(_A, requires_grad=True)
    loss = sparse_center_loss(f, a, torch.tensor(_Y), torch.tensor(_C))
    # (0.5*1 + 1*4 + 1*4 + 0.25*1) / (2*2)
    assert loss.item() == pytest.approx(8.75 / 4)
    loss.backward()
    diff = torch.tensor([[1.0, 2.0], [2.0, -1.0]])
    torch.testing.assert_close(f.grad, torch.tensor(_A) * diff / 2)  # A (f - c) / B
    torch.testing.assert_close(a.grad, diff.pow(2) / 4)  # (f - c)^2 / (2B)


def test_dacl_criterion_value_and_gradients_scale_with_lamb():
    crit = create_criterion("dacl", num_classes=2, feat_dim=2, lamb=0.1)
    crit.centers.copy_(torch.tensor(_C))
    logits = torch.tensor([[0.3, -0.2], [0.1, 0.4]], requires_grad=True)
    f = torch.tensor(_F, requires_grad=True)
    a = torch.tensor(_A, requires_grad=True)
    y = torch.tensor(_Y)
    loss = crit({"logits": logits, "features": f, "attention": a}, y)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item() + 0.1 * 8.75 / 4, rel=1e-6)
    loss.backward()
    diff = torch.tensor([[1.0, 2.0], [2.0, -1.0]])
    torch.testing.assert_close(f.grad, 0.1 * torch.tensor(_A) * diff / 2)
    torch.testing.assert_close(a.grad, 0.1 * diff.pow(2) / 4)
    assert not crit.centers.requires_grad and not list(crit.parameters())


def test_center_update_by_hand():
    # Two samples of class 0, one of class 1, none of class 2 (its center must not move).
    f = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 2.0]])
    a = torch.tensor([[0.5, 1.0], [1.0, 0.25], [1.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    c0 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 3.0]])
    # class 0: (0.5*[1,2]... = [0.5, 2] + [2, 2]) / (1 + 2) * 0.5 = [5/12, 2/3]
    # class 1: [2, -0.25] / (1 + 1) * 0.5 = [0.5, -0.0625] -> [1.5, 0.9375]
    expected = torch.tensor([[5 / 12, 2 / 3], [1.5, 0.9375], [-1.0, 3.0]])
    torch.testing.assert_close(center_update(c0.clone(), f, a, y, alpha=0.5), expected)

    # Through the criterion: forward keeps the batch, after_step applies it once, lamb and 1/B
    # play no part, and a no-grad (evaluation) forward never moves the centers.
    crit = DACLCriterion(num_classes=3, feat_dim=2, lamb=0.01, alpha=0.5)
    crit.centers.copy_(c0)
    out = {"logits": torch.zeros(3, 3, requires_grad=True), "features": f, "attention": a}
    crit(out, y)
    torch.testing.assert_close(crit.centers, c0)  # not before the optimiser step
    crit.after_step()
    torch.testing.assert_close(crit.centers, expected)
    crit.after_step()
    torch.testing.assert_close(crit.centers, expected)
    with torch.no_grad():
        crit(out, y)
    crit.after_step()
    torch.testing.assert_close(crit.centers, expected)


def test_dacl_centers_init_and_state():
    a, b, c = DACLCriterion(7, seed=0), DACLCriterion(7, seed=0), DACLCriterion(7, seed=1)
    assert a.centers.shape == (7, 512)
    torch.testing.assert_close(a.centers, b.centers)
    assert not torch.equal(a.centers, c.centers)
    # Kaiming-normal on the [512, 7] view: fan_in 7, std sqrt(2/7)
    assert abs(a.centers.std().item() / (2 / 7) ** 0.5 - 1) < 0.05
    assert "centers" in a.state_dict()
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.centers, a.centers)


def test_create_criterion_names():
    import ferpipe.losses  # noqa: F401  (registration happens on import)

    assert isinstance(create_criterion("ran", num_classes=7), RANCriterion)
    crit = create_criterion("dacl", num_classes=7)
    assert isinstance(crit, DACLCriterion) and crit.lamb == 0.01 and crit.alpha == 0.5
    with pytest.raises(ConfigError):
        create_criterion("dacl", num_classes=7, bogus=1)


# --- checkpoints ------------------------------------------------------------------------------------


def _random_resnet18_state(seed=0, num_classes=1000):
    g = torch.Generator().manual_seed(seed)
    state = torchvision.models.resnet18(weights=None, num_classes=num_classes).state_dict()
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            out[k] = torch.rand(v.shape, generator=g) + (0.5 if k.endswith("running_var") else -0.5)
        else:
            out[k] = torch.randint(0, 1000, v.shape, generator=g)
    return out


def _assert_trunk_equal(model, state):
    own = _trunk_state(model)
    assert own and set(own) == {k for k in state if not k.startswith("fc.")}
    for k, v in own.items():
        torch.testing.assert_close(v, state[k], msg=k)


def test_load_ran_layout(tmp_path):
    state = _random_resnet18_state(num_classes=8)  # the naive model's own head: dropped
    path = tmp_path / "ijba_res18_naive.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 30}, path)

    fresh = _build("ran", seed=3)
    model = _build("ran", seed=3, checkpoint=str(path))
    _assert_trunk_equal(model, state)
    for k in ("fc.weight", "alpha.0.weight", "beta.0.bias"):  # heads start fresh
        torch.testing.assert_close(model.state_dict()[k], fresh.state_dict()[k])
    report = model.load_report
    assert report.loaded == len(state) - 2 and report.missing == [] and report.unexpected == []


def test_load_reports_missing_and_unexpected(tmp_path):
    state = {f"module.{k}": v for k, v in _random_resnet18_state().items()
             if not k.startswith("layer4.1.")}
    state["module.feature.weight"] = torch.zeros(3)
    path = tmp_path / "ijba.pth.tar"
    torch.save({"state_dict": state}, path)
    report = load_resnet18_weights(_build("resnet18"), path, layout="ran")
    assert report.unexpected == ["feature.weight"]
    assert report.missing and all(k.startswith("layer4.1.") for k in report.missing)
    assert not any(k.endswith("num_batches_tracked") for k in report.missing)


@pytest.mark.parametrize("with_fc", [True, False])
def test_load_dacl_layout(tmp_path, with_fc):
    state = _random_resnet18_state(seed=1)
    if not with_fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": state}, path)
    model = _build("dacl", num_classes=7, img_size=32, checkpoint=path)
    _assert_trunk_equal(model, state)
    assert model.fc.weight.shape == (7, 512)
    assert model.load_report.missing == [] and model.load_report.unexpected == []
    baseline = _build("resnet18", num_classes=7, checkpoint=path)
    _assert_trunk_equal(baseline, state)
    assert baseline.fc.weight.shape == (7, 512)


def test_missing_and_bad_checkpoints(tmp_path):
    with pytest.raises(MissingCheckpointError, match="ijba_res18_naive.pth.tar") as exc:
        create_model("ran", checkpoint=tmp_path / "ijba_res18_naive.pth.tar")
    assert "RAN" in str(exc.value) and "models/pretrain/" in str(exc.value)
    with pytest.raises(MissingCheckpointError, match="resnet18_msceleb.pth"):
        create_model("dacl", img_size=32, checkpoint=str(tmp_path / "resnet18_msceleb.pth"))

    state = _random_resnet18_state()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save({"state_dict": state}, tmp_path / "wrong.pth")
    with pytest.raises(FerpipeError, match="wrong shape"):
        create_model("resnet18", checkpoint=tmp_path / "wrong.pth")
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(FerpipeError, match="no ResNet-18 trunk"):
        create_model("resnet18", checkpoint=tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="layout"):
        create_model("resnet18", checkpoint=tmp_path / "other.pth", checkpoint_layout="vgg")


# --- a few optimisation steps -----------------------------------------------------------------------


def _steps(model, crit, x, y, n=4, lr=1e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(n):
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        crit.after_step()
        losses.append(loss.item())
    return losses


def test_ran_loss_decreases():
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    losses = _steps(_build("ran", num_classes=4), create_criterion("ran", num_classes=4), x, y)
    assert losses[-1] < losses[0]


def test_dacl_loss_decreases():
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    crit = create_criterion("dacl", num_classes=4, lamb=0.01)
    c0 = crit.centers.clone()
    losses = _steps(_build("dacl", num_classes=4, img_size=32), crit, x, y)
    assert losses[-1] < losses[0]
    assert not torch.equal(crit.centers, c0)  # after_step moved the centers
