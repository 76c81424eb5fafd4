"""LPIPS' VGG16 trunk with each convolution and its ReLU as one cuDNN call (CUDA, fp32/tf32).

PyTorch runs ``Conv2d`` then ``ReLU`` as a cuDNN convolution, a bias kernel and a ReLU kernel; at
512x512 each extra pass reads and writes a 64-channel map (67 MB). ``torch.cudnn_convolution_relu`` is
cuDNN's fused convolution + bias + activation. It has no autograd formula, so :class:`_ConvReLU` gives it
one: the ReLU's mask from the saved output, then the convolution's input gradient only (the trunk is
frozen: no weight or bias gradients). Same arithmetic as the module trunk up to cuDNN's choice of
algorithm (tests/test_metrics.py checks value and gradient on the GPU).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _ConvReLU(torch.autograd.Function):
    """relu(conv2d(x, weight, bias)) through cuDNN's fused call; gradient to ``x`` only."""

    @staticmethod
    def forward(ctx, x: Tensor, conv: nn.Conv2d) -> Tensor:  # type: ignore[override]
        y = torch.cudnn_convolution_relu(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                                         conv.groups)
        ctx.conv = conv
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):  # type: ignore[override]
        x, y = ctx.saved_tensors
        conv = ctx.conv
        grad_z = torch.ops.aten.threshold_backward(grad_y, y, 0.0)
        grad_x = torch.ops.aten.convolution_backward(
            grad_z, x, conv.weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0],
            conv.groups, [True, False, False])[0]
        return grad_x, None


def fusable_trunk(vgg: nn.Module, x: Tensor) -> bool:
    """Whether :func:`fused_vgg_trunk` can run lpips' ``vgg`` on ``x``: CUDA float32 input, frozen
    zeros-padded float32 convolutions with bias."""
    if not (x.is_cuda and x.dtype == torch.float32):
        return False
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(m.padding_mode == "zeros" and m.bias is not None and not m.weight.requires_grad
                               and m.weight.dtype == torch.float32 for m in convs)


def fused_vgg_trunk(vgg: nn.Module, x: Tensor) -> list[Tensor]:
    """lpips' ``vgg16`` forward (its five slices; the feature after each) with every Conv2d followed by a
    ReLU run as one fused cuDNN call."""
    feats = []
    h = x
    for index in range(1, vgg.N_slices + 1):
        layers = list(getattr(vgg, f"slice{index}"))
        k = 0
        while k < len(layers):
            layer = layers[k]
            if isinstance(layer, nn.Conv2d) and k + 1 < len(layers) and isinstance(layers[k + 1], nn.ReLU):
                h = _ConvReLU.apply(h, layer)
                k += 2
            else:
                h = layer(h)
                k += 1
        feats.append(h)
    return feats
