"""Training losses (docs/maths.md section 9): Huber on the image and the mouth, opacity regulariser.

The perceptual term lives in :mod:`utils.lpips_loader`; this module has no network and no weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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


@dataclass
class LossTerms:
    """The loss of one iteration and its parts (tensors; read them only at logging steps)."""

    total: Tensor
    image: Tensor
    mouth: Tensor
    perceptual: Tensor | None = None
    opacity: Tensor | None = None
    offset: Tensor | None = None


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
