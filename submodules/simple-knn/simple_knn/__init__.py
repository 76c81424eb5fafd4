"""Nearest-neighbour distances for Gaussian initialisation (docs/maths.md sections 6 and 7), pure torch.

``distCUDA2`` keeps the original extension's name and call so callers need no change, but it is an
exact brute-force search in torch, runs on any device, and bounds memory by chunking the rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["distCUDA2", "mean_knn_sq_dist"]

#: Elements of one (rows x points) distance block; ~64 MB per float32 temporary.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def mean_knn_sq_dist(points: Tensor, k: int = 3, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Tensor:
    """Per point, the mean squared Euclidean distance to its ``k`` nearest *other* points.

    The point itself is excluded by index, so a duplicate point counts as a neighbour at distance 0.
    With fewer than ``k`` other points the mean is over all of them. Exact: squared distances are
    summed coordinate by coordinate ((dx^2 + dy^2) + dz^2), not via the |a|^2 + |b|^2 - 2ab shortcut.
    Returns (P,) in the points' dtype and device; no gradient is tracked.
    """
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"distCUDA2: points must be (P, 3), got {tuple(points.shape)}")
    if not points.is_floating_point():
        raise ValueError(f"distCUDA2: points must be floating point, got {points.dtype}")
    n = points.shape[0]
    if n == 0:
        return points.new_zeros(0)
    if n == 1:
        raise ValueError("distCUDA2: needs at least 2 points (a single point has no neighbour)")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("distCUDA2: points contain NaN or Inf; clean the point cloud first")
    kk = min(k, n - 1)
    pts = points.detach()
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    rows = max(1, chunk_elements // n)
    out = torch.empty(n, dtype=pts.dtype, device=pts.device)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        dx = x[s:e, None] - x[None, :]
        dy = y[s:e, None] - y[None, :]
        dz = z[s:e, None] - z[None, :]
        d2 = dx * dx
        d2 += dy * dy
        d2 += dz * dz
        r = torch.arange(e - s, device=pts.device)
        d2[r, r + s] = torch.inf  # exclude the point itself by index, not by distance
        nearest = torch.topk(d2, kk, dim=1, largest=False, sorted=False).values
        out[s:e] = nearest.mean(dim=1)
    return out


def distCUDA2(points: Tensor) -> Tensor:  # noqa: N802 - the original extension's name
    """Mean squared distance from each point to its 3 nearest other points, (P, 3) -> (P,)."""
    return mean_knn_sq_dist(points, k=3)
