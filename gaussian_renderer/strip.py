"""Several views in one rasterizer call: the views side by side in one wide image (a strip).

Each rasterizer call costs host work (argument checks, a sort sized on the host, launches) that, for a
512x512 head, outweighs its kernels. Fitting many frames at once (the tracker's avatar stage corrects
every frame's camera) pays it once per strip instead of once per view.

View ``b`` (pinhole ``fx, fy, cx, cy``, pose ``R, t``) is placed at columns ``[o_b, o_b + W)`` of the
strip, whose camera sits at the origin with focal ``F, Fy`` and centre ``(Cx, Cy)``. Its Gaussians are
moved into its camera frame, ``x_c = R x + t``, then by the linear map

    A_b = [[fx/F, 0, s_b], [0, fy/Fy, u_b], [0, 0, 1]],  s_b = (cx + o_b - Cx) / F,  u_b = (cy - Cy) / Fy,

so that the strip camera projects ``A_b x_c`` to the view's pixel plus ``(o_b, 0)``: the projection of
``A_b x`` is the view's projection of ``x`` plus a constant. The EWA splat uses the projection's Jacobian
at the mean, and ``J_strip(A_b x) A_b = J_view(x)``, so the covariance ``A_b Sigma A_b^T`` (a shear, which
scales and a turn cannot hold: it goes to the rasterizer as a precomputed covariance) gives the view's
2D covariance exactly. Depth is unchanged. Colours are evaluated per view (the strip camera's viewing
directions are not the view's). Gaussians whose centre falls outside their view's columns widened by
half the gap are dropped, so that nothing of one view lands in the next; within that, a render of the
strip cut into views equals the views rendered one by one (``tests/test_strip.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gaussian_renderer import render
from gaussian_renderer.torch_backend import covariance_3d, gaussian_colors
from gaussian_renderer.types import GaussianSet, full_to_upper, upper_to_full

GAP = 32  # pixels between views: room for the splats at a view's border


@dataclass(frozen=True)
class ViewStrip:
    """Where each view sits in the strip and how its camera-space Gaussians are mapped there."""

    camera: Any             # the strip's camera: identity pose, (B W + (B - 1) gap) x H pixels
    offsets: tuple[int, ...]  # first column of each view
    width: int              # each view's size
    height: int
    warp: Tensor            # (B, 3, 3) A_b: view b's camera space -> the strip camera's space
    columns: Tensor         # (B, 2) columns [o_b - gap/2, o_b + W + gap/2) whose Gaussians view b keeps

    def __len__(self) -> int:
        return len(self.offsets)


def view_strip(cameras: Sequence[Any], gap: int = GAP) -> ViewStrip:
    """The strip of ``cameras`` (``scene.data.cameras.Camera``, views of one size), in order, ``gap``
    pixels apart. The strip's camera is made by ``dataclasses.replace`` on the first view's camera."""
    if not cameras:
        raise ValueError("view_strip: no cameras")
    w, h = cameras[0].image_width, cameras[0].image_height
    if any((c.image_width, c.image_height) != (w, h) for c in cameras):
        raise ValueError("view_strip: the views must share one image size")
    device = cameras[0].device
    offsets = tuple(b * (w + gap) for b in range(len(cameras)))
    strip_w = offsets[-1] + w
    f, fy = cameras[0].fx, cameras[0].fy
    cx, cy = strip_w / 2.0, h / 2.0
    K = torch.tensor([[f, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], device=device)
    camera = dataclasses.replace(cameras[0], R=torch.eye(3, device=device), t=torch.zeros(3, device=device),
                                 K=K, image_width=strip_w, image_height=h, name="strip")
    warp = torch.zeros(len(cameras), 3, 3, device=device)
    for b, (c, o) in enumerate(zip(cameras, offsets)):
        warp[b, 0, 0], warp[b, 0, 2] = c.fx / f, (c.cx + o - cx) / f
        warp[b, 1, 1], warp[b, 1, 2] = c.fy / fy, (c.cy - cy) / fy
        warp[b, 2, 2] = 1.0
    columns = torch.tensor([[o - gap / 2.0, o + w + gap / 2.0] for o in offsets], device=device)
    return ViewStrip(camera, offsets, w, h, warp, columns)


def camera_space(gaussians: GaussianSet, camera: Any) -> tuple[Tensor, Tensor]:
    """Means (P, 3) and full covariances (P, 3, 3) of ``gaussians`` in ``camera``'s frame."""
    R, t = camera.R.to(gaussians.means), camera.t.to(gaussians.means)
    cov = gaussians.covariances
    cov = upper_to_full(cov) if cov is not None else upper_to_full(
        torch.stack(covariance_3d(gaussians.scales, gaussians.rotations, 1.0), -1))
    return gaussians.means @ R.T + t, R @ cov @ R.T


def _moved(means: Tensor, covariances: Tensor, linear: Tensor, turn: Tensor | None,
           shift: Tensor | None) -> tuple[Tensor, Tensor]:
    """``linear (turn x + shift)`` of (B, P, 3) means and the covariances' matching sandwich, with the two
    maps folded into one (B, 3, 3) product first: one pass over the Gaussians, not two."""
    L = linear if turn is None else linear @ turn
    m = means @ L.transpose(1, 2)
    if shift is not None:
        m = m + (linear @ shift[..., None]).transpose(1, 2)
    return m, L[:, None] @ covariances @ L[:, None].transpose(-1, -2)


def strip_gaussians(strip: ViewStrip, means: Tensor, covariances: Tensor, opacities: Tensor,
                    colors: Tensor, turn: Tensor | None = None, shift: Tensor | None = None) -> GaussianSet:
    """The strip's Gaussians from each view's camera-space ones: ``means`` (B, P, 3), ``covariances``
    (B, P, 3, 3), ``opacities`` (B, P, 1) or (P, 1), ``colors`` (B, P, 3), first moved by
    ``x -> turn x + shift`` when given (``turn`` (B, 3, 3), ``shift`` (B, 3): a corrected camera).
    Differentiable in all."""
    m, cov = _moved(means, covariances, strip.warp.to(means), turn, shift)
    # drop what would land in another view: centres outside the view's columns widened by half the gap
    z = m[..., 2].clamp(min=1e-6)
    u = strip.camera.fx * m[..., 0] / z + strip.camera.cx
    cols = strip.columns.to(means)
    keep = ((u >= cols[:, :1]) & (u < cols[:, 1:])).to(means)[..., None]
    opacities = opacities.expand(len(strip), *opacities.shape[-2:]) * keep
    n = m.shape[0] * m.shape[1]
    return GaussianSet(m.reshape(n, 3), torch.ones(n, 3, device=m.device), _identity(n, m),
                       opacities.reshape(n, 1), colors=colors.reshape(n, 3),
                       covariances=full_to_upper(cov).reshape(n, 6))


def cut_views(strip: ViewStrip, image: Tensor) -> Tensor:
    """The strip's image (C, H, W_strip) cut into its views (B, C, H, W)."""
    return torch.stack([image[:, :, o:o + strip.width] for o in strip.offsets])


def at_origin(cameras: Sequence[Any]) -> list[Any]:
    """The cameras with their poses set to the identity: what sees camera-space Gaussians as they are."""
    return [dataclasses.replace(c, R=torch.eye(3, device=c.device), t=torch.zeros(3, device=c.device))
            for c in cameras]


def render_camera_space(views: ViewStrip | Sequence[Any], means: Tensor, covariances: Tensor,
                        opacities: Tensor, colors: Tensor, background: Tensor, turn: Tensor | None = None,
                        shift: Tensor | None = None, backend: str | None = None) -> Tensor:
    """Views (B, 3, H, W) of Gaussians given in each view's camera frame (``strip_gaussians``' arguments).
    ``views``: a :class:`ViewStrip`, for one rasterizer call (on a GPU, where a call's host work outweighs
    a view's kernels), or the views' cameras moved to the origin (:func:`at_origin`), for one call each
    (the torch backend on the CPU, whose cost grows faster than the image)."""
    if isinstance(views, ViewStrip):
        gs = strip_gaussians(views, means, covariances, opacities, colors, turn, shift)
        return cut_views(views, render(views.camera, gs, background, backend=backend).image)
    if turn is not None or shift is not None:
        eye = torch.eye(3, device=means.device, dtype=means.dtype).expand(means.shape[0], 3, 3)
        means, covariances = _moved(means, covariances, eye, turn, shift)
    n = means.shape[1]
    shape = torch.ones(n, 3, device=means.device, dtype=means.dtype), _identity(n, means)
    opacities = opacities.expand(len(views), *opacities.shape[-2:])
    return torch.stack([render(cam, GaussianSet(means[b], *shape, opacities[b], colors=colors[b],
                                                covariances=full_to_upper(covariances[b])),
                               background, backend=backend).image for b, cam in enumerate(views)])


def render_views(cameras: Sequence[Any], sets: Sequence[GaussianSet], background: Tensor,
                 gap: int = GAP, one_call: bool = True, backend: str | None = None) -> Tensor:
    """Each set seen by its camera, (B, 3, H, W), through one rasterizer call (module doc; ``one_call``
    False: one call per view, of the same camera-space Gaussians). The sets must hold the same number
    of Gaussians."""
    placed = [camera_space(g, c) for g, c in zip(sets, cameras)]
    colors = torch.stack([gaussian_colors(g, g.means, c.camera_center.to(g.means)) for g, c in
                          zip(sets, cameras)])
    views = view_strip(cameras, gap) if one_call else at_origin(cameras)
    means, covariances = (torch.stack(x) for x in zip(*placed))
    opacities = torch.stack([g.opacities.reshape(-1, 1) for g in sets])
    return render_camera_space(views, means, covariances, opacities, colors, background, backend=backend)


def _identity(n: int, like: Tensor) -> Tensor:
    """(n, 4) identity quaternions: the placeholder orientations beside precomputed covariances."""
    q = torch.zeros(n, 4, device=like.device, dtype=like.dtype)
    q[:, 0] = 1.0
    return q
