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

from utils import fast_paths
from utils.device import fused_kernels


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


class HalfTrunkWeights:
    """A frozen VGG trunk's layers as :func:`half_trunk` runs them: per slice a list of
    ("conv", conv, weight and bias in ``dtype``) or ("pool", pool) entries. The copies are made once, in
    the module weights' memory format (channels-last on CUDA): the trunk is frozen."""

    def __init__(self, vgg: nn.Module, dtype: torch.dtype = torch.float16) -> None:
        self.dtype = dtype
        self.slices: list[list[tuple]] = []
        for index in range(1, vgg.N_slices + 1):
            layers, ops, k = list(getattr(vgg, f"slice{index}")), [], 0
            while k < len(layers):
                layer = layers[k]
                if isinstance(layer, nn.Conv2d):
                    if not (k + 1 < len(layers) and isinstance(layers[k + 1], nn.ReLU)):
                        raise ValueError("half_trunk: every convolution must be followed by a ReLU")
                    w = layer.weight.detach().to(dtype).contiguous(memory_format=_memory_format(layer.weight))
                    b = layer.bias.detach().to(dtype)
                    ops.append(("conv", layer, w, b))
                    k += 2
                elif isinstance(layer, nn.MaxPool2d):
                    ops.append(("pool", layer))
                    k += 1
                else:
                    raise ValueError(f"half_trunk: unexpected layer {type(layer).__name__}")
            self.slices.append(ops)


def _memory_format(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def _pool_args(pool: nn.MaxPool2d) -> tuple:
    pair = torch.nn.modules.utils._pair
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    return pair(pool.kernel_size), pair(stride), pair(pool.padding), pair(pool.dilation), pool.ceil_mode


class _PoolChoice:
    """A pool's one-byte choices from fused_ops.max_pool2x2 (told apart from torch's int64 indices)."""

    def __init__(self, choice: Tensor) -> None:
        self.choice = choice


def _fused_pool(pool: nn.MaxPool2d, h: Tensor):
    """fused_ops when the ``lpips_pool`` fast path takes this pool on ``h`` (2x2, stride 2), else None."""
    if not fast_paths.enabled("lpips_pool"):
        return None
    ops = fused_kernels()
    plain_2x2 = _pool_args(pool) == ((2, 2), (2, 2), (0, 0), (1, 1), False)
    if ops is None or not plain_2x2 or not ops.max_pool2x2_fits(h):
        return None
    return ops


FIRST_CONV_CHANNELS = 8  # fused_half_lpips' input channels (zero-padded beyond the image's three)

GRAD_TARGET = 4096.0  # the largest scaled feature gradient (float16's largest finite value: 65504)


def _gradient_scale(grads: list[Tensor]) -> Tensor:
    """A power of two that brings the largest of ``grads`` to about :data:`GRAD_TARGET` (a device scalar:
    no host sync, capturable). LPIPS' feature gradients are ~1e-5 and below (a mean over every pixel), where
    float16 has no precision left; they only shrink through the trunk's backward (x0.4 on bench_lpips.py's
    pair), so 16x headroom is plenty."""
    amax = torch.stack(torch._foreach_norm(grads, float("inf"))).amax().float()
    return torch.exp2(torch.floor(torch.log2(GRAD_TARGET / amax.clamp_min(1e-30))))


def _conv_input_grad(grad: Tensor, like: Tensor, conv: nn.Conv2d, weight: Tensor) -> Tensor:
    """The convolution's gradient with respect to its input (``like``'s shape, dtype and layout)."""
    return torch.ops.aten.convolution_backward(
        grad, like, weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups,
        [True, False, False])[0]


class _HalfTrunk(torch.autograd.Function):
    """Both images' features from one forward batch in ``weights.dtype``; the gradient to the first image
    only, in the same dtype: the feature gradients scaled by a power of two (:func:`_gradient_scale`), the
    forward's ReLU masks and max-pool choices, the convolutions' input gradients (float32 accumulation in
    cuDNN), unscaled at the end."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, weights: HalfTrunkWeights):  # type: ignore[override]
        n = x.shape[0]
        fmt = _memory_format(x)
        h = torch.cat([x, y]).to(weights.dtype).contiguous(memory_format=fmt)
        saved, feats = [], []
        for ops in weights.slices:
            for op in ops:
                if op[0] == "conv":
                    conv, shape = op[1], (n, *h.shape[1:])
                    h = torch.cudnn_convolution_relu(h, op[2], op[3], conv.stride, conv.padding,
                                                     conv.dilation, conv.groups)
                    saved.append((shape, h[:n]))
                else:
                    shape = (n, *h.shape[1:])
                    fused = _fused_pool(op[1], h)
                    if fused is not None:  # one-byte choices, of the first image(s) only
                        h, choice = fused.max_pool2x2(h, n)
                        saved.append((shape, _PoolChoice(choice)))
                    else:
                        h, idx = torch.ops.aten.max_pool2d_with_indices(h, *_pool_args(op[1]))
                        saved.append((shape, idx[:n]))
            feats.append(h)
        ctx.weights, ctx.saved, ctx.fmt, ctx.in_dtype = weights, saved, fmt, x.dtype
        first = tuple(f[:n].float() for f in feats)
        second = tuple(f[n:].float() for f in feats)
        ctx.mark_non_differentiable(*second)
        return first + second

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        weights, saved, fmt = ctx.weights, ctx.saved, ctx.fmt
        dtype = weights.dtype
        k = len(weights.slices)
        tops = [g for g in grads[:k] if g is not None]
        if not tops:
            return None, None, None
        scale = _gradient_scale(tops)
        g = None
        pos = len(saved)
        for s in reversed(range(k)):
            if grads[s] is not None:
                gs = torch.mul(grads[s], scale, out=torch.empty_like(grads[s], dtype=dtype))  # one pass
                g = gs if g is None else g + gs
            for op in reversed(weights.slices[s]):
                pos -= 1
                if g is None:
                    continue
                shape, kept = saved[pos]
                if isinstance(kept, _PoolChoice):  # fused_ops' pool needs no input-shaped template
                    g = fused_kernels().max_pool2x2_backward(g, kept.choice)
                    continue
                like = torch.empty(shape, dtype=dtype, device=g.device).contiguous(memory_format=fmt)
                if op[0] == "conv":
                    g = torch.ops.aten.threshold_backward(g, kept, 0.0)  # the ReLU's mask from its output
                    g = _conv_input_grad(g, like, op[1], op[2])
                else:
                    g = torch.ops.aten.max_pool2d_with_indices_backward(g, like, *_pool_args(op[1]), kept)
        return (g.to(ctx.in_dtype) / scale).contiguous(memory_format=fmt), None, None


def half_trunk(weights: HalfTrunkWeights, x: Tensor, y: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """lpips' ``vgg16`` features of ``x`` and of ``y`` (float32) from one forward of both in
    ``weights.dtype`` (float16: TF32's 10-bit mantissa, half the memory traffic and twice the tensor-core
    rate of TF32), each convolution and its ReLU as one cuDNN call. The gradient flows to ``x`` only, in
    the same dtype with the scaling float16's range needs (:func:`_gradient_scale`); ``y`` gets none."""
    out = _HalfTrunk.apply(x, y, weights)
    k = len(weights.slices)
    return list(out[:k]), list(out[k:])


class FusedHalfLPIPS:
    """What :func:`fused_half_lpips` runs, made once from the half trunk's weights, lpips' linear heads and
    scaling layer: per slice whether it starts with VGG's 2x2 pool and its (conv, weight, bias) triples, the
    first convolution's weight zero-padded to ``in_channels`` input channels (cuDNN's float16 kernels for
    three input channels are several times slower per FLOP), each head's channel weights (float32) and the
    scaling layer's constants. Raises ValueError for a trunk of another shape (the caller keeps
    :func:`half_trunk`)."""

    def __init__(self, half: HalfTrunkWeights, heads: list[Tensor], shift: Tensor, scale: Tensor,
                 in_channels: int = 3) -> None:
        if half.dtype != torch.float16:
            raise ValueError("fused_half_lpips: float16 trunks only")
        self.in_channels = in_channels
        self.slices: list[tuple[bool, list[tuple]]] = []
        for index, ops in enumerate(half.slices):
            pooled = bool(ops) and ops[0][0] == "pool"
            if pooled and _pool_args(ops[0][1]) != ((2, 2), (2, 2), (0, 0), (1, 1), False):
                raise ValueError("fused_half_lpips: only 2x2 stride-2 pools")
            convs = [op[1:] for op in ops[1 if pooled else 0:]]
            rest = ops[1 if pooled else 0:]
            if not convs or any(op[0] != "conv" for op in rest) or (pooled and index == 0):
                raise ValueError("fused_half_lpips: each slice must be an optional pool, then convolutions")
            if any(c.stride != (1, 1) or c.dilation != (1, 1) or c.groups != 1
                   or 2 * c.padding[0] + 1 != c.kernel_size[0] or 2 * c.padding[1] + 1 != c.kernel_size[1]
                   or c.out_channels % 8 for c, _, _ in convs):
                raise ValueError("fused_half_lpips: only size-keeping convolutions, to multiples of 8 "
                                 "channels")
            self.slices.append((pooled, convs))
        conv, w, b = self.slices[0][1][0]
        if w.shape[1] != 3 or in_channels < 3:
            raise ValueError("fused_half_lpips: the first convolution must take the 3-channel image")
        padded = w.new_zeros((w.shape[0], in_channels, *w.shape[2:]))
        padded[:, :3] = w
        self.slices[0][1][0] = (conv, padded.contiguous(memory_format=_memory_format(w)), b)
        self.heads = [h.detach().reshape(-1).float().contiguous() for h in heads]
        if [len(h) for h in self.heads] != [s[1][-1][0].out_channels for s in self.slices]:
            raise ValueError("fused_half_lpips: one head per slice, as wide as its features")
        self.shift = shift.detach().reshape(3).float().contiguous()
        self.scale = scale.detach().reshape(3).float().contiguous()
        self.pools = sum(pooled for pooled, _ in self.slices)

    def fits(self, x: Tensor, y: Tensor) -> bool:
        """Whether :func:`fused_half_lpips` takes images ``x`` (with a gradient) and ``y``: CUDA float32
        (n, 3, H, W) on the weights' device, H and W divisible by 2 for each pool."""
        step = 2 ** self.pools
        return (x.is_cuda and x.dtype == torch.float32 and y.dtype == torch.float32 and x.dim() == 4
                and x.shape == y.shape and x.shape[1] == 3 and x.shape[2] % step == 0
                and x.shape[3] % step == 0
                and x.device == self.shift.device and not y.requires_grad)


class _FusedHalfLPIPS(torch.autograd.Function):
    """LPIPS of images ``x`` against ``y`` in float16 around cuDNN's convolutions (fused_ops.lpips_half_*);
    the gradient to ``x`` only. The same arithmetic as :func:`half_trunk` with lpips_loader's fused layer
    distance, in a third of the passes: one prep pass, the distances read the float16 batch, and each slice's
    gradient starts with one kernel (feature gradient, pool, ReLU mask)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, net: FusedHalfLPIPS, eps: float) -> Tensor:  # type: ignore[override]
        ops = fused_kernels()
        n, _, height, width = x.shape
        h = ops.lpips_half_prep(x.contiguous(), y.contiguous(), net.shift, net.scale, net.in_channels)
        amax = torch.zeros(1, device=x.device, dtype=torch.float32)
        sizes, pools = [], 0
        for pooled, _ in net.slices:
            pools += pooled
            sizes.append((height >> pools) * (width >> pools))
        d = torch.empty((n, sum(sizes)), device=x.device, dtype=torch.float32)
        saved, offset = [], 0
        for index, (pooled, convs) in enumerate(net.slices):
            choice = None
            if pooled:
                h, choice = ops.max_pool2x2(h, n)
            inputs, outputs = [], []
            for conv, weight, bias in convs:
                inputs.append((n, *h.shape[1:]))
                h = torch.cudnn_convolution_relu(h, weight, bias, conv.stride, conv.padding, conv.dilation,
                                                 conv.groups)
                outputs.append(h)
            ops.lpips_half_distance(h, net.heads[index], d, offset, amax, eps)
            offset += sizes[index]
            saved.append((choice, inputs, outputs))
        ctx.net, ctx.saved, ctx.amax, ctx.eps = net, saved, amax, eps
        return d.sum(dim=1)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        ops = fused_kernels()
        net, saved, amax = ctx.net, ctx.saved, ctx.amax
        gout = grad_out.float().contiguous()
        cl = torch.channels_last
        g, next_choice = None, None
        for index in reversed(range(len(net.slices))):
            choice, inputs, outputs = saved[index]
            g = ops.lpips_half_backward(outputs[-1], net.heads[index], gout, amax, g, next_choice, ctx.eps)
            convs = net.slices[index][1]
            for k in reversed(range(len(convs))):
                conv, weight, _ = convs[k]
                like = torch.empty(inputs[k], dtype=torch.float16, device=g.device,
                                   memory_format=cl)
                g = _conv_input_grad(g, like, conv, weight).contiguous(memory_format=cl)
                if k > 0:
                    ops.lpips_half_relu_mask(g, outputs[k - 1])
            next_choice = choice
        return ops.lpips_half_prep_backward(g, net.scale, amax, gout), None, None, None


def fused_half_lpips(net: FusedHalfLPIPS, x: Tensor, y: Tensor, eps: float = 1e-10) -> Tensor:
    """LPIPS (n,) of images ``x`` against ``y`` ((n, 3, H, W) in [0, 1], :meth:`FusedHalfLPIPS.fits`) with
    the trunk in float16 as :func:`half_trunk` runs it, the gradient to ``x`` scaled by a power of two
    chosen on the device (from the forward's largest feature gradient), in fused_ops' kernels."""
    return _FusedHalfLPIPS.apply(x, y, net, eps)
