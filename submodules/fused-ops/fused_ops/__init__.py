"""The project's own fused CUDA kernels: HyperGaussians' conditional mean, Adam, LPIPS' layer distance.

:func:`conditional_mean` computes, for every Gaussian k and block g, ``mu_o - L11^{-T} L21^T (z_k - mu_i)``
in one kernel, and its gradients in one more: what ``scene.model.hypergaussians.HyperGaussian`` otherwise
does with an einsum, a batched triangular solve and their backward (several cuBLAS calls that run as
FP32 GEMV / FFMA kernels on tiny matrices). float32 CUDA tensors, block size n <= 8, any latent size.
:func:`adam_step` updates all of an optimiser's tensors in one launch (``utils.optim.OneLaunchAdam``);
:func:`lpips_layer_distance` is LPIPS' per-layer distance in one pass (``utils.lpips_loader``);
:func:`max_pool2x2` is VGG's 2x2 max-pool with one-byte choices (``utils.lpips_trunk``); the
``lpips_half_*`` functions are the float16 LPIPS pieces around cuDNN's convolutions that
``utils.lpips_trunk.fused_half_lpips`` strings together (csrc/lpips_half.cu).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - depends on the build
    _C = None
    _WHY = (f"fused_ops._C is not built ({exc}); build it with `python setup.py build_ext --inplace` "
            "or `pip install --no-build-isolation -e .` on a machine with a CUDA toolkit")
else:
    _WHY = ""

MAX_BLOCK = 8

__all__ = ["MAX_BLOCK", "adam_step", "available", "conditional_mean", "flame_joints", "frame_gaussians",
           "lpips_half_backward", "lpips_half_distance", "lpips_half_prep", "lpips_half_prep_backward",
           "lpips_half_relu_mask", "lpips_layer_distance", "max_pool2x2", "max_pool2x2_backward",
           "max_pool2x2_fits"]


def available() -> bool:
    """True when the compiled kernels are importable (a CUDA device is needed to run them)."""
    return _C is not None


class _ConditionalMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mean: Tensor, log_diag: Tensor, lower: Tensor, l21: Tensor, z: Tensor) -> Tensor:
        ctx.save_for_backward(mean, log_diag, lower, l21, z)
        return _C.conditional_mean_forward(mean, log_diag, lower, l21, z)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        mean, log_diag, lower, l21, z = ctx.saved_tensors
        g_mean, g_log_diag, g_lower, g_l21 = _C.conditional_mean_backward(
            grad_out.contiguous(), mean, log_diag, lower, l21, z)
        n = log_diag.shape[-1]
        g_z = -g_mean[..., n:].sum(dim=1) if ctx.needs_input_grad[4] else None
        return g_mean, g_log_diag, g_lower, g_l21, g_z


def conditional_mean(mean: Tensor, log_diag: Tensor, lower: Tensor, l21: Tensor, z: Tensor) -> Tensor:
    """(N, G, n): per Gaussian and block, ``mean[..., :n] - L11^{-T} L21^T (z - mean[..., n:])`` with
    ``L11`` built from ``log_diag`` (N, G, n; its exponentiated diagonal) and ``lower`` (N, G, n(n-1)/2;
    the strictly lower entries row by row); ``l21`` (N, G, m, n), ``z`` (N, m). Differentiable in all
    five inputs."""
    if _C is None:
        raise RuntimeError(_WHY)
    tensors = [t.contiguous() for t in (mean, log_diag, lower, l21, z)]
    return _ConditionalMean.apply(*tensors)


def adam_step(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
              steps: list[Tensor], lrs: list[float], beta1: float, beta2: float, eps: float) -> None:
    """One Adam update of every given tensor in one kernel launch (per 32 tensors), in place: torch's Adam
    without weight decay, amsgrad or maximize. ``steps`` (one float32 device element per tensor) must
    already count this step. Contiguous float32 CUDA tensors; gradients are made contiguous."""
    if _C is None:
        raise RuntimeError(_WHY)
    _C.adam_step(params, [g.contiguous() for g in grads], exp_avgs, exp_avg_sqs, steps,
                 [float(lr) for lr in lrs], float(beta1), float(beta2), float(eps))


def frame_gaussians(v_posed: Tensor, transforms: Tensor, lbs_weights: Tensor, eyelid_dirs: Tensor,
                    eyelids: Tensor, vertex_ids: Tensor, bary: Tensor, d_xyz: Tensor, d_rot: Tensor,
                    d_scale: Tensor, rotation: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One frame's Gaussian (means (N,3), rotations (N,4), scales (N,3)) in one kernel, without gradients:
    the triangle corners ``vertex_ids`` (N,3) of the unskinned mesh ``v_posed`` (V,3) skinned by the joints'
    3x4 ``transforms`` (5,3,4) with ``lbs_weights`` (V,5) plus the eyelid shapes ``eyelid_dirs`` (2,3V) x
    ``eyelids`` (2,), interpolated at ``bary`` (N,3), then composed with the heads' ``d_xyz`` / ``d_rot`` /
    ``d_scale`` (row-strided views are fine) onto the ``rotation`` (N,4) and ``log_scale`` (N,3) parameters
    (``scene.model.frame_gaussians.frame_gaussians_torch`` is the same in torch). float32 CUDA tensors."""
    c = _built()
    return tuple(c.frame_gaussians(
        v_posed.reshape(-1, 3).contiguous(), transforms.reshape(-1).contiguous(), lbs_weights.contiguous(),
        eyelid_dirs.contiguous(), eyelids.reshape(-1).contiguous(), vertex_ids.contiguous(),
        bary.contiguous(), d_xyz, d_rot, d_scale, rotation.contiguous(), log_scale.contiguous()))


def flame_joints(pose_head: Tensor, pose_tail: Tensor, expression: Tensor, J_rest: Tensor, J_dirs: Tensor,
                 parents: Tensor) -> tuple[Tensor, Tensor]:
    """FLAME's per-frame joint work in one launch (``flame.model.FLAME.unskinned`` but the GEMV): from the 6D
    rotations of joints 0-1 (``pose_head`` (2,6)) and 2-4 (``pose_tail`` (3,6)), the ``expression`` (K,), the
    rest joints ``J_rest`` (5,3), their expression directions ``J_dirs`` (>= K, 15) and ``parents`` (5,) int64
    (-1 for the root, parents first): (coeffs (136,) = [expression zero-padded to 100, pose feature (36)],
    skinning transforms (5, 12) = 3x4 row-major). float32 CUDA tensors, no gradients."""
    c = _built()
    return tuple(c.flame_joints(pose_head.contiguous(), pose_tail.contiguous(), expression.contiguous(),
                                J_rest.contiguous(), J_dirs.contiguous(), parents.contiguous()))


def _pixel_rows(t: Tensor) -> Tensor:
    """(B, C, H, W) channels-last -> its (B*H*W, C) rows, a view."""
    b, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(b * h * w, c)


class _LayerDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, weight: Tensor, eps: float) -> Tensor:
        ra, rb = _pixel_rows(a), _pixel_rows(b)
        ctx.save_for_backward(ra, rb, weight)
        ctx.eps, ctx.shape = eps, a.shape
        n, _, h, w = a.shape
        return _C.lpips_distance_forward(ra, rb, weight, eps).view(n, h, w)

    @staticmethod
    def backward(ctx, grad_d: Tensor):
        ra, rb, weight = ctx.saved_tensors
        grad = _C.lpips_distance_backward(grad_d.contiguous().view(-1), ra, rb, weight, ctx.eps)
        n, c, h, w = ctx.shape
        return grad.view(n, h, w, c).permute(0, 3, 1, 2), None, None, None


def lpips_layer_distance(a: Tensor, b: Tensor, weight: Tensor, eps: float = 1e-10) -> Tensor:
    """(B, H, W): per pixel, sum_c weight_c (a_c / (|a| + eps) - b_c / (|b| + eps))^2 over the channels of
    two (B, C, H, W) feature maps in channels-last layout (float32, CUDA): LPIPS' distance of one layer
    before its spatial mean. Differentiable in ``a`` only (``b`` must not need a gradient)."""
    if _C is None:
        raise RuntimeError(_WHY)
    if b.requires_grad:
        raise ValueError("fused_ops.lpips_layer_distance: only the first map can take a gradient")
    channels_last = torch.channels_last
    if not (a.is_contiguous(memory_format=channels_last) and b.is_contiguous(memory_format=channels_last)):
        raise ValueError("fused_ops.lpips_layer_distance: the maps must be channels-last contiguous")
    return _LayerDistance.apply(a, b, weight.reshape(-1).contiguous(), float(eps))


def max_pool2x2_fits(x: Tensor) -> bool:
    """Whether :func:`max_pool2x2` takes ``x``: a channels-last (N, C, H, W) CUDA map of float16, bfloat16
    or float32 with even H and W, its channels filling 16-byte vectors, 16-byte aligned."""
    return (x.is_cuda and x.dim() == 4 and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and x.is_contiguous(memory_format=torch.channels_last) and x.shape[2] % 2 == 0
            and x.shape[3] % 2 == 0 and x.shape[1] % (16 // x.element_size()) == 0 and x.data_ptr() % 16 == 0)


def max_pool2x2(x: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """``torch.nn.functional.max_pool2d(x, 2, 2)`` of a map :func:`max_pool2x2_fits` takes, and each output
    element's choice in one byte (0..3: row-major in its window) for the first ``keep`` images, (keep, H/2,
    W/2, C) uint8 -- torch keeps an int64 flat index. Ties and NaN as torch. No autograd: the backward is
    :func:`max_pool2x2_backward`."""
    if _C is None:
        raise RuntimeError(_WHY)
    y, choice = _C.max_pool2x2_forward(x, int(keep))
    return y, choice


def max_pool2x2_backward(grad: Tensor, choice: Tensor) -> Tensor:
    """The pool's input gradient, (K, C, 2h, 2w) channels-last, from the output gradient ``grad`` (K, C, h,
    w) and the forward's ``choice`` for those K images."""
    if _C is None:
        raise RuntimeError(_WHY)
    return _C.max_pool2x2_backward(grad.contiguous(memory_format=torch.channels_last), choice)


def _built():
    if _C is None:
        raise RuntimeError(_WHY)
    return _C


def lpips_half_prep(x: Tensor, y: Tensor, shift: Tensor, scale: Tensor, channels: int) -> Tensor:
    """(2n, channels, H, W) float16 channels-last: lpips' scaled input ``((2 v - 1) - shift) / scale`` of the
    images ``x`` then ``y`` ((n, 3, H, W) float32 in [0, 1], contiguous), zero in channels 3 and up."""
    return _built().lpips_half_prep(x, y, shift, scale, int(channels))


def lpips_half_prep_backward(g: Tensor, scale: Tensor, amax: Tensor, gout: Tensor) -> Tensor:
    """(n, 3, H, W) float32: the images' gradient from the first convolution's scaled input gradient ``g``
    ((n, CP, H, W) float16 channels-last), unscaled (the scale that ``amax`` and ``gout`` give) and taken
    through the scaling layer."""
    return _built().lpips_half_prep_backward(g, scale, amax, gout)


def lpips_half_distance(feat: Tensor, weight: Tensor, d: Tensor, offset: int, amax: Tensor,
                        eps: float = 1e-10) -> None:
    """One LPIPS layer from ``feat``, the (2n, C, H, W) float16 channels-last batch of both images (renders
    first): writes ``d[i, offset + pixel]`` = the pixel's distance / (H W) for render i, and raises ``amax``
    to the largest element of the layer's feature gradient for a unit output gradient."""
    _built().lpips_half_distance(feat, weight, float(eps), d, int(offset), amax)


def lpips_half_backward(feat: Tensor, weight: Tensor, gout: Tensor, amax: Tensor,
                        g_next: Tensor | None = None, choice: Tensor | None = None,
                        eps: float = 1e-10) -> Tensor:
    """The renders' scaled gradient at ``feat`` (its first n images), float16 channels-last: the layer
    distance's gradient for output gradient ``gout`` (n,), plus ``g_next`` (the next slice's gradient at
    its pool's output) routed through the pool's ``choice``, masked by the ReLU that produced ``feat``.
    Scaled by the power of two that brings ``amax * max|gout|`` to 4096."""
    return _built().lpips_half_backward(feat, weight, float(eps), gout, amax, g_next, choice)


def lpips_half_relu_mask(g: Tensor, y: Tensor) -> None:
    """``g`` (n, C, H, W) float16 channels-last becomes 0 where the ReLU output ``y`` (its first n images)
    is <= 0, in place (``threshold_backward``'s rule)."""
    _built().lpips_half_relu_mask(g, y)
