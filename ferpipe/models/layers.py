"""Drop-in layers with the same outputs and gradients as torch's, computed with less work.

IR-50's residual units spend a visible share of a CPU training step in two places that do more
than the math needs:

- ``nn.PReLU``'s backward (``aten::_prelu_kernel_backward``) is a scalar loop that also writes a
  full-size weight-gradient tensor before summing it; on [8,64,112,112] channels-last it took
  41 ms against 27 ms for :class:`PReLU`'s vectorised ops (2.6 -> 0.6 ms at [8,256,14,14]).
- The parameter-free shortcut ``nn.MaxPool2d(1, stride)`` copies its input (and keeps an index
  tensor for the backward) to return it unchanged or every ``stride``-th pixel: a view does that.

Both are bitwise equal to what they replace, forward and backward (``tests/test_models.py``),
and hold the same parameters under the same names, so checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _smallest_positive(dtype: torch.dtype) -> float:
    # The smallest subnormal: ``-x > -tiny`` is ``x <= 0`` for every x of the dtype, zeros of
    # either sign included, which threshold_backward's strict comparison cannot say with 0.
    info = torch.finfo(dtype)
    return info.smallest_normal * info.eps


class _PReLUFunction(torch.autograd.Function):
    """prelu(x) = x if x > 0 else w * x, per channel; torch's forward, a cheaper backward."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return torch.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        if grad.stride() != x.stride():
            # ATen's kernel lays its outputs out as x and sums the weight terms in that order.
            grad = torch.empty_like(x, dtype=grad.dtype).copy_(grad)
        w = weight.to(grad.dtype)
        w = w.view(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 1 and w.numel() > 1 else w
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # x > 0: grad (plus an exact zero); x <= 0: w * grad (plus an exact zero). ATen's
            # ``x > 0 ? grad : w * grad`` to the bit, as two vectorised relu-style masks.
            grad_x = torch.ops.aten.threshold_backward(grad, x, 0)
            grad_x += torch.ops.aten.threshold_backward(grad * w, torch.neg(x), -_smallest_positive(x.dtype))
        if ctx.needs_input_grad[1]:
            # The same per-element terms as ATen's (grad * x where x <= 0, else 0) and the same
            # reduction over every dimension but the channel's, so the same sum.
            terms = grad * torch.clamp(x, max=0)
            if weight.numel() == 1:
                grad_w = terms.sum()
            elif x.dim() > 1:
                grad_w = terms.sum([d for d in range(x.dim()) if d != 1])
            else:
                grad_w = terms
            grad_w = grad_w.reshape(weight.shape).to(weight.dtype)
        return grad_x, grad_w


class PReLU(nn.PReLU):
    """``nn.PReLU`` with a faster, bitwise-equal backward (see the module docstring).

    Without autograd (inference, export, tracing) it is ``nn.PReLU`` itself.
    """

    def forward(self, x):
        if torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.jit.is_scripting() \
                and (x.requires_grad or self.weight.requires_grad):
            return _PReLUFunction.apply(x, self.weight)
        return F.prelu(x, self.weight)


class Subsample(nn.Module):
    """Every ``stride``-th row and column, as ``nn.MaxPool2d(1, stride)`` returns them (a view).

    Stride 1 is the input itself.
    """

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x if self.stride == 1 else x[..., :: self.stride, :: self.stride]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"
