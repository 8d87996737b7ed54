"""DARE, label-smoothing CE and ORSANet's schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ferpipe.losses import DARELoss, LabelSmoothingCE, dare_loss, orsanet_loss_schedule


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_dare_matches_closed_form_by_hand():
    z = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 0.2, 2.5]])
    y = torch.tensor([0, 2])
    # sample 0: y=0, hardest negative r=1; sample 1: y=2, r=1 (3.0 beats 2.5 and 0.0)
    p0 = torch.softmax(z[0], 0)[0].item()
    p1 = torch.softmax(z[1], 0)[2].item()
    expected = (_softplus(1.0 - 2.0 + (1 - p0)) + _softplus(3.0 - 0.2 + (1 - p1))) / 2
    assert DARELoss()(z, y).item() == pytest.approx(expected, rel=1e-6)
    # temperature scales the margin
    expected_t = (_softplus(1.0 - 2.0 + 0.5 * (1 - p0)) + _softplus(3.0 - 0.2 + 0.5 * (1 - p1))) / 2
    assert DARELoss(temperature=0.5)(z, y).item() == pytest.approx(expected_t, rel=1e-6)


def _masked_ce_reference(z, y, t=1.0):
    """The release's recipe: add the margin to non-targets, mask all but {y, r}, cross-entropy."""
    c = z.shape[1]
    onehot = F.one_hot(y, c).to(z.dtype)
    r = (z - 9999 * onehot).argmax(1)
    p_y = torch.softmax(z.detach(), 1).gather(1, y[:, None])
    adjusted = z + t * (1 - onehot) * (1 - p_y)
    keep = onehot + F.one_hot(r, c).to(z.dtype)
    return F.cross_entropy(adjusted - 9999 * (1 - keep), y)


def test_dare_equals_masked_cross_entropy_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 7, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (16,), generator=g)
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    la, lb = DARELoss(1.0)(a, y), _masked_ce_reference(b, y)
    assert la.item() == pytest.approx(lb.item(), rel=1e-10)
    la.backward()
    lb.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_dare_gradient_is_stopped_through_the_margin():
    z = torch.tensor([[1.0, 0.3, -0.5], [-0.2, 0.4, 1.5]], requires_grad=True)
    y = torch.tensor([0, 1])
    DARELoss()(z, y).backward()
    with torch.no_grad():
        p = torch.softmax(z, 1)
        r = torch.tensor([1, 2])
        idx = torch.arange(2)
        m = 1 - p[idx, y]
        s = torch.sigmoid(z[idx, r] - z[idx, y] + m) / 2  # d softplus / d arg, mean over 2
    expected = torch.zeros(2, 3)
    expected[idx, r] = s
    expected[idx, y] = -s
    # only z_y and z_r receive gradient; the margin (a function of softmax(z)) contributes none
    assert torch.allclose(z.grad, expected, atol=1e-7)

    # without the stop-gradient the margin would push gradient into every class
    z2 = z.detach().clone().requires_grad_(True)
    p2 = torch.softmax(z2, 1)
    undetached = F.softplus(z2[idx, r] - z2[idx, y] + 1 - p2[idx, y]).mean()
    undetached.backward()
    assert not torch.allclose(z2.grad, expected, atol=1e-4)


def test_dare_ignore_index_and_module_api():
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, -100])
    assert dare_loss(z, y).item() == pytest.approx(dare_loss(z[:1], y[:1]).item())
    assert dare_loss(z, torch.tensor([-100, -100])).item() == 0.0


def test_label_smoothing_ce_hand_value():
    z = torch.tensor([[1.0, 2.0, 0.0]])
    y = torch.tensor([1])
    logz = math.log(math.e + math.e**2 + 1.0)
    nlls = [logz - 1.0, logz - 2.0, logz - 0.0]  # -log p_j
    expected = 0.8 * nlls[1] + 0.2 * sum(nlls) / 3
    assert LabelSmoothingCE(0.2)(z, y).item() == pytest.approx(expected, rel=1e-6)
    g = torch.Generator().manual_seed(1)
    zz, yy = torch.randn(8, 7, generator=g), torch.randint(0, 7, (8,), generator=g)
    assert LabelSmoothingCE(0.2)(zz, yy).item() == pytest.approx(
        F.cross_entropy(zz, yy, label_smoothing=0.2).item(), rel=1e-6)
    assert LabelSmoothingCE(0.0)(zz, yy).item() == pytest.approx(F.cross_entropy(zz, yy).item(), rel=1e-6)
    with pytest.raises(ValueError):
        LabelSmoothingCE(1.0)


def test_orsanet_schedule_switches_after_epoch_5():
    g = torch.Generator().manual_seed(2)
    z, y = torch.randn(6, 7, generator=g), torch.randint(0, 7, (6,), generator=g)
    ce = F.cross_entropy(z, y).item()
    warm = ce + 2 * LabelSmoothingCE(0.2)(z, y).item()
    dare = ce + 0.1 * DARELoss(1.0)(z, y).item()
    for epoch in (1, 5):
        assert orsanet_loss_schedule(epoch)(z, y).item() == pytest.approx(warm, rel=1e-6)
    for epoch in (6, 400):
        assert orsanet_loss_schedule(epoch)(z, y).item() == pytest.approx(dare, rel=1e-6)
    assert orsanet_loss_schedule(3, warmup_epochs=2)(z, y).item() == pytest.approx(dare, rel=1e-6)
    with pytest.raises(ValueError):
        orsanet_loss_schedule(0)
