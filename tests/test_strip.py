"""Several views in one rasterizer call (gaussian_renderer/strip.py), and precomputed covariances
(``GaussianSet.covariances``), against views rendered one by one."""

from __future__ import annotations

import math

import pytest
import torch

from gaussian_renderer import render
from gaussian_renderer.strip import (
    at_origin,
    camera_space,
    cut_views,
    render_camera_space,
    render_views,
    strip_gaussians,
    view_strip,
)
from gaussian_renderer.torch_backend import covariance_3d
from gaussian_renderer.types import GaussianSet, full_to_upper, upper_to_full
from scene.data.cameras import Camera

W, H = 48, 40


def _scene(n: int, seed: int, dtype=torch.float64) -> GaussianSet:
    """A head-sized cloud around (0, 0, 0) with SH colour (degree 2), inside every test view."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([0.16, 0.2, 0.16])
    scales = torch.exp(torch.rand(n, 3, generator=g, dtype=torch.float64) * 2.0 - 6.0)
    rots = torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=torch.float64), dim=1)
    opac = torch.rand(n, 1, generator=g, dtype=torch.float64) * 0.9 + 0.05
    shs = torch.randn(n, 9, 3, generator=g, dtype=torch.float64) * 0.3
    return GaussianSet(means.to(dtype), scales.to(dtype), rots.to(dtype), opac.to(dtype), shs=shs.to(dtype),
                       sh_degree=2)


def _camera(yaw_deg: float, fx: float, cx: float, cy: float, t=(0.01, -0.02, 0.6), device="cpu") -> Camera:
    a = math.radians(yaw_deg)
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    K = torch.tensor([[fx, 0, cx], [0, fx * 1.02, cy], [0, 0, 1.0]])
    return Camera(R.to(device), torch.tensor(t, device=device), K.to(device), W, H)


CAMERAS = ((0.0, 80.0, 24.0, 20.0), (12.0, 80.0, 22.5, 21.0), (-20.0, 86.0, 25.3, 18.7))


def test_covariances_upper_triangle_round_trips_and_render_like_scales_and_turns():
    g = _scene(40, 0)
    upper = torch.stack(covariance_3d(g.scales, g.rotations, 1.0), -1)
    full = upper_to_full(upper)
    assert torch.equal(full, full.transpose(-1, -2)) and torch.equal(full_to_upper(full), upper)
    cam = _camera(*CAMERAS[1])
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    plain = render(cam, g, bg, backend="torch").image
    given = GaussianSet(g.means, torch.zeros_like(g.scales), g.rotations, g.opacities, shs=g.shs,
                        sh_degree=2, covariances=upper)  # scales ignored: the covariances win
    assert torch.allclose(render(cam, given, bg, backend="torch").image, plain, atol=1e-12)
    with pytest.raises(ValueError, match="covariances"):
        render(cam, GaussianSet(g.means, g.scales, g.rotations, g.opacities, shs=g.shs, sh_degree=2,
                                covariances=upper[:, :5]), bg)


def test_strip_equals_the_views_rendered_one_by_one_images_and_gradients():
    """Three views with different poses, focal lengths and principal points: the strip, cut, equals each
    view's own render, and the gradients reaching the Gaussians (and the camera-space moves the tracker
    fits) are those of the views' renders."""
    g = _scene(150, 1)
    cams = [_camera(*c) for c in CAMERAS]
    bg = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
    means = g.means.clone().requires_grad_(True)
    opac = g.opacities.clone().requires_grad_(True)
    leaf = GaussianSet(means, g.scales, g.rotations, opac, shs=g.shs, sh_degree=2)
    weights = torch.rand(len(cams), 3, H, W, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    singles = torch.stack([render(c, leaf, bg, backend="torch").image for c in cams])
    (singles * weights).sum().backward()
    g_means, g_opac = means.grad.clone(), opac.grad.clone()
    means.grad = opac.grad = None
    strip = render_views(cams, [leaf] * len(cams), bg, backend="torch")
    assert strip.shape == (3, 3, H, W)
    # equal up to the cameras' float32 matrices (a wrong placement or shear costs tenths)
    assert (strip - singles).abs().max() < 2e-5
    apart = render_views(cams, [leaf] * len(cams), bg, one_call=False, backend="torch")  # one call a view
    assert (apart - singles).abs().max() < 2e-5
    (strip * weights).sum().backward()
    for got, want in ((means.grad, g_means), (opac.grad, g_opac)):
        assert want.abs().max() > 1e-2  # the comparison is not of zeros
        assert (got - want).abs().max() < 1e-3 * want.abs().max()


def test_camera_space_moves_through_the_strip_are_the_moved_cameras():
    """What the avatar stage does: each view's camera-space Gaussians moved by a small turn and shift,
    ``dR x_c + dt``, render as the camera with pose ``(dR R, dR t + dt)``."""
    g = _scene(120, 3)
    cams = [_camera(*c) for c in CAMERAS]
    bg = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
    strip = view_strip(cams)
    placed = [camera_space(g, c) for c in cams]
    a = math.radians(0.7)
    dR = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]],
                      dtype=torch.float64)
    dt = torch.tensor([0.002, -0.001, 0.004], dtype=torch.float64)
    means = torch.stack([p[0] for p in placed]) @ dR.T + dt
    cov = dR @ torch.stack([p[1] for p in placed]) @ dR.T
    colors = torch.stack([g.shs[:, 0] * 0.28209479177387814 + 0.5] * len(cams)).clamp(min=0)
    gs = strip_gaussians(strip, means, cov, g.opacities, colors)
    views = cut_views(strip, render(strip.camera, gs, bg, backend="torch").image)
    # the same move passed as (turn, shift), folded into the strip's map, and one call a view
    still = torch.stack([p[0] for p in placed]), torch.stack([p[1] for p in placed])
    turns, shifts = dR.expand(len(cams), 3, 3), dt.expand(len(cams), 3)
    folded = render_camera_space(strip, *still, g.opacities, colors, bg, turns, shifts, backend="torch")
    apart = render_camera_space(at_origin(cams), *still, g.opacities, colors, bg, turns, shifts,
                                backend="torch")
    assert (folded - views).abs().max() < 1e-9 and (apart - views).abs().max() < 2e-5
    flat = GaussianSet(g.means, g.scales, g.rotations, g.opacities, colors=colors[0])
    for view, c in zip(views, cams):
        moved = c.with_pose((dR @ c.R.double()).float(), (dR @ c.t.double() + dt).float())
        single = render(moved, flat, bg, backend="torch").image
        assert (view - single).abs().max() < 1e-5  # the moved camera's pose went through float32


def test_gaussians_outside_their_view_stay_out_of_the_next():
    """A Gaussian left of view 1's image would land in view 0's columns of the strip: it is dropped."""
    cams = [_camera(*CAMERAS[0]), _camera(*CAMERAS[0])]
    bg = torch.zeros(3, dtype=torch.float64)
    # one blob in view, one 26 px left of the image: with a 16 px gap, inside view 0's columns of the strip
    inside = GaussianSet(torch.tensor([[0.0, 0.0, 0.0], [-0.385, 0.0, 0.0]], dtype=torch.float64),
                         torch.full((2, 3), 0.01, dtype=torch.float64),
                         torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64),
                         torch.tensor([[0.9], [0.9]], dtype=torch.float64),
                         colors=torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64))
    alone = render(cams[0], inside, bg, backend="torch").image
    assert alone[1].max() < 1e-6  # the green blob is not in the view
    views = render_views(cams, [inside, inside], bg, gap=16, backend="torch")
    assert views[0][1].max() < 1e-6 and views[1][1].max() < 1e-6
    assert (views - alone).abs().max() < 2e-5


@pytest.mark.cuda
def test_strip_on_the_cuda_rasterizer_matches_the_torch_reference():
    """The CUDA extension with precomputed (sheared) covariances: image and gradients against the torch
    backend, and against the views rendered one by one on CUDA."""
    from gaussian_renderer.cuda_backend import cuda_backend_available

    if not cuda_backend_available():
        pytest.skip("the CUDA extension is not built")
    g = _scene(300, 4, dtype=torch.float32)
    cams = [_camera(*c, device="cuda") for c in CAMERAS]
    bg = torch.tensor([0.3, 0.5, 0.2], device="cuda")
    out = {}
    for backend in ("cuda", "torch"):
        means = g.means.cuda().requires_grad_(True)
        leaf = GaussianSet(means, g.scales.cuda(), g.rotations.cuda(), g.opacities.cuda(), shs=g.shs.cuda(),
                           sh_degree=2)
        views = render_views(cams, [leaf] * 3, bg, backend=backend)
        views.square().sum().backward()
        out[backend] = (views.detach(), means.grad)
    singles = torch.stack([render(c, GaussianSet(g.means.cuda(), g.scales.cuda(), g.rotations.cuda(),
                                                 g.opacities.cuda(), shs=g.shs.cuda(), sh_degree=2),
                                  bg, backend="cuda").image for c in cams])
    assert (out["cuda"][0] - out["torch"][0]).abs().mean() < 1e-5
    assert (out["cuda"][0] - singles).abs().mean() < 1e-5
    cos = torch.nn.functional.cosine_similarity(out["cuda"][1].flatten(), out["torch"][1].flatten(), dim=0)
    assert cos > 0.999
