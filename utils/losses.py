"""Training losses (docs/maths.md section 9): Huber on the image and the mouth, opacity and surface priors.

The perceptual term lives in :mod:`utils.lpips_loader`; this module has no network and no weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from utils.rotations import quaternion_to_matrix

HUBER_DELTA = 0.1
MOUTH_WEIGHT = 40.0


def huber(x: Tensor, y: Tensor, delta: float = HUBER_DELTA) -> Tensor:
    """Mean over all elements of 0.5 d^2 where |d| < delta, else delta (|d| - delta / 2), d = x - y."""
    if delta <= 0:
        raise ValueError(f"huber: delta must be positive, got {delta}")
    d = (x - y).abs()
    return torch.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta)).mean()


def opacity_regulariser(opacities: Tensor) -> Tensor:
    """mean((1 - opacity)^2) over the activated opacities: pushes Gaussians to be opaque."""
    return ((1.0 - opacities) ** 2).mean()


def offset_regulariser(means: Tensor, base_positions: Tensor) -> Tensor:
    """mean ||position - base position||^2 (squared metres): keeps the Gaussians near their triangles, so
    that side views do not show what floats in front of or behind the surface."""
    return (means - base_positions).pow(2).sum(-1).mean()


def normal_offset_regulariser(means: Tensor, base_positions: Tensor, normals: Tensor) -> Tensor:
    """mean ((position - base position) . n)^2 (squared metres), n the unit normal of each Gaussian's
    triangle: the distance from the triangle's plane only, so Gaussians may still slide along the surface
    (which the expression detail needs) but not float in front of or behind it."""
    return ((means - base_positions) * normals).sum(-1).pow(2).mean()


def normal_thickness_regulariser(scales: Tensor, rotations: Tensor, normals: Tensor) -> Tensor:
    """mean over Gaussians of n^T Sigma n / trace(Sigma), Sigma = R diag(s^2) R^T: the share of each
    Gaussian's variance along its triangle's normal (1/3 for a ball, 0 for a disc in the surface). A
    Gaussian stretched along the viewing ray looks small from the front and becomes a streak from the
    side; this pulls the Gaussians flat onto the surface. ``rotations`` are unit quaternions (w first)."""
    local = (quaternion_to_matrix(rotations).transpose(-1, -2) @ normals.unsqueeze(-1)).squeeze(-1)
    var = scales.pow(2)
    return ((var * local.pow(2)).sum(-1) / var.sum(-1)).mean()


def over_background(image: Tensor, coverage: Tensor, old: Tensor, new: Tensor) -> Tensor:
    """``image`` (3,H,W), composited with ``coverage`` (1,H,W) over the colour ``old`` (3,), recomposited
    over ``new`` (3,): image + (1 - coverage) (new - old)."""
    return image + (1.0 - coverage) * (new - old).view(3, 1, 1)


@dataclass
class LossTerms:
    """The loss of one iteration and its parts (tensors; read them only at logging steps)."""

    total: Tensor
    image: Tensor
    mouth: Tensor
    perceptual: Tensor | None = None
    opacity: Tensor | None = None
    offset: Tensor | None = None
    normal_offset: Tensor | None = None
    thickness: Tensor | None = None

    def detached(self) -> LossTerms:
        """The same values without their autograd graph."""
        return LossTerms(**{k: None if v is None else v.detach() for k, v in vars(self).items()})


def photometric_loss(render: Tensor, gt: Tensor, mouth_mask: Tensor, *, delta: float = HUBER_DELTA,
                     mouth_weight: float = MOUTH_WEIGHT) -> LossTerms:
    """huber(render, gt) + 40 huber(render * mouth, gt * mouth): the two Huber terms of docs/maths.md
    section 9.

    ``render`` and ``gt`` are (3, H, W), ``mouth_mask`` (1, H, W) or (H, W) in [0, 1]."""
    if render.shape != gt.shape:
        raise ValueError(f"photometric_loss: render {tuple(render.shape)} and gt {tuple(gt.shape)} differ")
    if mouth_mask.dim() == 2:
        mouth_mask = mouth_mask.unsqueeze(0)
    image = huber(render, gt, delta)
    mouth = huber(render * mouth_mask, gt * mouth_mask, delta)
    return LossTerms(total=image + mouth_weight * mouth, image=image, mouth=mouth)
