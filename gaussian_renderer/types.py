"""What goes into and comes out of ``render()``: plain tensors, shared by both backends."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class GaussianSet:
    """Activated Gaussians ready to rasterize (P of them).

    ``scales`` are exp-activated, ``rotations`` unit quaternions (w, x, y, z) that the rasterizer
    does not normalise again, ``opacities`` sigmoid-activated (P, 1). Colour is either ``shs``
    (P, K, 3), DC first, evaluated up to ``sh_degree``, or ``colors`` (P, 3), which wins when given.
    """

    means: Tensor
    scales: Tensor
    rotations: Tensor
    opacities: Tensor
    shs: Tensor | None = None
    colors: Tensor | None = None
    sh_degree: int = 0

    @property
    def count(self) -> int:
        return int(self.means.shape[0])


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
