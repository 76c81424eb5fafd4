"""The pure-PyTorch rasterizer against hand-computed pixels and an independent numpy reference.

The numpy reference below is written straight from docs/maths.md section 7 with 3x3 matrices and a
per-Gaussian loop (no code shared with the backend); crafted scenes check single rules with
closed-form pixel values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gaussian_renderer import render, torch_backend
from gaussian_renderer.sh import C0
from gaussian_renderer.torch_backend import covariance_2d, render_torch
from gaussian_renderer.types import GaussianSet
from scene.data.cameras import Camera

BG = (0.2, 0.4, 0.6)


def make_camera(w: int, h: int, fx: float, fy: float | None = None, cx: float | None = None,
                cy: float | None = None, R=None, t=None) -> Camera:
    fy = fx if fy is None else fy
    cx = w / 2 if cx is None else cx
    cy = h / 2 if cy is None else cy
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    R = torch.eye(3) if R is None else torch.as_tensor(R, dtype=torch.float32)
    t = torch.zeros(3) if t is None else torch.as_tensor(t, dtype=torch.float32)
    return Camera(R, t, K, w, h)


def gset(means, scales, opac, colors=None, rots=None, shs=None, deg=0, dtype=torch.float64) -> GaussianSet:
    means = torch.as_tensor(means, dtype=dtype).reshape(-1, 3)
    p = means.shape[0]
    scales = torch.as_tensor(scales, dtype=dtype).reshape(p, -1).expand(p, 3).clone()
    if rots is None:
        rots = torch.tensor([[1.0, 0, 0, 0]], dtype=dtype).repeat(p, 1)
    opac = torch.as_tensor(opac, dtype=dtype).reshape(p, 1)
    colors = None if colors is None else torch.as_tensor(colors, dtype=dtype).reshape(p, 3)
    shs = None if shs is None else torch.as_tensor(shs, dtype=dtype)
    rots = torch.as_tensor(rots, dtype=dtype)
    return GaussianSet(means, scales, rots, opac, shs=shs, colors=colors, sh_degree=deg)


def bg(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(BG, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Independent numpy reference (float64)
# ----------------------------------------------------------------------------------------------

def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def sh_basis(d: np.ndarray, deg: int) -> np.ndarray:
    from tests.test_sh import basis_numpy

    return basis_numpy(*d)[: (deg + 1) ** 2]


def reference_render(cam: Camera, g: GaussianSet, background, modifier: float = 1.0):
    """Image (3,H,W), radii, depth (H,W), alpha (H,W) by docs/maths.md section 7, straightforwardly."""
    V = cam.world_view_transform.double().numpy()
    F = cam.full_proj_transform.double().numpy()
    campos = cam.camera_center.double().numpy()
    W, H = cam.image_width, cam.image_height
    tx_, ty_ = cam.tanfovx, cam.tanfovy
    fx, fy = W / (2 * tx_), H / (2 * ty_)
    means = g.means.detach().double().numpy()
    scales = g.scales.detach().double().numpy() * modifier
    rots = g.rotations.detach().double().numpy()
    opac = g.opacities.detach().double().numpy().reshape(-1)
    gx, gy = math.ceil(W / 16), math.ceil(H / 16)
    radii = np.zeros(len(means), dtype=np.int64)
    recs = []
    for i, m in enumerate(means):
        pv = V[:3, :3] @ m + V[:3, 3]
        if not pv[2] > 0.2:
            continue
        Rq = quat_to_matrix(rots[i])
        sigma = Rq @ np.diag(scales[i] ** 2) @ Rq.T
        xs = np.clip(pv[0] / pv[2], -1.3 * tx_, 1.3 * tx_) * pv[2]
        ys = np.clip(pv[1] / pv[2], -1.3 * ty_, 1.3 * ty_) * pv[2]
        J = np.array([[fx / pv[2], 0, -fx * xs / pv[2] ** 2], [0, fy / pv[2], -fy * ys / pv[2] ** 2]])
        cov = J @ V[:3, :3] @ sigma @ V[:3, :3].T @ J.T + 0.3 * np.eye(2)
        det = np.linalg.det(cov)
        if det == 0:
            continue
        conic = np.linalg.inv(cov)
        mid = 0.5 * (cov[0, 0] + cov[1, 1])
        radius = math.ceil(3 * math.sqrt(mid + math.sqrt(max(0.1, mid * mid - det))))
        ph = F @ np.append(m, 1.0)
        ndc = ph[:2] / (ph[3] + 1e-7)
        pix = ((ndc + 1) * np.array([W, H]) - 1) / 2
        lo = np.clip(np.floor((pix - radius) / 16), 0, [gx, gy]).astype(int)
        hi = np.clip(np.floor((pix + radius + 15) / 16), 0, [gx, gy]).astype(int)
        if (hi - lo).prod() <= 0:
            continue
        radii[i] = radius
        if g.colors is not None:
            col = g.colors[i].detach().double().numpy()
        else:
            d = (m - campos) / np.linalg.norm(m - campos)
            basis = sh_basis(d, g.sh_degree)
            col = np.maximum(basis @ g.shs[i, : len(basis)].detach().double().numpy() + 0.5, 0.0)
        recs.append((pv[2], i, pix, conic, opac[i], col, lo, hi))
    recs.sort(key=lambda r: (r[0], r[1]))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    T = np.ones((H, W))
    C = np.zeros((H, W, 3))
    D = np.zeros((H, W))
    done = np.zeros((H, W), dtype=bool)
    for z, _i, pix, conic, o, col, lo, hi in recs:
        in_rect = ((xx // 16 >= lo[0]) & (xx // 16 < hi[0]) & (yy // 16 >= lo[1]) & (yy // 16 < hi[1]))
        dx, dy = pix[0] - xx, pix[1] - yy
        power = -0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) - conic[0, 1] * dx * dy
        alpha = np.minimum(0.99, o * np.exp(np.minimum(power, 0)))
        active = in_rect & ~done & (power <= 0) & (alpha >= 1 / 255)
        test_t = T * (1 - alpha)
        stop = active & (test_t < 1e-4)
        done |= stop
        use = active & ~stop
        C += np.where(use[..., None], col * (alpha * T)[..., None], 0)
        D += np.where(use, alpha * T * z, 0)
        T = np.where(use, test_t, T)
    image = C + T[..., None] * np.asarray(background)
    return image.transpose(2, 0, 1), radii, D, 1 - T


def random_scene(n: int, seed: int, dtype=torch.float64, deg: int = 3, colors: bool = False) -> GaussianSet:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([1.2, 1.0, 1.5]) - torch.tensor(
        [0.6, 0.5, 0.0])
    means[:, 2] += 1.6
    scales = torch.exp(torch.rand(n, 3, generator=g, dtype=torch.float64) * 2.5 - 5.0)
    rots = torch.randn(n, 4, generator=g, dtype=torch.float64)
    rots = rots / rots.norm(dim=1, keepdim=True)
    opac = torch.rand(n, 1, generator=g, dtype=torch.float64) * 0.95 + 0.02
    shs = torch.randn(n, 16, 3, generator=g, dtype=torch.float64) * 0.4
    cols = torch.rand(n, 3, generator=g, dtype=torch.float64) if colors else None
    return GaussianSet(means.to(dtype), scales.to(dtype), rots.to(dtype), opac.to(dtype), shs=shs.to(dtype),
                       colors=None if cols is None else cols.to(dtype), sh_degree=deg)


def rotated_camera(w=37, h=29, fx=40.0, fy=44.0, cx=16.3, cy=15.1) -> Camera:
    a = 0.15
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    return make_camera(w, h, fx, fy, cx, cy, R=R, t=torch.tensor([0.05, -0.02, 0.1]))


# ----------------------------------------------------------------------------------------------
# Crafted scenes with hand-computed pixels
# ----------------------------------------------------------------------------------------------

def axis_gaussian_pixel(cam: Camera, z: float) -> tuple[float, float]:
    """Internal pixel position of a Gaussian on the optical axis (x = y = 0) at depth z."""
    P = cam.projection.double()
    out = []
    for row, size in ((0, cam.image_width), (1, cam.image_height)):
        ndc = P[row, 2].item() * z / (z + 1e-7)
        out.append(((ndc + 1) * size - 1) / 2)
    return out[0], out[1]


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_single_isotropic_gaussian_closed_form(dtype, atol):
    W, H, f, z, o = 40, 36, 50.0, 2.0, 0.8
    cam = make_camera(W, H, f, cx=19.3, cy=17.8)
    v = 6.0  # screen variance incl. the 0.3 low-pass: s = sqrt(v - 0.3) z / f
    s = math.sqrt(v - 0.3) * z / f
    dc = 0.7
    shs = torch.zeros(1, 1, 3, dtype=torch.float64)
    shs[0, 0] = torch.tensor([dc, -dc, 0.0], dtype=torch.float64)
    out = render(cam, gset([0, 0, z], [s], [o], shs=shs, dtype=dtype), bg(dtype), backend="torch",
                 return_depth=True, return_alpha=True)
    px, py = axis_gaussian_pixel(cam, z)
    radius = math.ceil(3 * math.sqrt(v + math.sqrt(0.1)))  # mid^2 - det = 0 -> guard 0.1
    assert out.radii.tolist() == [radius] and out.radii.dtype == torch.int32
    yy, xx = np.mgrid[0:H, 0:W]
    alpha = o * np.exp(-0.5 * ((xx - px) ** 2 + (yy - py) ** 2) / v)
    lo = np.floor([(px - radius) / 16, (py - radius) / 16]).clip(0)
    hi = np.minimum(np.floor([(px + radius + 15) / 16, (py + radius + 15) / 16]), [3, 3])
    in_rect = (xx // 16 >= lo[0]) & (xx // 16 < hi[0]) & (yy // 16 >= lo[1]) & (yy // 16 < hi[1])
    alpha = np.where(in_rect & (alpha >= 1 / 255), alpha, 0.0)
    colour = np.maximum(C0 * np.array([dc, -dc, 0.0]) + 0.5, 0)
    expected = colour[:, None, None] * alpha + (1 - alpha) * np.array(BG)[:, None, None]
    np.testing.assert_allclose(out.image.double().numpy(), expected, atol=atol, rtol=0)
    np.testing.assert_allclose(out.alpha[0].double().numpy(), alpha, atol=atol, rtol=0)
    np.testing.assert_allclose(out.depth[0].double().numpy(), alpha * z, atol=atol * 2, rtol=0)


def test_near_plane_cull():
    cam = make_camera(32, 32, 30.0)
    zs = [0.2, 0.2001, -1.0, 1e-9, 0.0]
    g = gset([[0, 0, z] for z in zs], [0.002] * 5, [0.5] * 5, colors=[[1.0, 0, 0]] * 5, dtype=torch.float32)
    out = render(cam, g, bg(torch.float32), backend="torch")
    assert out.radii.tolist()[0] == 0 and out.radii.tolist()[2:] == [0, 0, 0]
    assert out.radii[1] > 0
    assert torch.isfinite(out.image).all()
    only = render(cam, gset([0, 0, 0.2001], [0.002], [0.5], colors=[[1.0, 0, 0]], dtype=torch.float32),
                  bg(torch.float32), backend="torch")
    assert torch.equal(out.image, only.image)
    culled = render(cam, gset([0, 0, 0.2], [0.002], [0.5], colors=[[1.0, 0, 0]], dtype=torch.float32),
                    bg(torch.float32), backend="torch")
    assert torch.equal(culled.image, bg(torch.float32)[:, None, None].expand(3, 32, 32))


def test_radius_rule_anisotropic_and_guarded():
    cam = make_camera(64, 64, 80.0)
    q = np.array([0.9, 0.2, -0.3, 0.25])
    q = q / np.linalg.norm(q)
    m, s, z = np.array([0.1, -0.05, 1.5]), np.array([0.04, 0.01, 0.02]), 1.5
    g = gset(np.array([m, [0, 0, z]]), np.array([s, [0.001] * 3]), [0.5, 0.5], colors=[[1.0, 1, 1]] * 2,
             rots=np.array([q, [1.0, 0, 0, 0]]))
    out = render(cam, g, bg(), backend="torch")
    # by hand: cov2D = J Sigma J^T + 0.3 I (camera at identity), radius = ceil(3 sqrt(largest eigenvalue))
    Rq = quat_to_matrix(q)
    sigma = Rq @ np.diag(s**2) @ Rq.T
    J = np.array([[80 / m[2], 0, -80 * m[0] / m[2] ** 2], [0, 80 / m[2], -80 * m[1] / m[2] ** 2]])
    cov = J @ sigma @ J.T + 0.3 * np.eye(2)
    lam = np.linalg.eigvalsh(cov).max()
    assert out.radii[0].item() == math.ceil(3 * math.sqrt(lam))
    # isotropic: mid^2 - det = 0, the 0.1 guard sets lambda = mid + sqrt(0.1)
    v = (80 * 0.001 / z) ** 2 + 0.3
    assert out.radii[1].item() == math.ceil(3 * math.sqrt(v + math.sqrt(0.1))) == 3


def test_tile_rectangle_rule_drops_the_last_column():
    # centre at internal x = 10.9, radius 5: rect_max = floor((10.9 + 5 + 15) / 16) = 1, so pixel
    # column 16 (distance 5.1, alpha = 0.99 exp(-5.42) = 0.0044 > 1/255) is never evaluated.
    W, H, f, z, o = 32, 16, 40.0, 1.0, 0.99
    cx = 11.4  # internal = cx - 0.5 (+ the 1e-7 projection epsilon)
    cam = make_camera(W, H, f, cx=cx, cy=8.0)
    v = 2.4
    s = math.sqrt(v - 0.3) * z / f
    out = render(cam, gset([0, 0, z], [s], [o], colors=[[1.0, 0.0, 0.0]]), bg(), backend="torch",
                 return_alpha=True)
    px, py = axis_gaussian_pixel(cam, z)
    assert abs(px - 10.9) < 1e-5
    assert out.radii.item() == 5
    a15 = o * math.exp(-0.5 * ((15 - px) ** 2 + (7 - py) ** 2) / v)
    a16 = o * math.exp(-0.5 * ((16 - px) ** 2 + (7 - py) ** 2) / v)
    assert a16 > 1 / 255  # geometrically it would show
    assert out.alpha[0, 7, 15].item() == pytest.approx(a15, abs=1e-12)
    assert out.alpha[0, 7, 16].item() == 0.0
    assert torch.equal(out.image[:, :, 16:], bg()[:, None, None].expand(3, H, 16))


def test_early_stop_and_alpha_cap():
    # four Gaussians stacked on one pixel centre; alphas 0.99 (opacity 1 capped), 0.95, 0.9, 0.5.
    # T: 1 -> 0.01 -> 5e-4; the third would bring it to 5e-5 < 1e-4: stop before it, T stays 5e-4.
    W = H = 16
    cam = make_camera(W, H, 20.0, cx=8.5, cy=8.5)  # axis lands on pixel (8, 8)
    zs = [1.0, 1.1, 1.2, 1.3]
    cols = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]]
    opac = torch.tensor([1.0, 0.95, 0.9, 0.5], dtype=torch.float64, requires_grad=True)
    g = gset([[0, 0, z] for z in zs], [0.01] * 4, [0.5] * 4, colors=cols)
    g.opacities = opac[:, None]
    out = render(cam, g, bg(), backend="torch", return_depth=True, return_alpha=True)
    pix = out.image[:, 8, 8]
    expected = 0.99 * np.array(cols[0]) + 0.95 * 0.01 * np.array(cols[1]) + 5e-4 * np.array(BG)
    np.testing.assert_allclose(pix.detach().numpy(), expected, atol=1e-9)
    assert out.alpha[0, 8, 8].item() == pytest.approx(1 - 5e-4, abs=1e-9)
    assert out.depth[0, 8, 8].item() == pytest.approx(0.99 * 1.0 + 0.0095 * 1.1, abs=1e-9)
    # the cap passes the gradient straight through: d pixel / d o0 = G (c0 - a1 c1 - (1 - a1) bg), G = 1
    pix[0].backward()
    a1 = 0.95
    assert opac.grad[0].item() == pytest.approx(1.0 - a1 * 0.0 - (1 - a1) * BG[0], abs=1e-9)
    assert opac.grad[2].item() == 0.0 and opac.grad[3].item() == 0.0  # after the stop: nothing


def test_depth_order_with_index_tie_break():
    cam = make_camera(16, 16, 20.0, cx=8.5, cy=8.5)
    red, green = [1.0, 0, 0], [0, 1.0, 0]

    def centre(cols, zs):
        g = gset([[0, 0, z] for z in zs], [0.01, 0.01], [0.5, 0.5], colors=cols)
        return render(cam, g, bg(), backend="torch").image[:, 8, 8].numpy()

    b = np.array(BG)
    np.testing.assert_allclose(centre([red, green], [1.0, 1.0]), 0.5 * np.array(red) + 0.25 * np.array(green)
                               + 0.25 * b, atol=1e-9)
    np.testing.assert_allclose(centre([green, red], [1.0, 1.0]), 0.5 * np.array(green) + 0.25 * np.array(red)
                               + 0.25 * b, atol=1e-9)
    # depth decides before the index does
    np.testing.assert_allclose(centre([red, green], [1.2, 1.0]), 0.5 * np.array(green) + 0.25 * np.array(red)
                               + 0.25 * b, atol=1e-9)


def test_principal_point_moves_the_image():
    W = H = 48
    g = gset([[0.0, 0.0, 1.0], [0.02, -0.03, 1.2]], [0.05, 0.04], [0.1, 0.08],
             colors=[[1.0, 0, 0], [0, 0, 1.0]])
    base = render(make_camera(W, H, 50.0, cx=24.0, cy=24.0), g, bg(), backend="torch").image
    moved = render(make_camera(W, H, 50.0, cx=27.0, cy=22.0), g, bg(), backend="torch").image
    # u = fx x / z + cx: +3 px in x, -2 px in y; the margins keep the footprints inside the image
    np.testing.assert_allclose(moved[:, 2:44, 7:47].numpy(), base[:, 4:46, 4:44].numpy(), atol=1e-9)
    # the axis Gaussian's centre is at internal (cx - 0.5, cy - 0.5): symmetric neighbours
    cam = make_camera(64, 64, 50.0, cx=24.5, cy=40.5)  # 2 cx / W - 1 exact in float32
    one = gset([0, 0, 1.0], [0.05], [0.1], colors=[[1.0, 0, 0]])
    single = render(cam, one, bg(), backend="torch").image[0]
    peak = torch.nonzero(single == single.max()).tolist()
    assert peak == [[40, 24]]
    assert single[40, 23].item() == pytest.approx(single[40, 25].item(), abs=1e-6)
    assert single[39, 24].item() == pytest.approx(single[41, 24].item(), abs=1e-6)


# ----------------------------------------------------------------------------------------------
# Against the independent numpy reference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_random_scene_matches_numpy_reference(seed):
    cam = rotated_camera()
    g = random_scene(60, seed)
    g.means[:3, 2] = torch.tensor([0.1, 0.2, -0.5])  # behind the near cull
    g.means[3] = torch.tensor([1.0, -0.2, 1.0])  # off screen but inside the guard band: no tile
    out = render(cam, g, bg(), backend="torch", return_depth=True, return_alpha=True, scaling_modifier=1.3)
    ref_img, ref_radii, ref_depth, ref_alpha = reference_render(cam, g, BG, modifier=1.3)
    assert (ref_radii > 0).sum() > 20 and (ref_radii == 0).sum() > 0
    np.testing.assert_array_equal(out.radii.numpy(), ref_radii)
    assert torch.equal(out.visibility_filter, out.radii > 0)
    np.testing.assert_allclose(out.image.numpy(), ref_img, atol=1e-9, rtol=0)
    np.testing.assert_allclose(out.depth[0].numpy(), ref_depth, atol=1e-9, rtol=0)
    np.testing.assert_allclose(out.alpha[0].numpy(), ref_alpha, atol=1e-9, rtol=0)
    # float32 inputs: the same up to float32 rounding
    g32 = GaussianSet(g.means.float(), g.scales.float(), g.rotations.float(), g.opacities.float(),
                      shs=g.shs.float(), sh_degree=3)
    out32 = render(cam, g32, bg(torch.float32), backend="torch", scaling_modifier=1.3)
    diff = (out32.image.double() - out.image).abs()
    assert diff.mean() < 1e-6 and (diff > 1e-4).sum() <= 3


def test_guard_band_outside_uses_clamped_constant():
    # a Gaussian far to the side: x/z beyond 1.3 tan(fov/2); the clamped x enters as a constant
    cam = make_camera(32, 32, 16.0)  # tan(fov/2) = 1, guard at x/z = 1.3
    g = random_scene(40, 3)
    g.means[:5, 0] = torch.tensor([2.5, -2.2, 3.0, 2.0, -3.0])
    g.means[:5, 2] = torch.tensor([1.2, 1.1, 1.5, 1.3, 1.4])
    out = render(cam, g, bg(), backend="torch")
    ref_img, ref_radii, _, _ = reference_render(cam, g, BG)
    np.testing.assert_array_equal(out.radii.numpy(), ref_radii)
    np.testing.assert_allclose(out.image.numpy(), ref_img, atol=1e-9)
    # gradient rule: no gradient to x outside the band; z gets only the explicit 1/z, 1/z^2 terms
    view = torch.eye(4, dtype=torch.float64)
    lim = torch.tensor(1.3, dtype=torch.float64)
    f = torch.tensor(16.0, dtype=torch.float64)
    cov3 = tuple(torch.tensor([v], dtype=torch.float64) for v in (0.01, 0.002, 0.001, 0.02, 0.003, 0.015))
    x = torch.tensor([2.5], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([1.2], dtype=torch.float64, requires_grad=True)
    a, b, c = covariance_2d((x, y, z), cov3, view, f, f, lim, lim)
    (a + 2 * b + 3 * c).sum().backward()
    assert x.grad.item() == 0.0 and y.grad.item() != 0.0

    def held(zv: float) -> float:  # x_c = 1.3 * 1.2 held fixed while z moves (band widened: no clamp)
        xc = torch.tensor([1.3 * 1.2], dtype=torch.float64)
        zt = torch.tensor([zv], dtype=torch.float64)
        aa, bb, cc = covariance_2d((xc, y.detach(), zt), cov3, view, f, f, 10 * lim, lim)
        return (aa + 2 * bb + 3 * cc).item()

    eps = 1e-6
    fd = (held(1.2 + eps) - held(1.2 - eps)) / (2 * eps)
    assert z.grad.item() == pytest.approx(fd, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------

def tiny_scene(colors: bool):
    cam = make_camera(20, 18, 22.0, cx=9.7, cy=9.2)
    means = torch.tensor([[0.02, 0.01, 1.0], [-0.08, 0.05, 1.3], [0.06, -0.07, 1.15]], dtype=torch.float64)
    scales = torch.tensor([[0.06, 0.03, 0.04], [0.05, 0.07, 0.03], [0.04, 0.04, 0.08]], dtype=torch.float64)
    rots = torch.tensor([[0.9, 0.1, -0.2, 0.3], [0.8, -0.3, 0.2, 0.1], [1.0, 0.0, 0.3, -0.2]],
                        dtype=torch.float64)
    rots = rots / rots.norm(dim=1, keepdim=True)
    opac = torch.tensor([[0.7], [0.5], [0.6]], dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    shs = torch.randn(3, 16, 3, generator=g, dtype=torch.float64) * 0.1
    cols = torch.tensor([[0.9, 0.2, 0.3], [0.1, 0.8, 0.4], [0.3, 0.3, 0.9]], dtype=torch.float64)
    return cam, [means, scales, rots, opac, cols if colors else shs]


@pytest.mark.parametrize("colors", [False, True])
def test_gradcheck_float64(colors):
    cam, inputs = tiny_scene(colors)
    inputs = [t.clone().requires_grad_(True) for t in inputs]

    def fn(means, scales, rots, opac, col):
        g = GaussianSet(means, scales, rots, opac, shs=None if colors else col,
                        colors=col if colors else None, sh_degree=3)
        out = render_torch(cam, g, bg(), return_depth=True, return_alpha=True)
        return torch.cat([out.image, out.depth, out.alpha])

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_viewspace_points_gradient_is_ndc_screen_gradient():
    # on the optical axis the covariance does not depend on x, y to first order, so the 3D mean's x
    # gradient is the blending path alone: dL/dmean_x = dL/dpx * fx / z, and means2D gets dL/dpx * W/2
    W, H, f, z = 32, 24, 30.0, 1.5
    cam = make_camera(W, H, f, cx=16.0, cy=12.0)
    means = torch.tensor([[0.0, 0.0, z], [5.0, 0.0, z]], dtype=torch.float64, requires_grad=True)
    g = gset(means.detach(), [0.03, 0.03], [0.6, 0.6], colors=[[1.0, 0.5, 0.2]] * 2)
    g.means = means
    out = render(cam, g, bg(), backend="torch")
    weights = torch.linspace(-1, 1, W * H, dtype=torch.float64).reshape(1, H, W)
    (out.image * weights).sum().backward()
    vs = out.viewspace_points.grad
    assert out.viewspace_points.shape == (2, 3)
    assert vs[0, 0].item() == pytest.approx(means.grad[0, 0].item() * (W / 2) / (f / z), rel=1e-6)
    assert vs[0, 1].item() == pytest.approx(means.grad[0, 1].item() * (H / 2) / (f / z), rel=1e-6)
    assert vs[0, 0].abs() > 1e-3 and vs[:, 2].abs().max() == 0
    assert out.radii[1] == 0 and vs[1].abs().max() == 0 and means.grad[1].abs().max() == 0


def test_non_finite_and_degenerate_inputs():
    cam = make_camera(32, 32, 30.0)
    base = random_scene(12, 7, dtype=torch.float32, colors=True)
    good = GaussianSet(base.means.clone(), base.scales.clone(), base.rotations.clone(),
                       base.opacities.clone(), colors=base.colors.clone())
    bad = GaussianSet(*[t.clone() for t in (base.means, base.scales, base.rotations, base.opacities)],
                      colors=base.colors.clone())
    bad.means[0, 0] = float("nan")
    bad.scales[1, 2] = float("inf")
    bad.opacities[2, 0] = float("nan")
    bad.colors[3, 1] = float("inf")
    bad.rotations[4] = float("nan")
    bad.means[5] = torch.tensor([0.0, 0.0, 1e-30])  # at the camera centre
    bad.scales[6] = 1e30  # overflows the covariance
    params = [bad.means, bad.scales, bad.rotations, bad.opacities, bad.colors]
    for p in params:
        p.requires_grad_(True)
    out = render(cam, bad, bg(torch.float32), backend="torch", return_depth=True, return_alpha=True)
    assert torch.isfinite(out.image).all() and torch.isfinite(out.depth).all()
    assert torch.isfinite(out.alpha).all()
    assert out.radii[:7].tolist() == [0] * 7
    # the rest render as if the broken ones were not there
    keep = slice(7, 12)
    ref = render(cam, GaussianSet(good.means[keep], good.scales[keep], good.rotations[keep],
                                  good.opacities[keep], colors=good.colors[keep]), bg(torch.float32),
                 backend="torch")
    assert torch.equal(out.image, ref.image)
    out.image.sum().backward()
    for p in params:
        assert torch.isfinite(p.grad).all()
        assert p.grad[:7].abs().max() == 0


def test_chunks_cells_segments_and_checkpointing_agree(monkeypatch):
    calls = []
    real_checkpoint = torch_backend.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch_backend, "checkpoint", counting_checkpoint)
    cam = rotated_camera(w=34, h=20)
    g = random_scene(40, 11)
    params = [g.means, g.scales, g.rotations, g.opacities, g.shs]
    results = []
    for kw in ({}, {"chunk_elements": 2000, "segment": 3}, {"cell": 16, "segment": 1000},
               {"cell": 2, "segment": 5, "chunk_elements": 200}):
        ps = [p.clone().requires_grad_(True) for p in params]
        gs = GaussianSet(*ps[:4], shs=ps[4], sh_degree=3)
        out = render_torch(cam, gs, bg(), return_depth=True, **kw)
        loss = (out.image * torch.linspace(0, 1, out.image.numel(), dtype=torch.float64).reshape(
            out.image.shape)).sum() + out.depth.sum()
        loss.backward()
        results.append((out.image.detach(), out.depth.detach(), [p.grad for p in ps]))
    assert len(calls) > 2  # the small-chunk runs went through the checkpointed path
    img0, d0, g0 = results[0]
    for img, d, grads in results[1:]:
        assert torch.allclose(img, img0, atol=1e-12, rtol=0)
        assert torch.allclose(d, d0, atol=1e-12, rtol=0)
        for a, b in zip(grads, g0):
            assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# render(): backend choice, colours, background, errors
# ----------------------------------------------------------------------------------------------

def test_override_color_and_background():
    cam = rotated_camera()
    g = random_scene(30, 2)
    override = torch.rand(30, 3, dtype=torch.float64) * 1.5 - 0.2  # used as is: no +0.5, no clamp
    out = render(cam, g, bg(), override_color=override, backend="torch")
    ref_img, _, _, _ = reference_render(cam, GaussianSet(g.means, g.scales, g.rotations, g.opacities,
                                                         colors=override), BG)
    np.testing.assert_allclose(out.image.numpy(), ref_img, atol=1e-9)
    z = torch.zeros(0, 3, dtype=torch.float64)
    none = GaussianSet(z, z, torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, 1, dtype=torch.float64),
                       colors=z)
    empty = render(cam, none, bg(), backend="torch", return_depth=True, return_alpha=True)
    assert torch.equal(empty.image, bg()[:, None, None].expand(3, 29, 37))
    assert empty.alpha.abs().max() == 0 and empty.depth.abs().max() == 0 and empty.radii.shape == (0,)


def test_backend_choice(monkeypatch):
    cam = rotated_camera()
    g = random_scene(10, 4, dtype=torch.float32)
    monkeypatch.delenv("GAUSSIAN_RENDERER_BACKEND", raising=False)
    auto = render(cam, g, bg(torch.float32))  # CPU tensors: auto means torch
    assert torch.equal(auto.image, render_torch(cam, g, bg(torch.float32)).image)
    monkeypatch.setenv("GAUSSIAN_RENDERER_BACKEND", "torch")
    assert torch.equal(render(cam, g, bg(torch.float32)).image, auto.image)
    monkeypatch.setenv("GAUSSIAN_RENDERER_BACKEND", "bogus")
    with pytest.raises(ValueError, match="GAUSSIAN_RENDERER_BACKEND"):
        render(cam, g, bg(torch.float32))
    with pytest.raises(ValueError, match="unknown backend"):
        render(cam, g, bg(torch.float32), backend="opengl")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            render(cam, g, bg(torch.float32), backend="cuda")


def test_bad_inputs_name_the_problem():
    cam = rotated_camera()
    g = random_scene(4, 0)
    with pytest.raises(ValueError, match="means must be"):
        render(cam, GaussianSet(g.means[:, :2], g.scales, g.rotations, g.opacities, shs=g.shs), bg())
    with pytest.raises(ValueError, match="rotations must be"):
        render(cam, GaussianSet(g.means, g.scales, g.rotations[:, :3], g.opacities, shs=g.shs), bg())
    with pytest.raises(ValueError, match="shs must be"):
        render(cam, GaussianSet(g.means, g.scales, g.rotations, g.opacities, shs=g.shs[:, :4], sh_degree=3),
               bg())
    with pytest.raises(ValueError, match="shs or colors"):
        render(cam, GaussianSet(g.means, g.scales, g.rotations, g.opacities), bg())
    with pytest.raises(ValueError, match="background"):
        render(cam, g, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="camera lacks"):
        render(object(), g, bg(), backend="torch")


@pytest.mark.cuda
def test_torch_backend_on_cuda_matches_cpu():
    cam = rotated_camera()
    g = random_scene(60, 0, dtype=torch.float32)
    cpu = render_torch(cam, g, bg(torch.float32))
    gc = GaussianSet(g.means.cuda(), g.scales.cuda(), g.rotations.cuda(), g.opacities.cuda(),
                     shs=g.shs.cuda(), sh_degree=3)
    gpu = render_torch(cam.to("cuda"), gc, bg(torch.float32).cuda())
    diff = (gpu.image.cpu() - cpu.image).abs()
    assert diff.mean() < 1e-6 and (diff > 1e-4).sum() <= 3
    assert torch.equal(gpu.radii.cpu(), cpu.radii)
