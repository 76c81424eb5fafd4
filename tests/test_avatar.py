"""Avatar: per-subject build, per-frame chain (FLAME -> embedding -> heads -> Gaussians), init, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import scene.model.gaussians as gaussians_mod
from scene.data.cameras import Camera
from scene.model.avatar import Avatar
from scene.model.cuda_graphs import inference_graph, training_graph
from utils import fast_paths
from utils.options import ModelOptions

SMALL = dict(hidden_dim=16, hidden_layers=2, latent_dim=4, uv_size=16)


def make_tiny_assets(seed: int = 0, grid: int = 6):
    """A small FLAME-format model: a bowl-shaped grid with UVs, 5 joints, random blendshapes."""
    from flame.assets import FlameAssets, UVMesh

    rng = np.random.default_rng(seed)
    xs = np.linspace(-1.0, 1.0, grid)
    X, Y = np.meshgrid(xs, xs)  # row r has y = xs[r]
    v = np.stack([X.ravel(), Y.ravel(), 0.3 * (X ** 2 + Y ** 2).ravel()], axis=1)
    V = len(v)
    faces = []
    for r in range(grid - 1):
        for c in range(grid - 1):
            a, b, d, e = r * grid + c, r * grid + c + 1, (r + 1) * grid + c, (r + 1) * grid + c + 1
            faces += [[a, b, e], [a, e, d]]
    faces = np.array(faces, dtype=np.int64)
    uv = np.stack([(X.ravel() + 1) / 2 * 0.8 + 0.1, (Y.ravel() + 1) / 2 * 0.8 + 0.1], axis=1)
    J = np.zeros((5, V))
    J[0] = 1.0 / V
    J[1, :grid] = 1.0 / grid
    J[2, V // 2] = 1.0
    J[3, grid + 1] = 1.0
    J[4, 2 * grid - 2] = 1.0
    weights = np.zeros((V, 5))
    weights[:, 0] = np.where(v[:, 1] < 0, 0.3, 1.0)
    weights[:, 2] = 1.0 - weights[:, 0]
    return FlameAssets(
        v_template=v, faces=faces, shapedirs=rng.normal(size=(V, 3, 400)) * 0.01,
        posedirs=rng.normal(size=(V, 3, 36)) * 0.01, J_regressor=J,
        kintree_table=np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]), weights=weights,
        masks={"boundary": np.arange(grid)},
        uv_mesh=UVMesh(faces=faces, uv=uv, uv_faces=faces.copy(), path=Path("tiny.obj"),
                       n_model_faces=len(faces)),
        l_eyelid=rng.normal(size=(V, 3)) * 0.01, r_eyelid=rng.normal(size=(V, 3)) * 0.01,
        flame_dir=Path("tiny"))


def tiny_condition(seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(120, generator=g, dtype=dtype) * 0.3
    c[100:106] = torch.tensor([1.0, 0.1, 0.0, 0.0, 1.0, 0.2], dtype=dtype)  # jaw: small turn
    c[106:118] = torch.tensor([1.0, 0, 0, 0, 1.0, 0] * 2, dtype=dtype)
    return c


def tiny_camera() -> Camera:
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
    return Camera(torch.eye(3), torch.tensor([0.0, 0.0, 4.0]), K, 32, 32)


def brute_knn(points: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(points.double(), points.double()) ** 2
    d.fill_diagonal_(float("inf"))
    return d.topk(3, largest=False).values.mean(1).to(points.dtype)


@pytest.fixture
def knn(monkeypatch):
    """simple_knn when built, else a brute-force stand-in (the init maths is what is tested here)."""
    try:
        from simple_knn import distCUDA2  # noqa: F401
    except ImportError:
        monkeypatch.setattr(gaussians_mod, "knn_mean_sq_dist", brute_knn)


def test_avatar_builds_per_subject_state_once():
    assets = make_tiny_assets()
    shape = torch.randn(300, dtype=torch.float64) * 0.5
    avatar = Avatar(assets, shape, ModelOptions(ours=True, **SMALL), dtype=torch.float64)
    n = avatar.n_gaussians
    assert n == avatar.embedding.count and 0 < n < avatar.embedding.n_texels  # neck row dropped
    assert avatar.encoding.shape == (n, 51) and avatar.encoding.dtype == torch.float64
    assert avatar.method == "ours"
    keys = set(avatar.state_dict())
    assert keys and all(k.startswith(("deformation.", "gaussians.")) for k in keys)
    # canonical mesh = template + identity blendshapes (zero expression, identity poses)
    expected = assets.v_template + np.einsum("vck,k->vc", assets.shapedirs[:, :, :300], shape.numpy())
    np.testing.assert_allclose(avatar.canonical_vertices.numpy(), expected, atol=1e-10)
    torch.testing.assert_close(avatar.embedding.canonical.double(),
                               avatar.embedding.interpolate(avatar.canonical_vertices), atol=1e-6, rtol=0)


@pytest.mark.parametrize("ours", [False, True])
def test_deform_chain_matches_independent_computation(ours):
    from flame.model import FLAME

    assets = make_tiny_assets(1)
    shape = torch.randn(300, dtype=torch.float64) * 0.5
    avatar = Avatar(assets, shape, ModelOptions(ours=ours, **SMALL), dtype=torch.float64)
    cond = tiny_condition(2)
    gs, extras = avatar.deform(cond)
    verts = FLAME(assets, dtype=torch.float64)(shape[None], cond[None, :100], jaw=cond[None, 100:106],
                                               eyes=cond[None, 106:118], eyelids=cond[None, 118:120])[0]
    ids, bary = avatar.embedding.vertex_ids.numpy(), avatar.embedding.bary.double().numpy()
    base = (verts.numpy()[ids] * bary[..., None]).sum(1)
    np.testing.assert_allclose(extras.base_positions.detach().numpy(), base, atol=1e-10)
    np.testing.assert_allclose(extras.vertices.detach().numpy(), verts.numpy(), atol=1e-10)
    d = avatar.deformation(avatar.encoding, cond)
    torch.testing.assert_close(gs.means, extras.base_positions + d.d_xyz)
    assert gs.count == avatar.n_gaussians and gs.shs.shape == (avatar.n_gaussians, 16, 3)
    if ours:  # untrained HyperGaussians: no offset at all, zero uncertainty
        assert torch.equal(gs.means, extras.base_positions)
        assert torch.equal(extras.uncertainty, torch.zeros(avatar.n_gaussians, dtype=torch.float64))
    else:
        assert extras.uncertainty is None and not torch.equal(gs.means, extras.base_positions)


def test_initialize_gaussians_uses_the_frames_head_positions(knn):
    avatar = Avatar(make_tiny_assets(2), torch.zeros(300), ModelOptions(ours=False, **SMALL))
    cond = tiny_condition(3, torch.float32)
    avatar.initialize_gaussians(cond)
    means = avatar.deform(cond)[0].means.detach()
    expected = 0.5 * torch.log(brute_knn(means).clamp_min(1e-7))
    torch.testing.assert_close(avatar.gaussians.log_scale.detach(), expected[:, None].expand(-1, 3),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(avatar.deform(cond)[0].opacities, torch.full((avatar.n_gaussians, 1), 0.1))


def test_gradients_reach_every_trained_tensor_and_optimizers_step(knn):
    avatar = Avatar(make_tiny_assets(3), torch.zeros(300),
                    ModelOptions(ours=True, conditional_appearance=True, camera_conditioning=True, **SMALL))
    cam = tiny_camera()
    cond = tiny_condition(4, torch.float32)
    avatar.initialize_gaussians(cond, cam)
    with torch.no_grad():  # leave the zero init so that every factor gets a gradient
        for p in avatar.deformation.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g_opt, d_opt = avatar.make_optimizers()
    gs, extras = avatar.deform(cond, cam)
    assert gs.colors is not None and gs.shs is None
    loss = gs.means.square().sum() + gs.scales.sum() + gs.rotations[:, 1:].sum() + gs.colors.sum() \
        + gs.opacities.sum() + extras.uncertainty.sum()
    loss.backward()
    for name, p in avatar.deformation.named_parameters():
        assert p.numel() == 0 or (p.grad is not None and torch.count_nonzero(p.grad) > 0), name
    for name in ("log_scale", "rotation"):
        assert torch.count_nonzero(getattr(avatar.gaussians, name).grad) > 0, name
    before = avatar.gaussians.log_scale.detach().clone()
    g_opt.step()
    d_opt.step()
    assert not torch.equal(before, avatar.gaussians.log_scale.detach())
    with pytest.raises(ValueError, match="camera-conditioned"):
        avatar.deform(cond)


def test_condition_is_checked_and_sh_degree_schedule_is_forwarded():
    avatar = Avatar(make_tiny_assets(), torch.zeros(300), ModelOptions(**SMALL))
    with pytest.raises(ValueError, match="120 values"):
        avatar.deform(torch.zeros(119))
    assert avatar.update_sh_degree(1000) == 2 and avatar.deform(torch.zeros(120))[0].sh_degree == 2


def test_export_ply_writes_the_frame(tmp_path):
    avatar = Avatar(make_tiny_assets(), torch.zeros(300), ModelOptions(**SMALL))
    out = avatar.export_ply(tmp_path / "frame.ply", tiny_condition(1, torch.float32))
    raw = out.read_bytes()
    assert f"element vertex {avatar.n_gaussians}\n".encode() in raw
    assert len(raw) - raw.index(b"end_header\n") - 11 == avatar.n_gaussians * 62 * 4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_hot_path_has_no_host_sync(knn):
    avatar = Avatar(make_tiny_assets(), torch.zeros(300), ModelOptions(ours=True, **SMALL), device="cuda")
    cond = tiny_condition(1, torch.float32).cuda()
    avatar.initialize_gaussians(cond)
    g_opt, d_opt = avatar.make_optimizers()
    gs, extras = avatar.deform(cond)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gs, extras = avatar.deform(cond)
        (gs.means.sum() + gs.scales.sum() + extras.uncertainty.sum()).backward()
        g_opt.step()
        d_opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert gs.means.is_cuda


def test_end_to_end_on_the_synthetic_subject(synthetic_subject, tmp_path, knn):
    """Subject -> Avatar -> init -> render: the Gaussians land on the head in the image, two training
    steps lower the photometric loss, and a checkpoint reproduces the render exactly."""
    import torch.nn.functional as F

    from flame.assets import load_flame_assets, resolve_flame_dir
    from gaussian_renderer import render
    from scene.data.subject import Subject
    from scene.model.checkpoint import load_checkpoint, save_checkpoint

    data_root, tracking_root, idname = synthetic_subject
    subject = Subject(data_root, tracking_root, idname, test_num=4, eval_num=2)
    assets = load_flame_assets(resolve_flame_dir(None, data_root / idname))
    cfg = ModelOptions(ours=True, hidden_dim=32, hidden_layers=2, latent_dim=8, uv_size=32)
    torch.manual_seed(0)
    avatar = Avatar(assets, subject.shape, cfg)
    frame = subject.frame(subject.train_indices[0])
    avatar.initialize_gaussians(frame.condition, frame.camera)
    background = torch.ones(3)
    gs, extras = avatar.deform(frame.condition, frame.camera)
    assert gs.count == avatar.n_gaussians == avatar.embedding.count

    # every Gaussian projects onto the subject's head mask (dilated by one pixel)
    head = frame.head_mask[0] > 0.5
    px = frame.camera.project(gs.means.detach())[:, :2].floor().long()
    H, W = head.shape
    assert bool(((px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)).all())
    dilated = F.max_pool2d(head[None, None].float(), 3, 1, 1)[0, 0] > 0
    assert dilated[px[:, 1], px[:, 0]].float().mean() > 0.98
    out = render(frame.camera, gs, background, backend="torch", return_alpha=True)
    covered = out.alpha[0] > 0.05
    assert (covered & head).sum() / head.sum() > 0.9

    optimizers = avatar.make_optimizers()
    losses = []
    for _ in range(3):
        gs, _ = avatar.deform(frame.condition, frame.camera)
        loss = (render(frame.camera, gs, background, backend="torch").image - frame.image).abs().mean()
        losses.append(loss.item())
        for o in optimizers:
            o.zero_grad()
        loss.backward()
        for o in optimizers:
            o.step()
    assert losses[-1] < losses[0]

    path = save_checkpoint(tmp_path / "ckpt3.pth", avatar, optimizers, 3)
    fresh = Avatar(assets, subject.shape, cfg)
    load_checkpoint(path, fresh, fresh.make_optimizers())
    with torch.no_grad():
        a = render(frame.camera, avatar.deform(frame.condition, frame.camera)[0], background, backend="torch")
        b = render(frame.camera, fresh.deform(frame.condition, frame.camera)[0], background, backend="torch")
    assert torch.equal(a.image, b.image)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("camera_conditioning", [False, True])
def test_cuda_inference_graph_matches_eager_deform(knn, camera_conditioning):
    cfg = ModelOptions(ours=True, conditional_appearance=camera_conditioning,
                       camera_conditioning=camera_conditioning, **SMALL)
    avatar = Avatar(make_tiny_assets(), torch.zeros(300), cfg, device="cuda")
    avatar.initialize_gaussians(tiny_condition(0, torch.float32).cuda(), tiny_camera().to("cuda"))
    with torch.no_grad():
        for p in avatar.deformation.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    run = inference_graph(avatar)
    for seed in (1, 2, 3):
        cond = tiny_condition(seed, torch.float32).cuda()
        cam = tiny_camera()
        cam = cam.with_pose(cam.R, cam.t + seed * 0.1).to("cuda")
        with torch.no_grad():
            ref, ref_extras = avatar.deform(cond, cam)
        got, extras = run(cond, cam)
        for name in ("means", "scales", "rotations", "opacities", "shs", "colors"):
            a, b = getattr(got, name), getattr(ref, name)
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(extras.uncertainty, ref_extras.uncertainty)
    with pytest.raises(RuntimeError, match="CUDA device"):
        inference_graph(Avatar(make_tiny_assets(), torch.zeros(300), ModelOptions(**SMALL)))


def _weighted_sum(gs, weights: dict) -> torch.Tensor:
    """A loss that reaches every output of the Gaussian set with its own random weights."""
    total = 0.0
    for name, w in weights.items():
        t = getattr(gs, name)
        if t is not None:
            total = total + (t * w[: t.numel()].reshape(t.shape)).sum()
    return total


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("ours,appearance", [(False, False), (True, False), (True, True)])
def test_cuda_training_graph_matches_eager_steps(knn, ours, appearance):
    """Three Adam steps through the graphed deformation (forward and backward replayed) give the same
    outputs, gradients and updated parameters as through the eager one."""
    import copy

    cfg = ModelOptions(ours=ours, conditional_appearance=appearance, camera_conditioning=appearance, **SMALL)
    eager = Avatar(make_tiny_assets(), torch.zeros(300), cfg, device="cuda")
    cam0 = tiny_camera().to("cuda")
    eager.initialize_gaussians(tiny_condition(0, torch.float32).cuda(), cam0)
    with torch.no_grad():
        for p in eager.deformation.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        eager.gaussians.features_rest.add_(torch.randn_like(eager.gaussians.features_rest) * 0.1)
    graphed = copy.deepcopy(eager)
    eager.update_sh_degree(2000)
    graphed.update_sh_degree(2000)
    run = training_graph(graphed, tiny_condition(0, torch.float32).cuda(), cam0)
    opts = {"eager": eager.make_optimizers(), "graphed": graphed.make_optimizers()}
    g = torch.Generator(device="cuda").manual_seed(0)
    n = eager.n_gaussians
    weights = {k: torch.randn(n * 48, generator=g, device="cuda")
               for k in ("means", "scales", "rotations", "opacities", "shs", "colors")}
    for seed in (1, 2, 3):
        cond = tiny_condition(seed, torch.float32).cuda()
        cam = tiny_camera()
        cam = cam.with_pose(cam.R, cam.t + seed * 0.1).to("cuda")
        ref = eager.deform(cond, cam)[0]
        got, surface = run(cond, cam)
        assert surface is None
        assert got.sh_degree == ref.sh_degree == 3
        for name in ("means", "scales", "rotations", "opacities", "shs", "colors"):
            a, b = getattr(got, name), getattr(ref, name)
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        _weighted_sum(ref, weights).backward()
        _weighted_sum(got, weights).backward()
        grads_seen = 0
        for (name, pe), pg in zip(eager.named_parameters(), graphed.parameters()):
            assert (pe.grad is None) == (pg.grad is None), name
            if pe.grad is not None:
                grads_seen += 1
                torch.testing.assert_close(pg.grad, pe.grad, rtol=1e-4, atol=1e-5, msg=name)
        assert grads_seen >= 4
        for model in ("eager", "graphed"):
            for o in opts[model]:
                o.step()
                o.zero_grad(set_to_none=True)
    for (name, pe), pg in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(pg, pe, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_graph_gives_the_surface_of_its_frame(knn):
    """with_surface: the replay also returns the frame's base points and normals (as Avatar.surface_of on
    the eager deformation), and a surface prior's gradient through the graphed means equals the eager one."""
    import copy

    from utils.losses import normal_offset_regulariser

    eager = Avatar(make_tiny_assets(), torch.zeros(300), ModelOptions(**SMALL), device="cuda")
    cam = tiny_camera().to("cuda")
    eager.initialize_gaussians(tiny_condition(0, torch.float32).cuda(), cam)
    with torch.no_grad():
        for p in eager.deformation.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    graphed = copy.deepcopy(eager)
    run = training_graph(graphed, tiny_condition(0, torch.float32).cuda(), cam, with_surface=True)
    for seed in (1, 2):
        cond = tiny_condition(seed, torch.float32).cuda()
        ref, extras = eager.deform(cond, cam)
        ref_base, ref_normals = eager.surface_of(extras)
        got, (base, normals) = run(cond, cam)
        assert not base.requires_grad and not normals.requires_grad
        torch.testing.assert_close(base, ref_base, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(normals, ref_normals, rtol=1e-5, atol=1e-5)
        normal_offset_regulariser(ref.means, ref_base, ref_normals).backward()
        normal_offset_regulariser(got.means, base, normals).backward()
        seen = 0
        for (name, pe), pg in zip(eager.deformation.named_parameters(), graphed.deformation.parameters()):
            assert (pe.grad is None) == (pg.grad is None), name
            if pe.grad is not None:
                seen += int(pe.grad.abs().max() > 0)
                torch.testing.assert_close(pg.grad, pe.grad, rtol=1e-4, atol=1e-9, msg=name)
            pe.grad, pg.grad = None, None
        assert seen >= 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("ours", [False, True])
def test_cuda_tf32_deformation_agrees_with_fp32(knn, ours):
    """--precision tf32 (tensor-core GEMMs in the MLP) against fp32 at the default MLP width: outputs
    within 1e-3 of their scale; each parameter's gradient within 5% (relative L2; measured on an H200: the
    first layer's weight gradient, a sum over all Gaussians of encoding x output-gradient products with
    10-bit-mantissa factors, 3-4%, the others below 1%), all gradients together within 3% (measured 2.3%)
    and pointing the same way (cosine >= 0.999). The end-to-end check is bench/NOTES.md's held-out PSNR
    after 10k iterations, fp32 against tf32."""
    from utils.precision import set_precision

    cfg = ModelOptions(ours=ours, uv_size=32)
    avatar = Avatar(make_tiny_assets(), torch.zeros(300), cfg, device="cuda")
    avatar.initialize_gaussians(tiny_condition(0, torch.float32).cuda(), tiny_camera().to("cuda"))
    with torch.no_grad():
        for p in avatar.deformation.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator(device="cuda").manual_seed(0)
    n = avatar.n_gaussians
    weights = {k: torch.randn(n * 48, generator=g, device="cuda")
               for k in ("means", "scales", "rotations", "opacities", "shs")}
    cond, cam = tiny_condition(1, torch.float32).cuda(), tiny_camera().to("cuda")
    results = {}
    for precision in ("fp32", "tf32"):
        set_precision(precision, "cuda")
        avatar.zero_grad(set_to_none=True)
        gs = avatar.deform(cond, cam)[0]
        _weighted_sum(gs, weights).backward()
        results[precision] = ({k: getattr(gs, k).detach().clone() for k in weights},
                              {k: p.grad.clone() for k, p in avatar.deformation.named_parameters()
                               if p.grad is not None})
    (out32, grad32), (out, grad) = results["fp32"], results["tf32"]
    for k in weights:
        assert (out[k] - out32[k]).abs().max() <= 1e-3 * out32[k].abs().max(), k
    assert grad32
    for k in grad32:
        assert (grad[k] - grad32[k]).norm() <= 0.05 * grad32[k].norm() + 1e-12, k
    every, every32 = torch.cat([g.flatten() for g in grad.values()]), torch.cat([g.flatten() for g in
                                                                                 grad32.values()])
    assert (every - every32).norm() <= 0.03 * every32.norm()
    assert torch.nn.functional.cosine_similarity(every, every32, dim=0) >= 0.999


def _perturbed_avatar(ours: bool, device: str = "cpu", dtype=torch.float64,
                      appearance: bool = False) -> Avatar:
    """A tiny avatar with non-trivial heads, rotations and scales (every term of the frame exercised)."""
    torch.manual_seed(4)
    avatar = Avatar(make_tiny_assets(1), torch.randn(300, dtype=torch.float64) * 0.5,
                    ModelOptions(ours=ours, conditional_appearance=appearance, **SMALL), dtype=dtype,
                    device=device)
    with torch.no_grad():
        for p in [*avatar.deformation.parameters(), avatar.gaussians.rotation, avatar.gaussians.log_scale]:
            p.add_(torch.randn_like(p) * 0.1)
    return avatar


@pytest.mark.parametrize("ours,appearance", [(False, False), (True, False), (False, True), (True, True)])
def test_frame_gaussians_equal_deform(monkeypatch, ours, appearance):
    """Avatar.frame_gaussians (FLAME up to its skinning transforms, then skinning, interpolation and
    composition on the Gaussians' own corners: scene.model.frame_gaussians) gives deform's Gaussians; with
    the fast path off it is deform itself."""
    avatar = _perturbed_avatar(ours, appearance=appearance)
    cond = tiny_condition(5)
    with torch.no_grad():
        ref, _ = avatar.deform(cond)
    monkeypatch.setitem(fast_paths.ON, "frame_kernel", True)
    got = avatar.frame_gaussians(cond)
    assert ref.rotations.sub(avatar.gaussians.rotation).abs().max() > 1e-3  # the heads move the rotations
    for name in ("means", "scales", "rotations", "opacities", "shs", "colors"):
        a, b = getattr(got, name), getattr(ref, name)
        assert (a is None) == (b is None) and (b is None) == (name == ("shs" if appearance else "colors"))
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    monkeypatch.setitem(fast_paths.ON, "frame_kernel", False)
    assert torch.equal(avatar.frame_gaussians(cond).means, ref.means)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("ours", [False, True])
def test_cuda_frame_kernel_matches_the_torch_pass(monkeypatch, ours):
    """fused_ops' flame_joints + frame_gaussians kernels (Avatar.frame_gaussians on CUDA) against deform,
    float32, baseline and HyperGaussians."""
    from utils.device import fused_kernels

    if fused_kernels() is None:
        pytest.skip("fused_ops is not built")
    avatar = _perturbed_avatar(ours, "cuda", torch.float32)
    monkeypatch.setitem(fast_paths.ON, "frame_kernel", True)
    calls, ops = [], fused_kernels()
    joints, frame = ops.flame_joints, ops.frame_gaussians
    monkeypatch.setattr(ops, "flame_joints", lambda *a: calls.append("joints") or joints(*a))
    monkeypatch.setattr(ops, "frame_gaussians", lambda *a: calls.append("frame") or frame(*a))
    for seed in (1, 2):
        cond = tiny_condition(seed, torch.float32).cuda()
        with torch.no_grad():
            ref, _ = avatar.deform(cond)
        got = avatar.frame_gaussians(cond)
        for name in ("means", "scales", "rotations", "opacities"):
            torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-5, atol=1e-6, msg=name)
    assert calls == ["joints", "frame"] * 2  # the kernels ran, not the torch pass
