"""2D triangle rasterization at pixel centres with barycentrics, vectorised in numpy.

Shared by the UV embedding (texture-space triangles into a texel grid, docs/maths.md section 4) and the
synthetic subject's z-buffer mesh renderer (docs/maths.md section 12). Coordinates are continuous pixel
coordinates: pixel (row j, column i) spans [i, i+1) x [j, j+1) and is sampled at its centre
(i + 0.5, j + 0.5). A centre on a shared edge counts as inside (small tolerance), and where several
triangles cover a pixel the winner is deterministic: the nearest by interpolated depth when depths
are given (ties to the lower face index), else the lowest face index.

Work is done per (triangle, candidate pixel of its bounding box) pair in chunks, so memory stays
bounded for large triangles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EDGE_EPS = 1e-9  # relative tolerance on barycentrics so a centre on a shared edge is not lost


@dataclass
class RasterResult:
    """``face`` (H, W) int64 index of the covering triangle, -1 where empty; ``bary`` (H, W, 3)
    float64 screen-space barycentrics (zeros where empty); ``depth`` (H, W) interpolated depth
    (inf where empty; only with depths); ``bary_persp`` perspective-correct barycentrics (only with
    depths)."""

    face: np.ndarray
    bary: np.ndarray
    depth: np.ndarray | None = None
    bary_persp: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        return self.face >= 0


def _candidates(tri: np.ndarray, width: int, height: int, faces_idx: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face, px, py) for every pixel centre in each triangle's clipped bounding box."""
    lo = tri.min(axis=1)
    hi = tri.max(axis=1)
    x0 = np.clip(np.ceil(lo[:, 0] - 0.5), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(hi[:, 0] - 0.5), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(lo[:, 1] - 0.5), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(hi[:, 1] - 0.5), -1, height - 1).astype(np.int64)
    nx = np.maximum(x1 - x0 + 1, 0)
    ny = np.maximum(y1 - y0 + 1, 0)
    counts = nx * ny
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(tri)), counts)
    start = np.cumsum(counts) - counts
    local = np.arange(total) - np.repeat(start, counts)
    px = x0[owner] + local % np.maximum(nx[owner], 1)
    py = y0[owner] + local // np.maximum(nx[owner], 1)
    return faces_idx[owner], px, py


def _barycentrics(tri: np.ndarray, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentrics (K, 3) of points (px+0.5, py+0.5) in triangles tri (K,3,2); and a validity mask
    (non-degenerate triangle)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    qx = px + 0.5
    qy = py + 0.5
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    w0 = (b[:, 0] - qx) * (c[:, 1] - qy) - (b[:, 1] - qy) * (c[:, 0] - qx)
    w1 = (c[:, 0] - qx) * (a[:, 1] - qy) - (c[:, 1] - qy) * (a[:, 0] - qx)
    ok = np.abs(area) > 1e-14
    safe = np.where(ok, area, 1.0)
    l0 = w0 / safe
    l1 = w1 / safe
    bary = np.stack([l0, l1, 1.0 - l0 - l1], axis=-1)
    return bary, ok


def rasterize_triangles(tri: np.ndarray, width: int, height: int, depth: np.ndarray | None = None,
                        chunk: int = 2_000_000) -> RasterResult:
    """Rasterize triangles ``tri`` (F, 3, 2) given in continuous pixel coordinates into a
    ``height`` x ``width`` grid sampled at pixel centres.

    ``depth`` (F, 3), optional per-corner view depth (> 0): the nearest triangle wins (z-buffer,
    with 1/z interpolated linearly in screen space) and perspective-correct barycentrics are returned
    too. Triangles with any non-finite corner or non-positive depth are skipped.
    """
    tri = np.asarray(tri, dtype=np.float64)
    if tri.ndim != 3 or tri.shape[1:] != (3, 2):
        raise ValueError(f"rasterize_triangles: expected triangles of shape (F, 3, 2), got {tri.shape}")
    n_pix = width * height
    valid = np.all(np.isfinite(tri), axis=(1, 2))
    if depth is not None:
        depth = np.asarray(depth, dtype=np.float64).reshape(len(tri), 3)
        valid &= np.all(np.isfinite(depth), axis=1) & np.all(depth > 0, axis=1)
    faces_idx = np.nonzero(valid)[0]
    best_key = np.full(n_pix, np.inf)  # depth (or face index) of the current winner
    best_face = np.full(n_pix, -1, dtype=np.int64)
    best_bary = np.zeros((n_pix, 3))

    # Split the triangles so that each chunk's candidate count stays bounded.
    lo = tri[faces_idx].min(axis=1)
    hi = tri[faces_idx].max(axis=1)
    area_est = (np.clip(hi[:, 0] - lo[:, 0] + 1, 0, width + 1)
                * np.clip(hi[:, 1] - lo[:, 1] + 1, 0, height + 1))
    chunk_id = np.cumsum(area_est) // chunk
    splits = np.concatenate([[0], np.flatnonzero(np.diff(chunk_id)) + 1, [len(faces_idx)]])
    for s0, s1 in zip(splits[:-1], splits[1:]):
        sub = faces_idx[s0:s1]
        if len(sub) == 0:
            continue
        f, px, py = _candidates(tri[sub], width, height, sub)
        if len(f) == 0:
            continue
        bary, ok = _barycentrics(tri[f], px, py)
        inside = ok & np.all(bary >= -EDGE_EPS, axis=1)
        f, px, py, bary = f[inside], px[inside], py[inside], bary[inside]
        pix = py * width + px
        if depth is not None:
            inv_z = (bary / depth[f]).sum(axis=1)
            key = 1.0 / inv_z
        else:
            key = f.astype(np.float64)
        # Winner per pixel within the chunk: smallest key, then smallest face index (scatter-min,
        # no sort: exactly one candidate per covered pixel survives).
        loc_key = np.full(n_pix, np.inf)
        np.minimum.at(loc_key, pix, key)
        win = key == loc_key[pix]
        loc_face = np.full(n_pix, np.iinfo(np.int64).max)
        np.minimum.at(loc_face, pix[win], f[win])
        sel = np.flatnonzero(win & (f == loc_face[pix]))
        p = pix[sel]
        better = (key[sel] < best_key[p]) | ((key[sel] == best_key[p]) & (f[sel] < best_face[p]))
        p = p[better]
        best_key[p] = key[sel][better]
        best_face[p] = f[sel][better]
        best_bary[p] = bary[sel][better]

    face = best_face.reshape(height, width)
    bary = np.clip(best_bary, 0.0, 1.0)
    s = bary.sum(axis=1, keepdims=True)
    bary = np.where(s > 0, bary / np.where(s > 0, s, 1.0), 0.0).reshape(height, width, 3)
    if depth is None:
        return RasterResult(face=face, bary=bary)
    zbuf = best_key.reshape(height, width)
    persp = np.zeros_like(bary)
    m = face >= 0
    w = bary[m] / depth[face[m]]
    persp[m] = w / w.sum(axis=1, keepdims=True)
    return RasterResult(face=face, bary=bary, depth=zbuf, bary_persp=persp)
