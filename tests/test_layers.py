"""ferpipe.models.layers: drop-ins that must equal torch's layers to the bit, forward and backward
(values and the gradient's memory layout, which decides the summation order of the layers below)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ferpipe.models.layers import PReLU


def _forward_backward(layer, x, grad):
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(grad)
    return y, x.grad, layer.weight.grad


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
    if x.dim() == 4:
        x = _edge_values(x)
    ref, ours = nn.PReLU(channels), PReLU(channels)
    ref.weight.data.uniform_(-0.5, 0.5)  # negative slopes too
    ours.load_state_dict(ref.state_dict())
    grad = torch.randn(shape)
    got, want = _forward_backward(ours, x, grad), _forward_backward(ref, x, grad)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert got[1].stride() == want[1].stride()  # the input's memory format is kept


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


def test_ir50_uses_the_drop_ins_and_keeps_its_keys():
    from ferpipe.models.ir50 import IR50

    model = IR50(widths=(8, 16), units=(1, 2), stem_width=8, input_size=None, output_layer=False)
    kinds = {type(m) for m in model.modules()}
    assert PReLU in kinds and nn.PReLU not in kinds
    assert "input_layer.2.weight" in model.state_dict() and "body.0.res_layer.2.weight" in model.state_dict()


def test_ir50_training_steps_give_the_same_weights_as_torchs_prelu():
    # The gradient's values and memory layout flow into BN and convolution backwards below each
    # PReLU: any difference would show in the weights after a few SAM steps, channels-last.
    import copy

    from ferpipe.models.ir50 import IR50
    from ferpipe.models.memory_format import to_channels_last
    from ferpipe.train.optim import build_optimizer

    torch.manual_seed(0)
    ours = nn.Sequential(IR50(widths=(16, 32), units=(2, 2), stem_width=16, input_size=None, output_layer=False),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 7))
    ref = copy.deepcopy(ours)
    for parent in ref.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, PReLU):
                plain = nn.PReLU(child.num_parameters)
                plain.weight = nn.Parameter(child.weight.detach().clone())
                setattr(parent, name, plain)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (4,))
    for model in (ours, ref):
        to_channels_last(model)
        opt = build_optimizer("sam-adam", list(model.parameters()), lr=1e-3, fused=True)
        for _ in range(3):
            for first in (True, False):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.first_step() if first else opt.second_step()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))
