"""What goes into and comes out of ``render()``: plain tensors, shared by both backends."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gaussian_renderer.sh import MAX_SH_DEGREE, sh_coefficient_count


@dataclass
class GaussianSet:
    """Activated Gaussians ready to rasterize (P of them).

    ``scales`` are exp-activated, ``rotations`` unit quaternions (w, x, y, z) that the rasterizer
    does not normalise again, ``opacities`` sigmoid-activated (P, 1). Colour is either ``shs``
    (P, K, 3), DC first, evaluated up to ``sh_degree``, or ``colors`` (P, 3), which wins when given.
    ``covariances`` (P, 6), the upper triangle (xx, xy, xz, yy, yz, zz) of each 3D covariance, win over
    ``scales`` and ``rotations`` when given (the scaling modifier does not apply to them): shapes that
    scales and a turn cannot hold, as the sheared views of ``gaussian_renderer.strip``.
    """

    means: Tensor
    scales: Tensor
    rotations: Tensor
    opacities: Tensor
    shs: Tensor | None = None
    colors: Tensor | None = None
    sh_degree: int = 0
    covariances: Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.means.shape[0])


UPPER = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))  # the (P, 6) covariance layout


def upper_to_full(upper: Tensor) -> Tensor:
    """(..., 6) upper triangles (xx, xy, xz, yy, yz, zz) -> symmetric (..., 3, 3) matrices."""
    a, b, c, d, e, f = upper.unbind(-1)
    return torch.stack([a, b, c, b, d, e, c, e, f], -1).unflatten(-1, (3, 3))


def full_to_upper(full: Tensor) -> Tensor:
    """Symmetric (..., 3, 3) matrices -> their (..., 6) upper triangles (xx, xy, xz, yy, yz, zz)."""
    return torch.stack([full[..., i, j] for i, j in UPPER], -1)


@dataclass
class RenderOutput:
    """``image`` (3, H, W); ``radii`` (P,) int, 0 for Gaussians not drawn; ``visibility_filter``
    = radii > 0; ``viewspace_points`` (P, 3) zeros whose gradient is the screen-space gradient in
    NDC units; ``depth`` and ``alpha`` (1, H, W) when asked for, else None."""

    image: Tensor
    radii: Tensor
    visibility_filter: Tensor
    viewspace_points: Tensor
    depth: Tensor | None = None
    alpha: Tensor | None = None


def validate_gaussians(gaussians: GaussianSet, background: Tensor) -> None:
    """Check shapes, dtypes and devices of a GaussianSet and background; raise a clear ValueError."""
    m = gaussians.means
    if m.dim() != 2 or m.shape[1] != 3:
        raise ValueError(f"render: gaussians.means must be (P, 3), got {tuple(m.shape)}")
    p = m.shape[0]
    if not m.is_floating_point() or m.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"render: gaussians.means must be float32 or float64, got {m.dtype}")
    checks = {"scales": (p, 3), "rotations": (p, 4)}
    for name, shape in checks.items():
        t = getattr(gaussians, name)
        if tuple(t.shape) != shape:
            raise ValueError(f"render: gaussians.{name} must be {shape}, got {tuple(t.shape)}")
    if tuple(gaussians.opacities.shape) not in ((p, 1), (p,)):
        raise ValueError(f"render: gaussians.opacities must be (P, 1), got "
                         f"{tuple(gaussians.opacities.shape)}")
    if gaussians.colors is not None:
        if tuple(gaussians.colors.shape) != (p, 3):
            raise ValueError(f"render: gaussians.colors must be (P, 3), got {tuple(gaussians.colors.shape)}")
    elif gaussians.shs is not None:
        deg = gaussians.sh_degree
        if not 0 <= deg <= MAX_SH_DEGREE:
            raise ValueError(f"render: sh_degree must be in 0..{MAX_SH_DEGREE}, got {deg}")
        need = sh_coefficient_count(deg)
        s = gaussians.shs
        if s.dim() != 3 or s.shape[0] != p or s.shape[2] != 3 or s.shape[1] < need:
            raise ValueError(f"render: gaussians.shs must be (P, K>={need}, 3) for sh_degree {deg}, "
                             f"got {tuple(s.shape)}")
    else:
        raise ValueError("render: gaussians need shs or colors (or pass override_color)")
    if background.numel() != 3:
        raise ValueError(f"render: background must have 3 values, got shape {tuple(background.shape)}")
    if gaussians.covariances is not None and tuple(gaussians.covariances.shape) != (p, 6):
        raise ValueError(f"render: gaussians.covariances must be (P, 6), got "
                         f"{tuple(gaussians.covariances.shape)}")
    for name in ("scales", "rotations", "opacities", "shs", "colors", "covariances"):
        t = getattr(gaussians, name)
        if t is not None and t.device != m.device:
            raise ValueError(f"render: gaussians.{name} is on {t.device} but means are on {m.device}")
