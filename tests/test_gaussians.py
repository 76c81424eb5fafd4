"""Gaussian parameters: per-frame composition against hand formulas, init, SH schedule, optimiser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scene.model.deformation import DeformationOutput
from scene.model.gaussians import GaussianModel, sh_degree_for_iteration

N = 7


def _hamilton_np(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """(w1 w2 - v1.v2, w1 v2 + w2 v1 + v1 x v2): the vector form, independent of the torch helper."""
    w1, v1, w2, v2 = q1[:, :1], q1[:, 1:], q2[:, :1], q2[:, 1:]
    w = w1 * w2 - (v1 * v2).sum(1, keepdims=True)
    v = w1 * v2 + w2 * v1 + np.cross(v1, v2)
    return np.concatenate([w, v], axis=1)


def _random_model(seed: int) -> GaussianModel:
    model = GaussianModel(N).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return model


def _deform(seed: int, appearance: bool = False) -> DeformationOutput:
    g = torch.Generator().manual_seed(seed)
    t = [torch.tanh(torch.randn(N, k, generator=g, dtype=torch.float64)) for k in (3, 4, 3)]
    if appearance:
        return DeformationOutput(*t, colors=torch.rand(N, 3, generator=g, dtype=torch.float64),
                                 opacity_logits=torch.randn(N, 1, generator=g, dtype=torch.float64))
    return DeformationOutput(*t)


def test_compose_matches_hand_formulas():
    model = _random_model(0)
    model.active_sh_degree = 2
    base = torch.randn(N, 3, dtype=torch.float64)
    d = _deform(1)
    gs = model.compose(base, d)
    dx, dr, ds = d.d_xyz.numpy(), d.d_rot.numpy(), d.d_scale.numpy()
    np.testing.assert_allclose(gs.means.numpy(), base.numpy() + dx, atol=1e-12)
    delta = np.concatenate([np.exp(dr[:, :1]), dr[:, 1:]], axis=1)
    q = _hamilton_np(model.rotation.detach().numpy(), delta)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(gs.rotations.detach().numpy(), q, atol=1e-12)
    np.testing.assert_allclose(gs.scales.detach().numpy(),
                               np.exp(model.log_scale.detach().numpy() * np.exp(ds)), atol=1e-12)
    np.testing.assert_allclose(gs.opacities.detach().numpy(),
                               1 / (1 + np.exp(-model.opacity.detach().numpy())), atol=1e-12)
    assert gs.shs.shape == (N, 16, 3) and gs.colors is None and gs.sh_degree == 2
    torch.testing.assert_close(gs.shs[:, 0], model.features_dc[:, 0])
    torch.testing.assert_close(gs.shs[:, 1:], model.features_rest)


def test_zero_deformation_keeps_base_rotation_direction_and_scale():
    model = _random_model(2)
    zero = DeformationOutput(torch.zeros(N, 3, dtype=torch.float64), torch.zeros(N, 4, dtype=torch.float64),
                             torch.zeros(N, 3, dtype=torch.float64))
    gs = model.compose(torch.zeros(N, 3, dtype=torch.float64), zero)
    base_q = model.rotation.detach() / model.rotation.detach().norm(dim=1, keepdim=True)
    torch.testing.assert_close(gs.rotations.detach(), base_q)
    torch.testing.assert_close(gs.scales.detach(), model.log_scale.detach().exp())


def test_conditional_appearance_replaces_colour_and_opacity():
    model = _random_model(3)
    d = _deform(4, appearance=True)
    gs = model.compose(torch.zeros(N, 3, dtype=torch.float64), d)
    assert gs.shs is None
    torch.testing.assert_close(gs.colors, d.colors)
    torch.testing.assert_close(gs.opacities, torch.sigmoid(d.opacity_logits))


def test_initialize_from_positions():
    model = GaussianModel(N)
    pos = torch.randn(N, 3, generator=torch.Generator().manual_seed(5))
    pos[1] = pos[0]  # a duplicate: its distance is 0 for one neighbour
    d = torch.cdist(pos.double(), pos.double()) ** 2
    d.fill_diagonal_(float("inf"))
    dist2 = d.topk(3, largest=False).values.mean(1)
    dist2[4] = 0.0  # clamped at 1e-7
    with torch.no_grad():
        model.features_dc.fill_(1.0)
        model.rotation.fill_(3.0)
    model.initialize(pos, dist2=dist2)
    expected = 0.5 * np.log(np.maximum(1e-7, dist2.numpy()))
    np.testing.assert_allclose(model.log_scale.detach().numpy(), np.repeat(expected[:, None], 3, 1),
                               rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(model.features_dc) == 0 and torch.count_nonzero(model.features_rest) == 0
    torch.testing.assert_close(torch.sigmoid(model.opacity.detach()), torch.full((N, 1), 0.1))
    assert torch.equal(model.rotation.detach(), torch.tensor([[1.0, 0, 0, 0]]).expand(N, 4))


def test_initialize_with_simple_knn():
    try:
        from simple_knn import distCUDA2  # noqa: F401
    except ImportError:
        pytest.skip("simple_knn not built/installed")
    model = GaussianModel(N)
    pos = torch.randn(N, 3, generator=torch.Generator().manual_seed(6))
    model.initialize(pos)
    d = torch.cdist(pos.double(), pos.double()) ** 2
    d.fill_diagonal_(float("inf"))
    expected = 0.5 * torch.log(d.topk(3, largest=False).values.mean(1).clamp_min(1e-7))
    torch.testing.assert_close(model.log_scale.detach()[:, 0].double(), expected, rtol=1e-5, atol=1e-5)


def test_sh_degree_schedule():
    assert [sh_degree_for_iteration(i) for i in (0, 1, 499, 500, 999, 1000, 1499, 1500, 30000)] == \
        [0, 0, 0, 1, 1, 2, 2, 3, 3]
    model = GaussianModel(N, max_sh_degree=1)
    assert model.update_sh_degree(2000) == 1 and model.active_sh_degree == 1
    assert model.features_rest.shape == (N, 3, 3)


def test_gaussian_optimizer_groups():
    model = GaussianModel(N)
    opt = model.make_optimizer()
    groups = {g["name"]: g for g in opt.param_groups}
    expected = {"f_dc": (0.0025, model.features_dc), "f_rest": (0.0025 / 20, model.features_rest),
                "opacity": (0.05, model.opacity), "scaling": (0.005, model.log_scale),
                "rotation": (0.001, model.rotation)}
    assert set(groups) == set(expected)
    for name, (lr, param) in expected.items():
        assert math.isclose(groups[name]["lr"], lr, rel_tol=0, abs_tol=1e-15)
        assert groups[name]["eps"] == 1e-15
        assert groups[name]["params"] == [param]


def _parse_ply(path) -> tuple[list[str], np.ndarray]:
    """A tiny independent reader for binary little-endian float PLY files."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    count = int(lines[2].split()[2])
    props = [ln.split()[2] for ln in lines if ln.startswith("property float ")]
    assert len(lines) == 3 + len(props) + 1
    values = np.frombuffer(raw[end:], dtype="<f4")
    assert values.size == count * len(props)
    return props, values.reshape(count, len(props))


def test_ply_round_trip(tmp_path):
    from gaussian_renderer.types import GaussianSet
    from scene.model.ply import write_ply

    g = torch.Generator().manual_seed(9)
    P = 5
    shs = torch.randn(P, 16, 3, generator=g)
    rot = torch.nn.functional.normalize(torch.randn(P, 4, generator=g), dim=-1)
    gs = GaussianSet(means=torch.randn(P, 3, generator=g), scales=torch.rand(P, 3, generator=g) + 0.01,
                     rotations=rot, opacities=torch.rand(P, 1, generator=g) * 0.9 + 0.05, shs=shs,
                     sh_degree=3)
    out = write_ply(tmp_path / "sub" / "points.ply", gs)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    props, v = _parse_ply(out)
    assert props[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert props[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert props[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    col = {n: v[:, i] for i, n in enumerate(props)}
    np.testing.assert_allclose(np.stack([col["x"], col["y"], col["z"]], 1), gs.means.numpy(), atol=1e-7)
    assert not np.any(v[:, 3:6])
    np.testing.assert_allclose(v[:, 6:9], shs[:, 0].numpy(), atol=1e-7)
    for c in range(3):  # channel-major: f_rest_{c*15 + k} = coefficient k+1 of channel c
        for k in range(15):
            np.testing.assert_allclose(col[f"f_rest_{c * 15 + k}"], shs[:, k + 1, c].numpy(), atol=1e-7)
    np.testing.assert_allclose(1 / (1 + np.exp(-col["opacity"])), gs.opacities[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(np.exp(v[:, 55:58]), gs.scales.numpy(), rtol=1e-6)
    np.testing.assert_allclose(v[:, 58:62], rot.numpy(), atol=1e-7)


def test_ply_zeroes_inactive_sh_and_encodes_colours(tmp_path):
    from gaussian_renderer.types import GaussianSet
    from scene.model.ply import write_ply

    P = 3
    shs = torch.ones(P, 16, 3)
    base = dict(means=torch.zeros(P, 3), scales=torch.ones(P, 3), opacities=torch.full((P, 1), 0.5),
                rotations=torch.tensor([[1.0, 0, 0, 0]]).repeat(P, 1))
    _, v = _parse_ply(write_ply(tmp_path / "a.ply", GaussianSet(**base, shs=shs, sh_degree=1)))
    rest = v[:, 9:54].reshape(P, 3, 15)
    assert np.all(rest[:, :, :3] == 1) and not np.any(rest[:, :, 3:])
    colors = torch.tensor([[0.5, 1.0, 0.0]]).repeat(P, 1)
    _, v = _parse_ply(write_ply(tmp_path / "b.ply", GaussianSet(**base, colors=colors)))
    np.testing.assert_allclose(0.28209479177387814 * v[:, 6:9] + 0.5, colors.numpy(), atol=1e-6)
    assert not np.any(v[:, 9:54]) and np.allclose(v[:, 54], 0.0)
