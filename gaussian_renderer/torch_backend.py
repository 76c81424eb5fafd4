"""Pure-PyTorch reference Gaussian rasterizer (docs/maths.md section 7), differentiable by autograd.

Runs on any device and in float32 or float64. Forward semantics follow the original tile
rasterizer rule for rule (near cull, EWA covariance with the guard-band clamp, 3-sigma radius,
16x16 tile rectangle, depth order with index tie-break, 0.99 cap, 1/255 skip, stop before T < 1e-4)
and its floating-point evaluation order, so its float32 image matches the original's to ~1e-7.

Pipeline: (1) preprocess every Gaussian without gradients to find which ones are drawn (radius,
tile rectangle); (2) recompute the differentiable quantities for the drawn ones only (culled and
non-finite Gaussians never enter the graph, so they get exactly zero gradient); (3) list the
(cell, Gaussian) pairs sorted by (cell, depth, index), where a cell is a block of pixels inside a
16x16 tile and a Gaussian is listed for the cells of its tile rectangle that it can reach with
alpha >= 1/255 (dropping the others changes no pixel: the 1/255 rule skips them); (4) blend cells
in memory-bounded chunks as dense [cells, pixels, Gaussians] blocks, walking the depth-sorted lists
in segments so that cells whose pixels have all stopped leave early (chunks are checkpointed when
gradients are needed and the scene is large). Gradients come from autograd.

float32 parity details copied from the original: the sums of its matrix products in its order,
CUDA's fused multiply-adds in the point transforms and the 2D determinant (emulated through
float64), NDC -> pixel in double, the original's float constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from gaussian_renderer.sh import eval_sh
from gaussian_renderer.types import GaussianSet, RenderOutput

BLOCK = 16  # tile side in pixels
NEAR_CULL = 0.2  # view-space z at or below which a Gaussian is culled
GUARD = 1.3  # x/z and y/z clamp for the EWA Jacobian, in units of tan(fov/2)
LOW_PASS = 0.3
ALPHA_CAP = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
PROJ_EPS = 1e-7
MAX_RADIUS = 1 << 30  # radii above this are reported clamped (int32 output)

#: Elements (cells * pixels * Gaussians) of one dense blending block: ~16 MB per float32 temporary on
#: the CPU; 4x that on a GPU, where fewer, larger launches pay off (about 1.3 GB transient at most).
DEFAULT_CHUNK_ELEMENTS = 1 << 22
DEFAULT_CHUNK_ELEMENTS_CUDA = 1 << 24
#: Side of the pixel cells the blending works in: each 16x16 tile's Gaussian list is cut per cell to the
#: Gaussians that can reach alpha >= 1/255 there (exact: the others are skipped by the 1/255 rule anyway).
DEFAULT_CELL = 8
#: Gaussians per blending step along each cell's depth-sorted list; cells whose pixels have all stopped
#: (T would fall below 1e-4) leave after a step, which saves most of the work on opaque scenes.
DEFAULT_SEGMENT = 64
DEFAULT_SEGMENT_CUDA = 256  # on a GPU the launch count matters more than the skipped work


@dataclass
class _CameraConsts:
    """Camera quantities in the compute dtype, rounded as the original rounds them (float32)."""

    width: int
    height: int
    view: Tensor  # (4, 4) row-major world-to-view
    full: Tensor  # (4, 4) row-major F = P V
    campos: Tensor  # (3,)
    tanfovx: Tensor
    tanfovy: Tensor
    focal_x: Tensor
    focal_y: Tensor
    lim_x: Tensor
    lim_y: Tensor


def _camera_consts(camera: Any, dtype: torch.dtype, device: torch.device) -> _CameraConsts:
    for name in ("image_width", "image_height", "tanfovx", "tanfovy", "world_view_transform",
                 "full_proj_transform", "camera_center"):
        if not hasattr(camera, name):
            raise TypeError(f"render: camera lacks attribute {name!r}; pass a scene.data.cameras.Camera")
    width, height = int(camera.image_width), int(camera.image_height)
    if width <= 0 or height <= 0:
        raise ValueError(f"render: image size must be positive, got {width}x{height}")
    view = torch.as_tensor(camera.world_view_transform).to(device=device, dtype=dtype)
    full = torch.as_tensor(camera.full_proj_transform).to(device=device, dtype=dtype)
    campos = torch.as_tensor(camera.camera_center).to(device=device, dtype=dtype).reshape(3)
    if view.shape != (4, 4) or full.shape != (4, 4):
        raise ValueError("render: camera world_view_transform and full_proj_transform must be 4x4")

    def scalar(v: float) -> Tensor:
        return torch.tensor(v, dtype=dtype, device=device)

    tx, ty = scalar(float(camera.tanfovx)), scalar(float(camera.tanfovy))
    return _CameraConsts(width, height, view, full, campos, tx, ty,
                         width / (2.0 * tx), height / (2.0 * ty), GUARD * tx, GUARD * ty)


def fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """a * b + c rounded once, as CUDA's fused multiply-add (float32: exact in float64, then rounded)."""
    if a.dtype == torch.float32 or (torch.is_tensor(b) and b.dtype == torch.float32):
        return (a.double() * b.double() + c.double()).float()
    return a * b + c


def _affine_rows(m: Tensor, x: Tensor, y: Tensor, z: Tensor, rows: range) -> list[Tensor]:
    """Rows of m @ (x, y, z, 1) as the original's kernels compute them (nvcc fuses the chain into FMAs)."""
    return [fma(m[i, 2], z, fma(m[i, 1], y, m[i, 0] * x)) + m[i, 3] for i in rows]


def ndc_to_pixel(v: Tensor, size: int) -> Tensor:
    """NDC -> internal pixel coordinate (pixel i centred at i); computed in double like the original."""
    return (((v.double() + 1.0) * size - 1.0) * 0.5).to(v.dtype)


def covariance_3d(scales: Tensor, rotations: Tensor, modifier: float) -> tuple[Tensor, ...]:
    """Upper triangle (xx, xy, xz, yy, yz, zz) of R S S^T R^T, quaternion (w, x, y, z) used as passed."""
    s = scales * modifier
    r, x, y, z = rotations.unbind(-1)
    # Rows of R^T (the original's glm matrix read row by row); M[k][c] = s_k * Rt[k][c].
    rt = (
        (1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y + r * z), 2.0 * (x * z - r * y)),
        (2.0 * (x * y - r * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z + r * x)),
        (2.0 * (x * z + r * y), 2.0 * (y * z - r * x), 1.0 - 2.0 * (x * x + y * y)),
    )
    m = [[s[:, k] * rt[k][c] for c in range(3)] for k in range(3)]

    def sig(a: int, b: int) -> Tensor:
        return (m[0][b] * m[0][a] + m[1][b] * m[1][a]) + m[2][b] * m[2][a]

    return sig(0, 0), sig(1, 0), sig(2, 0), sig(1, 1), sig(2, 1), sig(2, 2)


def _guard_clamp(t: Tensor, tz: Tensor, lim: Tensor) -> Tensor:
    """x used in the Jacobian: (x/z clamped to +-lim) * z. Inside the band the value is the original's
    (x/z)*z with gradient 1 to x; outside it is the constant-in-x +-lim*z, detached (docs/maths.md
    section 7)."""
    ratio = t / tz
    inside = (ratio >= -lim) & (ratio <= lim)
    rounded = (ratio * tz).detach()
    inner = t + (rounded - t.detach())
    outer = (torch.clamp(ratio, -lim, lim) * tz).detach()
    return torch.where(inside, inner, outer)


def covariance_2d(p_view: tuple[Tensor, Tensor, Tensor], cov3d: tuple[Tensor, ...], view: Tensor,
                  focal_x: Tensor, focal_y: Tensor, lim_x: Tensor, lim_y: Tensor) -> tuple[Tensor, ...]:
    """Screen-space covariance (a, b, c) = J W Sigma W^T J^T + 0.3 I, in the original's sum order."""
    tx, ty, tz = p_view
    tx = _guard_clamp(tx, tz, lim_x)
    ty = _guard_clamp(ty, tz, lim_y)
    tz2 = tz * tz
    j00 = focal_x / tz
    j02 = -(focal_x * tx) / tz2
    j11 = focal_y / tz
    j12 = -(focal_y * ty) / tz2
    v = view
    # T = W J with W = V_rot^T: T[r][0] = V0r j00 + V2r j02, T[r][1] = V1r j11 + V2r j12, T[r][2] = 0.
    t = [(v[0, r] * j00 + v[2, r] * j02, v[1, r] * j11 + v[2, r] * j12) for r in range(3)]
    s0, s1, s2, s3, s4, s5 = cov3d
    vk = ((s0, s1, s2), (s1, s3, s4), (s2, s4, s5))

    def a_elem(r: int, c: int) -> Tensor:  # (T^T Vrk)[r][c]
        return (t[0][r] * vk[0][c] + t[1][r] * vk[1][c]) + t[2][r] * vk[2][c]

    a_rows = [[a_elem(r, c) for c in range(3)] for r in range(2)]

    def cov_elem(r: int, c: int) -> Tensor:  # (T^T Vrk T)[r][c]
        return (a_rows[r][0] * t[0][c] + a_rows[r][1] * t[1][c]) + a_rows[r][2] * t[2][c]

    return cov_elem(0, 0) + LOW_PASS, cov_elem(1, 0), cov_elem(1, 1) + LOW_PASS


@dataclass
class _Projected:
    depth: Tensor  # (N,) view-space z
    xy: Tensor  # (N, 2) internal pixel coordinates
    conic: Tensor  # (N, 3) inverse 2D covariance (a, b, c)
    det: Tensor  # (N,)
    cov: Tensor  # (N, 2) diagonal of the 2D covariance (with the low-pass)
    radius: Tensor  # (N,) float, ceil(3 sqrt(lambda_max))


def _project(means: Tensor, cov3d: tuple[Tensor, ...], cam: _CameraConsts) -> _Projected:
    x, y, z = means.unbind(-1)
    p_view = tuple(_affine_rows(cam.view, x, y, z, range(3)))
    hx, hy, _, hw = _affine_rows(cam.full, x, y, z, range(4))
    p_w = 1.0 / (hw + PROJ_EPS)
    px = ndc_to_pixel(hx * p_w, cam.width)
    py = ndc_to_pixel(hy * p_w, cam.height)
    ca, cb, cc = covariance_2d(p_view, cov3d, cam.view, cam.focal_x, cam.focal_y, cam.lim_x, cam.lim_y)
    det = fma(ca, cc, -(cb * cb))
    det_inv = 1.0 / det
    conic = torch.stack([cc * det_inv, -cb * det_inv, ca * det_inv], dim=-1)
    mid = 0.5 * (ca + cc)
    lambda1 = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
    radius = torch.ceil(3.0 * torch.sqrt(lambda1))
    return _Projected(p_view[2], torch.stack([px, py], dim=-1), conic, det, torch.stack([ca, cc], dim=-1),
                      radius)


def tile_rect(xy: Tensor, radius: Tensor, grid_x: int, grid_y: int) -> tuple[Tensor, Tensor]:
    """The original's tile rectangle [rect_min, rect_max) per Gaussian, (N, 2) int64 each.

    rect_min = clamp(trunc((p - r) / 16), 0, G), rect_max = clamp(trunc((p + r + 16 - 1) / 16), 0, G),
    in the coordinate dtype with the original's operation order (clamping at 0 makes trunc = floor)."""
    grid = torch.tensor([grid_x, grid_y], dtype=xy.dtype, device=xy.device)
    r = radius[:, None]
    lo = torch.trunc((xy - r) / BLOCK)
    hi = torch.trunc((((xy + r) + BLOCK) - 1) / BLOCK)
    lo = torch.minimum(torch.clamp(lo, min=0), grid)
    hi = torch.minimum(torch.clamp(hi, min=0), grid)
    return lo.long(), hi.long()


def _finite_rows(t: Tensor) -> Tensor:
    f = torch.isfinite(t)
    return f.flatten(1).all(dim=1) if t.dim() > 1 else f


@dataclass
class _Bins:
    """(cell, Gaussian) pairs sorted by (cell, depth, index), grouped per non-empty cell."""

    gauss: Tensor  # (M,) local Gaussian index per pair, sorted
    cells: Tensor  # (n,) non-empty cell ids, ordered by decreasing pair count
    starts: Tensor  # (n,) first pair of each cell
    counts: Tensor  # (n,) pairs per cell


def reach_rect(xy: Tensor, cov_xx: Tensor, cov_yy: Tensor, opacity: Tensor,
               cell: int) -> tuple[Tensor, Tensor]:
    """Conservative [min, max) rectangle of ``cell``-pixel cells where a Gaussian can reach alpha >= 1/255.

    alpha = o exp(-q/2) >= 1/255 needs q <= 2 ln(255 o), an ellipse whose x half-extent is
    sqrt(2 ln(255 o) cov_xx). Margins cover float rounding, so pruning outside it never changes a pixel:
    there the Gaussian is skipped by the 1/255 rule anyway (it multiplies T by 1 and adds 0)."""
    k = 2.0 * (torch.log(torch.clamp(opacity * 255.0, min=1e-30)) + 0.01)
    reach = k > 0
    k = torch.clamp(k, min=0.0)
    h = torch.stack([torch.sqrt(k * cov_xx), torch.sqrt(k * cov_yy)], dim=-1) * 1.01 + 0.01
    lo = torch.ceil((xy - h - (cell - 1)) / cell)
    hi = torch.floor((xy + h) / cell) + 1
    hi = torch.where(reach[:, None], hi, lo)
    big = float(1 << 40)
    return torch.clamp(lo, -big, big).long(), torch.clamp(hi, -big, big).long()


def _bin_pairs(lo: Tensor, hi: Tensor, depth: Tensor, grid_x: int) -> _Bins:
    """Pairs (cell, Gaussian) for every cell of each Gaussian's [lo, hi) rectangle (``grid_x`` cells per
    row), sorted by cell, then depth, then Gaussian index (the original's stable depth sort)."""
    device = lo.device
    n_g = lo.shape[0]
    size = torch.clamp(hi - lo, min=0)  # (N, 2) cells per axis
    per = size[:, 0] * size[:, 1]
    g = torch.repeat_interleave(torch.arange(n_g, device=device), per)
    first = torch.cumsum(per, 0) - per
    local = torch.arange(g.shape[0], device=device) - first[g]
    cx = lo[g, 0] + local % size[g, 0]
    cy = lo[g, 1] + local // size[g, 0]
    cell = cy * grid_x + cx
    order = torch.sort(depth, stable=True).indices  # ties keep index order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_g, device=device)
    key = cell * max(n_g, 1) + rank[g]
    key, perm = torch.sort(key)
    g = g[perm]
    cell = key // max(n_g, 1)
    cells, counts = torch.unique_consecutive(cell, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    by_count = torch.sort(counts, descending=True, stable=True).indices
    return _Bins(g, cells[by_count], starts[by_count], counts[by_count])


def _blend_chunk(xy: Tensor, conic: Tensor, opacity: Tensor, feats: Tensor, cells: Tensor,
                 starts: Tensor, counts: Tensor, gauss: Tensor, grid_x: int, cell: int,
                 k: int, segment: int) -> tuple[Tensor, Tensor]:
    """Blend ``n`` cells front to back: accumulated features (n, cell^2, C) and final T (n, cell^2).

    The depth-sorted lists are walked in segments of ``segment`` Gaussians as dense
    [cells, pixels, segment] blocks; T and the stop flag carry over, and a cell leaves once all its
    pixels have stopped (T would fall below 1e-4) or its list is exhausted."""
    device, dtype = xy.device, xy.dtype
    n = cells.shape[0]
    npix = cell * cell
    zero = torch.zeros((), dtype=dtype, device=device)
    alpha_min = torch.tensor(1.0, dtype=dtype, device=device) / 255.0
    lane = torch.arange(cell, device=device, dtype=dtype)
    px = ((cells % grid_x) * cell).to(dtype)[:, None] + lane[None, :]  # (n, cell) pixel x of each column
    py = ((cells // grid_x) * cell).to(dtype)[:, None] + lane[None, :]
    trans = torch.ones(n, npix, dtype=dtype, device=device)
    acc = torch.zeros(n, npix, feats.shape[1], dtype=dtype, device=device)
    stopped = torch.zeros(n, npix, dtype=torch.bool, device=device)
    alive = torch.arange(n, device=device)
    for s in range(0, k, segment):
        e = min(k, s + segment)
        m = alive.shape[0]
        ar = torch.arange(s, e, device=device)
        valid = ar[None, :] < counts[alive, None]
        idx = gauss[torch.clamp(starts[alive, None] + ar[None, :], max=gauss.shape[0] - 1)]  # (m, L)
        gxy = xy[idx]
        con = conic[idx]
        op = torch.where(valid, opacity[idx], zero)  # padding: alpha 0, skipped
        dx = gxy[:, None, :, 0] - px[alive, :, None]  # (m, cell x, L)
        dy = gxy[:, None, :, 1] - py[alive, :, None]  # (m, cell y, L)
        # power = -0.5 (a dx dx + c dy dy) - b dx dy, pixels laid out (m, y, x, L); the factor -0.5 is
        # applied to each square first, which is exact (a power of two) and saves a full-size pass
        qa = -0.5 * ((con[:, None, :, 0] * dx) * dx)
        qc = -0.5 * ((con[:, None, :, 2] * dy) * dy)
        bx = con[:, None, :, 1] * dx
        power = (qa[:, None, :, :] + qc[:, :, None, :]) - bx[:, None, :, :] * dy[:, :, None, :]
        power = power.reshape(m, npix, e - s)
        power = torch.where(power > 0, -torch.inf, power)  # power > 0: skipped (alpha becomes 0)
        alpha = op[:, None, :] * torch.exp(power)
        if bool((op > ALPHA_CAP).any()):  # alpha <= opacity: only then can the cap bind
            # min(0.99, alpha) with the gradient passed straight through
            alpha = torch.where(alpha > ALPHA_CAP, ALPHA_CAP + (alpha - alpha.detach()), alpha)
        alpha = torch.where(alpha < alpha_min, zero, alpha)
        t_in = trans[alive]
        run = torch.cumprod(torch.cat([t_in[..., None], 1.0 - alpha], dim=-1), dim=-1)  # T before / after
        # a prefix: stop before the Gaussian that would bring T below 1e-4; stopped pixels stay stopped
        keep = run[..., 1:] >= T_MIN
        if s > 0:
            keep &= ~stopped[alive, :, None]
        weight = alpha * run[..., :-1]
        if not bool(keep.all()):
            weight = torch.where(keep, weight, zero)
        acc = acc.index_add(0, alive, torch.bmm(weight, feats[idx]))
        n_keep = keep.sum(dim=-1, keepdim=True)
        trans = trans.index_copy(0, alive, run.gather(-1, n_keep).squeeze(-1))
        stop_now = stopped[alive] | (n_keep.squeeze(-1) < e - s)
        stopped = stopped.index_copy(0, alive, stop_now)
        alive = alive[~stop_now.all(dim=1) & (counts[alive] > e)]
        if alive.shape[0] == 0:
            break
    return acc, trans


def gaussian_colors(gaussians: GaussianSet, means: Tensor, campos: Tensor) -> Tensor:
    """Each Gaussian's colour (P, 3) seen from ``campos``: ``colors`` when given, else its SH along the
    viewing direction + 0.5, clamped at 0 (the rasterizer's rule)."""
    if gaussians.colors is not None:
        return gaussians.colors
    d = means - campos
    length = torch.sqrt((d[:, 0:1] * d[:, 0:1] + d[:, 1:2] * d[:, 1:2]) + d[:, 2:3] * d[:, 2:3])
    dirs = d / length
    rgb = eval_sh(gaussians.sh_degree, gaussians.shs, dirs) + 0.5
    return torch.clamp(rgb, min=0.0)  # a clamped channel gets no gradient


def render_torch(camera: Any, gaussians: GaussianSet, background: Tensor, scaling_modifier: float = 1.0,
                 return_depth: bool = False, return_alpha: bool = False,
                 chunk_elements: int | None = None, cell: int = DEFAULT_CELL,
                 segment: int | None = None) -> RenderOutput:
    """Rasterize ``gaussians`` seen by ``camera`` over ``background`` (3,) with the docs/maths.md section 7
    rules. Inputs are checked by :func:`gaussian_renderer.render` (this is its backend).

    ``gaussians.colors`` (P, 3), when set, replaces the SH colour. Returns image (3, H, W), int32 radii,
    the visibility filter, ``viewspace_points`` whose gradient is the NDC-unit screen gradient, and
    depth / alpha (1, H, W) when asked for. Speed / memory knobs that never change the result:
    ``chunk_elements`` bounds the dense blending block, ``cell`` (1, 2, 4, 8 or 16) is the pixel block
    the blending works in, ``segment`` the Gaussians per blending step (None: per-device defaults).
    """
    if cell not in (1, 2, 4, 8, 16):
        raise ValueError(f"render_torch: cell must divide the 16-pixel tile (1, 2, 4, 8 or 16), got {cell}")
    means = gaussians.means
    device, dtype = means.device, means.dtype
    on_gpu = device.type == "cuda"
    if chunk_elements is None:
        chunk_elements = DEFAULT_CHUNK_ELEMENTS_CUDA if on_gpu else DEFAULT_CHUNK_ELEMENTS
    if segment is None:
        segment = DEFAULT_SEGMENT_CUDA if on_gpu else DEFAULT_SEGMENT
    if segment < 1 or chunk_elements < 1:
        raise ValueError(f"render_torch: segment and chunk_elements must be positive, got {segment}, "
                         f"{chunk_elements}")
    p = means.shape[0]
    cam = _camera_consts(camera, dtype, device)
    width, height = cam.width, cam.height
    grid_x, grid_y = math.ceil(width / BLOCK), math.ceil(height / BLOCK)
    per_tile = BLOCK // cell
    cells_x = grid_x * per_tile
    bg = background.reshape(3).to(device=device, dtype=dtype)
    scales = gaussians.scales.to(dtype)
    rotations = gaussians.rotations.to(dtype)
    covariances = None if gaussians.covariances is None else gaussians.covariances.to(dtype)

    def cov3d(index: Tensor | None = None) -> tuple[Tensor, ...]:
        """The 3D covariances (of the Gaussians at ``index``): given, or from scales and rotations."""
        if covariances is not None:
            return (covariances if index is None else covariances[index]).unbind(-1)
        if index is None:
            return covariance_3d(scales, rotations, scaling_modifier)
        return covariance_3d(scales[index], rotations[index], scaling_modifier)
    opacities = gaussians.opacities.reshape(p).to(dtype)
    # viewspace points carry a gradient whenever anything upstream does (as in training)
    track = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (means, gaussians.scales, gaussians.rotations,
                                                    gaussians.covariances, gaussians.opacities,
                                                    gaussians.shs, gaussians.colors, bg))
    means2d = torch.zeros(p, 3, dtype=dtype, device=device, requires_grad=track)

    # (1) which Gaussians are drawn and where: no gradients, all of them
    with torch.no_grad():
        ok = _finite_rows(means) & torch.isfinite(opacities)
        ok &= (_finite_rows(scales) & _finite_rows(rotations)) if covariances is None else \
            _finite_rows(covariances)
        ok &= _finite_rows(gaussians.colors if gaussians.colors is not None else gaussians.shs)
        pre = _project(means, cov3d(), cam)
        ok &= torch.isfinite(pre.depth) & (pre.depth > NEAR_CULL)
        ok &= (pre.det != 0) & _finite_rows(pre.conic) & _finite_rows(pre.xy) & _finite_rows(pre.cov)
        ok &= torch.isfinite(pre.radius)
        xy0 = torch.where(ok[:, None], pre.xy, 0.0)
        lo, hi = tile_rect(xy0, torch.where(ok, pre.radius, 0.0), grid_x, grid_y)
        ok &= (hi - lo).prod(dim=1) > 0
        radii = torch.where(ok, torch.clamp(pre.radius, max=MAX_RADIUS), 0.0).to(torch.int32)
        vis = torch.nonzero(ok).squeeze(1)
        # cells blended per Gaussian: its tile rectangle, cut to where it can reach alpha >= 1/255
        r_lo, r_hi = reach_rect(xy0[vis], pre.cov[vis, 0], pre.cov[vis, 1], opacities[vis], cell)
        c_lo = torch.maximum(lo[vis] * per_tile, r_lo)
        c_hi = torch.minimum(hi[vis] * per_tile, r_hi)

    n_feat = 3 + (1 if return_depth else 0)
    npix = cell * cell
    cells = torch.zeros(0, dtype=torch.long, device=device)
    acc = torch.zeros(0, npix, n_feat, dtype=dtype, device=device)
    t_final = torch.zeros(0, npix, dtype=dtype, device=device)
    if vis.shape[0] > 0:
        # (2) differentiable quantities of the drawn Gaussians only
        m_v = means[vis]
        proj = _project(m_v, cov3d(vis), cam)
        scale_xy = torch.tensor([width * 0.5, height * 0.5], dtype=dtype, device=device)
        xy = proj.xy + means2d[vis, :2] * scale_xy  # blending-path gradient lands on means2d in NDC units
        sub = GaussianSet(m_v, scales[vis], rotations[vis], opacities[vis],
                          None if gaussians.shs is None else gaussians.shs[vis],
                          None if gaussians.colors is None else gaussians.colors[vis], gaussians.sh_degree)
        colors = gaussian_colors(sub, m_v, cam.campos).to(dtype)
        feats = torch.cat([colors, proj.depth[:, None]], dim=1) if return_depth else colors
        # (3) sorted (cell, Gaussian) pairs, (4) blending
        bins = _bin_pairs(c_lo, c_hi, pre.depth[vis], cells_x)
        if bins.cells.shape[0] > 0:
            acc, t_final = _blend_all(xy, proj.conic, opacities[vis], feats, bins, cells_x, cell,
                                      chunk_elements, segment)
            cells = bins.cells

    # (5) scatter the blended cells into the image; untouched pixels keep T = 1
    lane = torch.arange(cell, device=device)
    py = (cells // cells_x)[:, None, None] * cell + lane[None, :, None]
    px = (cells % cells_x)[:, None, None] * cell + lane[None, None, :]
    inside = ((py < height) & (px < width)).reshape(-1)
    flat = (py * width + px).reshape(-1)[inside]
    acc = acc.reshape(-1, n_feat)[inside]
    t_final = t_final.reshape(-1)[inside]
    t_img = torch.ones(height * width, dtype=dtype, device=device).index_put((flat,), t_final)
    acc_img = torch.zeros(height * width, n_feat, dtype=dtype, device=device).index_put((flat,), acc)
    image = (acc_img[:, :3] + t_img[:, None] * bg[None, :]).T.reshape(3, height, width)
    depth = acc_img[:, 3].reshape(1, height, width) if return_depth else None
    alpha = (1.0 - t_img).reshape(1, height, width) if return_alpha else None
    return RenderOutput(image=image, radii=radii, visibility_filter=radii > 0, viewspace_points=means2d,
                        depth=depth, alpha=alpha)


def _blend_all(xy: Tensor, conic: Tensor, opacity: Tensor, feats: Tensor, bins: _Bins, grid_x: int,
               cell: int, chunk_elements: int, segment: int) -> tuple[Tensor, Tensor]:
    """Blend every non-empty cell in memory-bounded chunks of similar pair counts."""
    counts = bins.counts.tolist()
    pix = cell * cell
    chunks: list[tuple[int, int, int]] = []
    i = 0
    total = 0
    while i < len(counts):
        k = counts[i]  # largest in the chunk (counts decrease)
        j = min(len(counts), i + max(1, chunk_elements // (pix * min(k, segment))))
        chunks.append((i, j, k))
        total += (j - i) * pix * k
        i = j
    use_ckpt = torch.is_grad_enabled() and len(chunks) > 1 and total > 2 * chunk_elements and any(
        t.requires_grad for t in (xy, conic, opacity, feats))
    accs, finals = [], []
    for i, j, k in chunks:
        args = (xy, conic, opacity, feats, bins.cells[i:j], bins.starts[i:j], bins.counts[i:j], bins.gauss,
                grid_x, cell, k, segment)
        if use_ckpt:  # keep only the chunk inputs for backward; recompute the dense block then
            acc, fin = checkpoint(_blend_chunk, *args, use_reentrant=False)
        else:
            acc, fin = _blend_chunk(*args)
        accs.append(acc)
        finals.append(fin)
    return torch.cat(accs), torch.cat(finals)
