"""ferpipe.models.layers: drop-ins that must equal torch's layers to the bit, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ferpipe.models.layers import PReLU, Subsample


def _forward_backward(layer, x, grad):
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(grad)
    weight_grad = layer.weight.grad if hasattr(layer, "weight") else None
    return y, x.grad, weight_grad


def _edge_values(x):
    # Exact zeros of both signs and the smallest subnormals: where x > 0 and x <= 0 part ways.
    flat = x.view(-1) if x.is_contiguous() else x.permute(0, 2, 3, 1).reshape(-1)
    edge = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1.2e-38, -1.2e-38])
    flat[: edge.numel()] = edge
    return x


@pytest.mark.parametrize("shape,channels_last", [
    ((4, 16, 9, 9), False), ((4, 16, 9, 9), True), ((6, 12), False), ((3, 5, 7), False),
])
@pytest.mark.parametrize("shared_weight", [False, True])
def test_prelu_equals_torch_forward_and_backward_to_the_bit(shape, channels_last, shared_weight):
    torch.manual_seed(0)
    channels = 1 if shared_weight else shape[1]
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 4 and not channels_last:
        x = _edge_values(x)
    ref, ours = nn.PReLU(channels), PReLU(channels)
    ref.weight.data.uniform_(-0.5, 0.5)  # negative slopes too
    ours.load_state_dict(ref.state_dict())
    grad = torch.randn(shape)
    got, want = _forward_backward(ours, x, grad), _forward_backward(ref, x, grad)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert got[1].stride() == want[1].stride()  # the input's memory format is kept


def test_prelu_edge_values_in_channels_last():
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    x = _edge_values(x)
    ref, ours = nn.PReLU(8), PReLU(8)
    ref.weight.data.uniform_(-0.5, 0.5)
    ours.load_state_dict(ref.state_dict())
    grad = torch.randn(2, 8, 5, 5)
    for a, b in zip(_forward_backward(ours, x, grad), _forward_backward(ref, x, grad)):
        assert torch.equal(a, b)


def test_prelu_without_autograd_is_torchs_own_and_traces():
    layer = PReLU(4)
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        assert torch.equal(layer(x), nn.functional.prelu(x, layer.weight))
        traced = torch.jit.trace(layer, x)
    assert "PythonOp" not in str(traced.graph)  # the autograd.Function stays out of exports
    with torch.no_grad():
        assert torch.equal(traced(x), layer(x))


def test_prelu_under_bfloat16_autocast_matches_torch():
    ref, ours = nn.PReLU(8), PReLU(8)
    ref.weight.data.uniform_(-0.5, 0.5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 5, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = _forward_backward(ours, x, torch.ones(2, 8, 5, 5).bfloat16()), \
            _forward_backward(ref, x, torch.ones(2, 8, 5, 5).bfloat16())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [14, 15])
def test_subsample_equals_the_one_pixel_max_pool(stride, size):
    x = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 3, (size + stride - 1) // stride, (size + stride - 1) // stride)
    y_ref, gx_ref, _ = _forward_backward(nn.MaxPool2d(1, stride), x, grad)
    y, gx, _ = _forward_backward(Subsample(stride), x, grad)
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)


def test_ir50_uses_the_drop_ins_and_keeps_its_keys():
    from ferpipe.models.ir50 import IR50

    model = IR50(widths=(8, 16), units=(1, 2), stem_width=8, input_size=None, output_layer=False)
    kinds = {type(m) for m in model.modules()}
    assert PReLU in kinds and Subsample in kinds and nn.MaxPool2d not in kinds
    assert "input_layer.2.weight" in model.state_dict() and "body.0.res_layer.2.weight" in model.state_dict()
