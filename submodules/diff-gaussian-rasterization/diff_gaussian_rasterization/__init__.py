"""Differentiable tile-based Gaussian rasterizer (docs/maths.md section 7), the project's own CUDA extension.

API-compatible with the original ``diff_gaussian_rasterization``: build a
:class:`GaussianRasterizationSettings` (view and full-projection matrices *transposed*, as the original
takes them; the principal point travels in ``projmatrix``), wrap it in a :class:`GaussianRasterizer` and call
it with the Gaussians. It returns ``(color, radii)`` exactly like the original, or
``(color, radii, depth, alpha)`` when ``return_depth`` / ``return_alpha`` is set in the settings
(depth = sum(alpha_i T_i z_i), alpha = 1 - T_final, both (1, H, W) and differentiable; the one not asked
for is ``None``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "diff_gaussian_rasterization: the compiled CUDA extension diff_gaussian_rasterization._C is missing "
        f"({exc}). Build it from the repository root with a CUDA toolkit and torch installed: "
        "`python setup.py build_ext --inplace` (or `pip install --no-build-isolation -e .`); set "
        "TORCH_CUDA_ARCH_LIST (e.g. 9.0) when no GPU is visible. Without it, use the torch backend "
        "(GAUSSIAN_RENDERER_BACKEND=torch)."
    ) from exc

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians"]


class GaussianRasterizationSettings(NamedTuple):
    """Camera and image settings of one rasterization (field order as in the original)."""

    image_height: int
    image_width: int
    tanfovx: float
    tanfovy: float
    bg: Tensor
    scale_modifier: float
    viewmatrix: Tensor
    projmatrix: Tensor
    sh_degree: int
    campos: Tensor
    prefiltered: bool
    debug: bool
    return_depth: bool = False
    return_alpha: bool = False
    # 0: the (tile, Gaussian) pair list is sized exactly, which reads its length back to the host (one sync
    # per call). N > 0: a list of N slots, no host sync (the call can be captured in a CUDA graph); pairs past
    # N are dropped, so the image misses them: compare ``pair_count`` with N at a sync point of your choice.
    pair_capacity: int = 0
    # (1,) int32 CUDA tensor written on the device with the number of pairs the frame needed, or None.
    pair_count: Tensor | None = None


def _empty(like: Tensor) -> Tensor:
    return torch.empty(0, device=like.device, dtype=torch.float32)


def _f32(t: Tensor | None, name: str, like: Tensor) -> Tensor:
    """Contiguous float32 on the means' device, or an empty tensor for None."""
    if t is None:
        return _empty(like)
    if isinstance(t, Tensor) and t.dtype == torch.float32 and t.device == like.device and t.is_contiguous():
        return t
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t)
    if t.device != like.device:
        raise ValueError(f"diff_gaussian_rasterization: {name} is on {t.device} but means3D is on "
                         f"{like.device}; move every input to the same CUDA device")
    return t.to(torch.float32).contiguous()


def _pair_count(t: Tensor | None, like: Tensor) -> Tensor:
    """The settings' pair-count output, checked (one int32 element on the means' device), or empty."""
    if t is None:
        return torch.empty(0, device=like.device, dtype=torch.int32)
    if t.dtype != torch.int32 or t.numel() != 1 or t.device != like.device or not t.is_contiguous():
        raise ValueError(f"diff_gaussian_rasterization: pair_count must be one contiguous int32 element on "
                         f"{like.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    return t


def rasterize_gaussians(means3D: Tensor, means2D: Tensor, sh: Tensor | None, colors_precomp: Tensor | None,
                        opacities: Tensor, scales: Tensor | None, rotations: Tensor | None,
                        cov3Ds_precomp: Tensor | None, raster_settings: GaussianRasterizationSettings):
    """Functional form of :class:`GaussianRasterizer` (same returns)."""
    color, radii, depth, alpha = _RasterizeGaussians.apply(
        means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp, raster_settings)
    s = raster_settings
    if not (s.return_depth or s.return_alpha):
        return color, radii
    return color, radii, depth if s.return_depth else None, alpha if s.return_alpha else None


class _RasterizeGaussians(torch.autograd.Function):
    """Always returns (color, radii, depth, alpha); depth/alpha are empty unless asked for."""

    @staticmethod
    def forward(ctx, means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
                raster_settings):
        s = raster_settings
        m = means3D.to(torch.float32).contiguous()
        bg, colors = _f32(s.bg, "bg", m), _f32(colors_precomp, "colors_precomp", m)
        scl, rot = _f32(scales, "scales", m), _f32(rotations, "rotations", m)
        cov, shs = _f32(cov3Ds_precomp, "cov3D_precomp", m), _f32(sh, "shs", m)
        view, proj = _f32(s.viewmatrix, "viewmatrix", m), _f32(s.projmatrix, "projmatrix", m)
        campos = _f32(s.campos, "campos", m)
        num_rendered, outs = _C.rasterize_gaussians(
            bg, m, colors, _f32(opacities, "opacities", m), scl, rot, float(s.scale_modifier), cov, view,
            proj, float(s.tanfovx), float(s.tanfovy), int(s.image_height), int(s.image_width), shs,
            int(s.sh_degree), campos, bool(s.prefiltered), bool(s.return_depth), bool(s.return_alpha),
            bool(s.debug), int(s.pair_capacity), _pair_count(s.pair_count, m))
        color, radii, depth, alpha, fbuf, clamped, point_list, ranges, final_T, n_contrib = outs
        ctx.raster_settings = s
        ctx.num_rendered = num_rendered
        ctx.has = (sh is not None, colors_precomp is not None, scales is not None, rotations is not None,
                   cov3Ds_precomp is not None)
        ctx.save_for_backward(bg, m, colors, scl, rot, cov, view, proj, shs, campos, radii, fbuf, clamped,
                              point_list, ranges, final_T, n_contrib)
        ctx.mark_non_differentiable(radii)
        return color, radii, depth, alpha

    @staticmethod
    def backward(ctx, grad_color, _grad_radii, grad_depth, grad_alpha):
        s = ctx.raster_settings
        (bg, means3D, colors, scales, rotations, cov3D, view, proj, sh, campos, radii, fbuf, clamped,
         point_list, ranges, final_T, n_contrib) = ctx.saved_tensors

        def _grad(g: Tensor | None, wanted: bool) -> Tensor:
            if g is None or not wanted or g.numel() == 0:
                return _empty(means3D)
            return g.to(torch.float32).contiguous()

        if grad_color is None:
            grad_color = torch.zeros(3, s.image_height, s.image_width, device=means3D.device)
        grad_color = grad_color.to(torch.float32).contiguous()
        (d_means2D, d_colors, d_opacity, d_means3D, d_cov3D, d_sh, d_scales, d_rots) = \
            _C.rasterize_gaussians_backward(
                bg, means3D, radii, colors, scales, rotations, float(s.scale_modifier), cov3D, view, proj,
                float(s.tanfovx), float(s.tanfovy), grad_color, _grad(grad_depth, s.return_depth),
                _grad(grad_alpha, s.return_alpha), sh, int(s.sh_degree), campos, fbuf, clamped, point_list,
                ranges, final_T, n_contrib, bool(s.debug))
        has_sh, has_colors, has_scales, has_rots, has_cov = ctx.has
        return (d_means3D, d_means2D, d_sh if has_sh and not has_colors else None,
                d_colors if has_colors else None, d_opacity, d_scales if has_scales and not has_cov else None,
                d_rots if has_rots and not has_cov else None, d_cov3D if has_cov else None, None)


class GaussianRasterizer(nn.Module):
    """``forward(means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None, rotations=None,
    cov3D_precomp=None)`` -> ``(color (3,H,W), radii (P,) int32)`` [+ ``(depth, alpha)`` on request]."""

    def __init__(self, raster_settings: GaussianRasterizationSettings):
        super().__init__()
        self.raster_settings = raster_settings

    def markVisible(self, positions: Tensor) -> Tensor:  # noqa: N802 - the original's name
        """Boolean mask of the points in front of the near cull plane (view z > 0.2)."""
        with torch.no_grad():
            return _C.mark_visible(positions.to(torch.float32).contiguous(),
                                   self.raster_settings.viewmatrix.to(torch.float32).contiguous())

    def forward(self, means3D: Tensor, means2D: Tensor, opacities: Tensor, shs: Tensor | None = None,
                colors_precomp: Tensor | None = None, scales: Tensor | None = None,
                rotations: Tensor | None = None, cov3D_precomp: Tensor | None = None):
        if (shs is None) == (colors_precomp is None):
            raise ValueError("GaussianRasterizer: give exactly one of shs or colors_precomp")
        if ((scales is None or rotations is None) and cov3D_precomp is None) or (
                (scales is not None or rotations is not None) and cov3D_precomp is not None):
            raise ValueError("GaussianRasterizer: give either scales and rotations, or cov3D_precomp")
        return rasterize_gaussians(means3D, means2D, shs, colors_precomp, opacities, scales, rotations,
                                   cov3D_precomp, self.raster_settings)
