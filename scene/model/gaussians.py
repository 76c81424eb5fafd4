"""Per-Gaussian parameters (docs/maths.md section 6): SH colour, opacity, base log-scale, base rotation.

The number of Gaussians is fixed (no densification or pruning). Per frame :meth:`GaussianModel.compose`
combines the parameters with the deformation outputs into an activated :class:`GaussianSet`:

- position = base position + d_xyz
- rotation = normalize(base_rotation ⊗ (exp(d_rot0), d_rot1, d_rot2, d_rot3))  (Hamilton, w first)
- scale = exp(base_log_scale * exp(d_scale))  (the coefficient multiplies the *log*-scale)
- opacity = sigmoid(opacity parameter, or the predicted logit with conditional appearance)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gaussian_renderer.types import GaussianSet
from scene.model.deformation import DeformationOutput
from utils.optim import make_adam
from utils.rotations import quaternion_multiply

# docs/maths.md section 6 learning rates of the Gaussian-parameter optimiser (eps 1e-15 for all groups).
GAUSSIAN_LRS = {
    "f_dc": 0.0025,
    "f_rest": 0.0025 / 20.0,
    "opacity": 0.05,
    "scaling": 0.005,
    "rotation": 0.001,
}
GAUSSIAN_EPS = 1e-15
SH_DEGREE_INTERVAL = 500
INIT_OPACITY = 0.1
MIN_DIST2 = 1e-7


def sh_degree_for_iteration(iteration: int, max_degree: int = 3) -> int:
    """Active SH degree while rendering (1-based) ``iteration``: starts at 0, +1 every 500, up to 3."""
    return min(max_degree, max(0, iteration) // SH_DEGREE_INTERVAL)


def knn_mean_sq_dist(points: Tensor) -> Tensor:
    """Per point, mean squared distance to its 3 nearest other points (``simple_knn.distCUDA2``)."""
    try:
        from simple_knn import distCUDA2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("simple_knn is not importable: install the project (pip install -e . or "
                          "./install.sh) so that submodules/simple-knn is on the path") from exc
    return distCUDA2(points)


def compose_geometry(base: Tensor, d_xyz: Tensor, d_rot: Tensor, d_scale: Tensor, rotation: Tensor,
                     log_scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(means, rotations, scales) from base positions (N,3), the heads' offsets and the rotation (N,4) /
    log-scale (N,3) parameters (docs/maths.md section 5): base + d_xyz; the parameter quaternion times
    (exp(d_rot0), d_rot1..3), normalised; exp(log_scale * exp(d_scale))."""
    delta = torch.cat([torch.exp(d_rot[:, :1]), d_rot[:, 1:]], dim=-1)
    rotations = F.normalize(quaternion_multiply(rotation, delta), dim=-1)
    return base + d_xyz, rotations, torch.exp(log_scale * torch.exp(d_scale))


class GaussianModel(nn.Module):
    """N Gaussians' parameters. ``features_dc`` (N,1,3), ``features_rest`` (N,(D+1)^2-1,3), ``opacity``
    (N,1) pre-sigmoid, ``log_scale`` (N,3), ``rotation`` (N,4) quaternion w first (unnormalised)."""

    def __init__(self, n_gaussians: int, max_sh_degree: int = 3) -> None:
        super().__init__()
        if n_gaussians <= 0:
            raise ValueError(f"GaussianModel needs at least one Gaussian, got {n_gaussians}")
        if not 0 <= max_sh_degree <= 3:
            raise ValueError(f"max_sh_degree must be in 0..3, got {max_sh_degree}")
        self.n_gaussians, self.max_sh_degree = n_gaussians, max_sh_degree
        self.active_sh_degree = 0
        n_rest = (max_sh_degree + 1) ** 2 - 1
        self.features_dc = nn.Parameter(torch.zeros(n_gaussians, 1, 3))
        self.features_rest = nn.Parameter(torch.zeros(n_gaussians, n_rest, 3))
        self.opacity = nn.Parameter(torch.full((n_gaussians, 1), math.log(INIT_OPACITY / (1 - INIT_OPACITY))))
        self.log_scale = nn.Parameter(torch.zeros(n_gaussians, 3))
        rot = torch.zeros(n_gaussians, 4)
        rot[:, 0] = 1.0
        self.rotation = nn.Parameter(rot)

    @torch.no_grad()
    def initialize(self, positions: Tensor, dist2: Tensor | None = None) -> None:
        """docs/maths.md section 6 init from positions (N,3): SH zero, log-scale = log(sqrt(max(1e-7, mean
        squared distance to the 3 nearest other Gaussians))) on all axes, rotation (1,0,0,0), opacity
        logit(0.1).
        ``dist2`` (N,) may be given precomputed; by default ``simple_knn.distCUDA2`` computes it."""
        if positions.shape != (self.n_gaussians, 3):
            raise ValueError(f"initialize: positions must be ({self.n_gaussians}, 3), "
                             f"got {tuple(positions.shape)}")
        if dist2 is None:
            dist2 = knn_mean_sq_dist(positions.detach().float())
        dist2 = dist2.to(self.log_scale).reshape(-1, 1)
        self.log_scale.copy_(torch.log(torch.sqrt(torch.clamp_min(dist2, MIN_DIST2))).expand(-1, 3))
        self.features_dc.zero_()
        self.features_rest.zero_()
        self.opacity.fill_(math.log(INIT_OPACITY / (1 - INIT_OPACITY)))
        self.rotation.zero_()
        self.rotation[:, 0] = 1.0

    @property
    def shs(self) -> Tensor:
        """(N, (D+1)^2, 3) SH coefficients, DC first."""
        return torch.cat([self.features_dc, self.features_rest], dim=1)

    def compose(self, base_positions: Tensor, deform: DeformationOutput) -> GaussianSet:
        """The activated Gaussians of one frame from base positions (N,3) and the heads' outputs."""
        means, rotations, scales = compose_geometry(base_positions, deform.d_xyz, deform.d_rot,
                                                    deform.d_scale, self.rotation, self.log_scale)
        return self.activated(means, rotations, scales, deform)

    def activated(self, means: Tensor, rotations: Tensor, scales: Tensor, deform: DeformationOutput
                  ) -> GaussianSet:
        """The frame's :class:`GaussianSet` from its composed means, rotations and scales: opacities and
        colours from the parameters, or from the heads' conditional appearance outputs where they exist."""
        logits = self.opacity if deform.opacity_logits is None else deform.opacity_logits
        opacities = torch.sigmoid(logits)
        if deform.colors is not None:
            return GaussianSet(means, scales, rotations, opacities, colors=deform.colors,
                               sh_degree=self.active_sh_degree)
        return GaussianSet(means, scales, rotations, opacities, shs=self.shs, sh_degree=self.active_sh_degree)

    def update_sh_degree(self, iteration: int) -> int:
        """Set (and return) the active SH degree for ``iteration`` (schedule: +1 every 500, up to max)."""
        self.active_sh_degree = sh_degree_for_iteration(iteration, self.max_sh_degree)
        return self.active_sh_degree

    def param_groups(self) -> list[dict]:
        """The five optimiser groups of docs/maths.md section 6, named like 3DGS."""
        return [
            {"params": [self.features_dc], "lr": GAUSSIAN_LRS["f_dc"], "name": "f_dc"},
            {"params": [self.features_rest], "lr": GAUSSIAN_LRS["f_rest"], "name": "f_rest"},
            {"params": [self.opacity], "lr": GAUSSIAN_LRS["opacity"], "name": "opacity"},
            {"params": [self.log_scale], "lr": GAUSSIAN_LRS["scaling"], "name": "scaling"},
            {"params": [self.rotation], "lr": GAUSSIAN_LRS["rotation"], "name": "rotation"},
        ]

    def make_optimizer(self) -> torch.optim.Adam:
        """Adam over the five groups, eps 1e-15 (betas default 0.9, 0.999); fused on CUDA
        (utils.optim.make_adam)."""
        return make_adam(self.param_groups(), lr=0.0, eps=GAUSSIAN_EPS)

