"""Channels-last for training on the CPU, minus the convolutions oneDNN gets wrong.

oneDNN's x64 JIT kernel for the weight gradient of a strided 1x1 convolution writes past its
scratchpad when the source is NHWC and the convolution has fewer input channels than the kernel's
channel block (16 on AVX-512, 8 on AVX2): uxlfoundation/oneDNN#6035, present in the oneDNN of
torch 2.14. The gradients come out right; the heap around the scratchpad does not, and glibc
aborts the process later, somewhere else ("malloc(): smallbin double linked list corrupted" in a
test session here, always inside a later convolution's backward). ORSANet's prior encoders
(widths 8/16/32 in ``orsanet-cpu``) have such a shortcut convolution.

So :func:`to_channels_last` converts a model as ``model.to(memory_format=torch.channels_last)``
does, then keeps every such convolution in NCHW: its weight stays contiguous and a forward
pre-hook hands it a contiguous input, so PyTorch picks oneDNN's NCHW kernels for it (whose
workspace is booked right). Those layers are small; the rest of the network keeps the speed.
"""

from __future__ import annotations

import torch
from torch import nn

# The widest channel block among the affected kernels (AVX-512's); AVX2's is 8.
ONEDNN_1X1_CHANNEL_BLOCK = 16


def hits_onednn_1x1_bug(module: nn.Module) -> bool:
    """A 2-D convolution whose NHWC weight gradient would take oneDNN's faulty 1x1 path."""
    return (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
            and tuple(module.stride) != (1, 1) and module.in_channels // module.groups < ONEDNN_1X1_CHANNEL_BLOCK)


def _contiguous_input(_module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) and a.ndim == 4 else a for a in args)


def to_channels_last(model: nn.Module) -> list[str]:
    """``model`` in channels-last memory format, in place, except the CPU convolutions
    :func:`hits_onednn_1x1_bug` names, which stay NCHW; returns their names. Call it after
    moving the model to its device."""
    model.to(memory_format=torch.channels_last)
    kept = []
    for name, module in model.named_modules():
        if hits_onednn_1x1_bug(module) and module.weight.device.type == "cpu":  # oneDNN is the CPU's
            # clone, not .contiguous(): a 1x1 kernel in channels-last strides already counts as
            # contiguous, and PyTorch would still read its strides as channels-last.
            module.weight.data = module.weight.data.clone(memory_format=torch.contiguous_format)
            module.register_forward_pre_hook(_contiguous_input)
            kept.append(name)
    return kept
