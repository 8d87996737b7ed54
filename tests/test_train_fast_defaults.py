"""Speed settings on by default only where the outputs stay within tolerance: ORSANet trains
channels-last (its logits match NCHW's to float rounding); other models keep NCHW unless asked."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from ferpipe.models import create_model
from ferpipe.train import presets
from ferpipe.train.params import TrainParams

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_orsanet_presets_default_to_channels_last_and_params_override():
    assert presets.resolve(TrainParams()).channels_last is True  # orsanet-cpu, params.yaml's null
    assert presets.resolve(TrainParams(preset="orsanet-large")).channels_last is True
    assert presets.resolve(TrainParams(channels_last=False)).channels_last is False
    assert presets.resolve(TrainParams(model="resnet18")).channels_last is False
    assert presets.resolve(TrainParams(model="resnet18", channels_last=True)).channels_last is True


def _logits_both_ways(model: torch.nn.Module, x: torch.Tensor, *priors) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        ref = model(x, *priors)
        model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last), *priors)
    return ref, got


def test_orsanet_cpu_logits_channels_last_match_nchw():
    cfg = presets.get_preset("orsanet-cpu")
    torch.manual_seed(0)
    kw = presets.model_kwargs(cfg, {"prior_kind": "maps", "num_classes": 7})
    model = create_model(cfg.model, **kw)
    x = torch.randn(4, 3, cfg.img_size, cfg.img_size)
    pts = torch.rand(4, 68, 2) * cfg.img_size
    parsing = torch.randint(0, 11, (4, cfg.img_size, cfg.img_size))
    ref, got = _logits_both_ways(model, x, pts, parsing)
    assert torch.allclose(ref, got, rtol=1e-4, atol=1e-5), (ref - got).abs().max()
    assert torch.equal(ref.argmax(1), got.argmax(1))


def test_orsanet_large_cached_priors_logits_channels_last_match_nchw():
    torch.manual_seed(0)
    model = create_model("orsanet", variant="large", priors="features")
    x = torch.randn(1, 3, 224, 224)
    lmk, seg = torch.randn(1, 512, 7, 7), torch.randn(1, 1024, 7, 7)
    ref, got = _logits_both_ways(model, x, lmk, seg)
    assert torch.allclose(ref, got, rtol=1e-4, atol=1e-5), (ref - got).abs().max()


def test_channels_last_loss_and_gradients_match_nchw():
    # Gradients, not weights after a step: Adam's first step is ~lr * sign(grad), so a gradient
    # that rounding moves across zero would flip a weight's update however close the two are.
    from ferpipe.losses.criterion import create_criterion

    cfg = dataclasses.replace(presets.get_preset("orsanet-cpu"), model_kwargs={
        **presets.get_preset("orsanet-cpu").model_kwargs, "drop_path_rate": 0.0})
    kw = presets.model_kwargs(cfg, {"prior_kind": "maps", "num_classes": 7})
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 112, 112), torch.randint(0, 7, (8,))
    pts, parsing = torch.rand(8, 68, 2) * 112, torch.randint(0, 11, (8, 112, 112))
    losses, grads = [], []
    for cl in (False, True):
        torch.manual_seed(2)
        m = create_model(cfg.model, **kw).train()
        xi = x
        if cl:
            m.to(memory_format=torch.channels_last)
            xi = x.contiguous(memory_format=torch.channels_last)
        loss = create_criterion(cfg.loss, 7)(m(xi, pts, parsing), y)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert ((grads[0] - grads[1]).norm() / grads[0].norm()).item() < 1e-4


@pytest.mark.parametrize("name", ["adamw", "sam-adam", "sgd"])
def test_fused_optimizer_step_matches_the_per_tensor_loop(name):
    from ferpipe.train.loop import RunOptions
    from ferpipe.train.optim import SAM, build_optimizer

    assert TrainParams().fused_optimizer is True and RunOptions().fused_optimizer is True
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 7))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 7, (4,))
    after = []
    for fused in (False, True):
        m = copy.deepcopy(ref)
        opt = build_optimizer(name, list(m.parameters()), lr=1e-3, weight_decay=0.01, fused=fused)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            if isinstance(opt, SAM):
                opt.first_step(zero_grad=True)
                torch.nn.functional.cross_entropy(m(x), y).backward()
                opt.restore()
                opt.base_optimizer.step()
            else:
                opt.step()
        after.append(torch.cat([p.detach().reshape(-1) for p in m.parameters()]))
    assert torch.allclose(after[0], after[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("retain", [True, False])
def test_the_trainer_keeps_freed_memory_for_the_next_step_unless_told_not_to(retain, tmp_path, monkeypatch):
    from ferpipe.train import data as D
    from ferpipe.train import loop
    from ferpipe.train.fixtures import write_random_priors

    assert TrainParams().retain_heap is True and loop.RunOptions().retain_heap is True
    calls = []
    monkeypatch.setattr(loop, "retain_freed_memory", lambda: calls.append("retain") or True)
    shards = D.probe_shards(write_random_priors(tmp_path / "p", "maps", counts=(8, 4, 4), size=112,
                                                samples_per_shard=8))
    loop._setup(presets.resolve(TrainParams()), shards, tmp_path / "m",
                loop.RunOptions(device="cpu", retain_heap=retain), 0.0)
    assert calls == (["retain"] if retain else [])
