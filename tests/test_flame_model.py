"""The FLAME layer against an independent numpy implementation of docs/maths.md section 3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flame.assets import load_flame_assets
from flame.model import FLAME
from flame.synthetic import write_synthetic_flame
from utils.rotations import matrix_to_rot6d, rot6d_to_matrix


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return load_flame_assets(write_synthetic_flame(tmp_path_factory.mktemp("flame"), resolution=24, seed=3))


# -- reference: docs/maths.md section 3 written out with 4x4 homogeneous matrices in numpy ------------------

def np_rot6d(a: np.ndarray) -> np.ndarray:
    a1, a2 = a[:3], a[3:6]
    b1 = a1 / np.linalg.norm(a1)
    b2 = a2 - np.dot(b1, a2) * b1
    b2 = b2 / np.linalg.norm(b2)
    return np.array([b1, b2, np.cross(b1, b2)])


def np_flame(a, shape, expr, rotation, neck, jaw, eye_l, eye_r, eyelids, translation) -> np.ndarray:
    V = a.v_template.shape[0]
    betas = np.concatenate([shape, expr])
    v_shaped = a.v_template + np.einsum("vck,k->vc", a.shapedirs, betas)
    J = a.J_regressor @ v_shaped
    Rs = [np_rot6d(p) for p in (rotation, neck, jaw, eye_l, eye_r)]
    feature = np.concatenate([(R - np.eye(3)).ravel() for R in Rs[1:]])
    v_posed = v_shaped + (a.posedirs.reshape(V * 3, 36) @ feature).reshape(V, 3)
    parents = [-1, 0, 1, 1, 1]
    G = []
    for i, R in enumerate(Rs):
        local = np.eye(4)
        local[:3, :3] = R
        local[:3, 3] = J[i] - (J[parents[i]] if parents[i] >= 0 else 0.0)
        G.append(local if parents[i] < 0 else G[parents[i]] @ local)
    A = []
    for i in range(5):
        unrest = np.eye(4)
        unrest[:3, 3] = -J[i]
        A.append(G[i] @ unrest)
    T = np.einsum("vj,jab->vab", a.weights, np.stack(A))
    vh = np.concatenate([v_posed, np.ones((V, 1))], axis=1)
    out = np.einsum("vab,vb->va", T, vh)[:, :3]
    out = out + a.l_eyelid * eyelids[0] + a.r_eyelid * eyelids[1]
    return out + translation


def random_params(rng: np.random.Generator, B: int) -> dict[str, np.ndarray]:
    """Raw random 6D vectors (not orthonormal: the conversion must normalise them)."""
    def rot(n=1):
        return rng.normal(size=(B, 6 * n)) * 0.3 + np.tile([1.0, 0, 0, 0, 1.0, 0], n)

    return dict(shape=rng.normal(size=(B, 300)), expression=rng.normal(size=(B, 100)), jaw=rot(),
                eyes=rot(2), eyelids=rng.uniform(0, 1, size=(B, 2)), neck=rot(), rotation=rot(),
                translation=rng.normal(size=(B, 3)) * 0.1)


def x_rot6d(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[1.0, 0.0, 0.0, 0.0, c, -s]], dtype=torch.float64)


# -- tests -------------------------------------------------------------------------------------------

def test_forward_matches_numpy_reference(assets):
    rng = np.random.default_rng(0)
    p = random_params(rng, 3)
    flame = FLAME(assets, dtype=torch.float64)
    out = flame(**{k: torch.from_numpy(v) for k, v in p.items()}).numpy()
    assert out.shape == (3, assets.n_vertices, 3)
    for b in range(3):
        ref = np_flame(assets, p["shape"][b], p["expression"][b], p["rotation"][b], p["neck"][b], p["jaw"][b],
                       p["eyes"][b, :6], p["eyes"][b, 6:], p["eyelids"][b], p["translation"][b])
        assert np.abs(out[b] - ref).max() < 1e-5
        assert np.abs(out[b] - assets.v_template).max() > 0.01  # the parameters did something


def test_zero_parameters_give_template(assets):
    flame = FLAME(assets, dtype=torch.float64)
    out = flame(torch.zeros(300, dtype=torch.float64), torch.zeros(2, 100, dtype=torch.float64),
                jaw=torch.tensor([[1.0, 0, 0, 0, 1, 0]]).expand(2, 6), eyelids=torch.zeros(2, 2),
                translation=torch.zeros(2, 3))
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(assets.v_template, out.shape), atol=1e-12)


def test_jaw_moves_only_jaw_weighted_vertices(assets):
    flame = FLAME(assets, dtype=torch.float64)
    shaped = flame.for_shape(torch.zeros(300))
    rest = shaped(torch.zeros(1, 100))[0].numpy()
    opened = shaped(torch.zeros(1, 100), jaw=x_rot6d(0.3))[0].numpy()
    moved = np.linalg.norm(opened - rest, axis=1)
    w_jaw = assets.weights[:, 2]
    assert moved[w_jaw == 0].max() < 1e-12
    assert moved[w_jaw > 0.5].min() > 1e-3
    assert (w_jaw == 0).sum() > assets.n_vertices // 2


def test_for_shape_equals_full_forward(assets):
    rng = np.random.default_rng(1)
    p = {k: torch.from_numpy(v) for k, v in random_params(rng, 4).items()}
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        flame = FLAME(assets, dtype=dtype)
        shape = p["shape"][0]
        full = flame(shape, p["expression"], jaw=p["jaw"], eyes=p["eyes"], eyelids=p["eyelids"])
        shaped = flame.for_shape(shape)(p["expression"], jaw=p["jaw"], eyes=p["eyes"], eyelids=p["eyelids"])
        assert full.dtype == dtype and shaped.dtype == dtype
        assert (full - shaped).abs().max().item() < tol
        np.testing.assert_allclose(flame.for_shape(shape).v_rest.double().numpy(),
                                   flame(shape, torch.zeros(1, 100))[0].double().numpy(), atol=tol)


def test_batched_float32_matches_float64(assets):
    rng = np.random.default_rng(2)
    p = random_params(rng, 5)
    f64 = FLAME(assets, dtype=torch.float64)(**{k: torch.from_numpy(v) for k, v in p.items()})
    f32 = FLAME(assets)(**{k: torch.from_numpy(v).float() for k, v in p.items()})
    assert f32.dtype == torch.float32 and f32.shape == (5, assets.n_vertices, 3)
    assert (f32.double() - f64).abs().max().item() < 1e-5
    # Each batch element is independent of the others.
    single = FLAME(assets, dtype=torch.float64)(**{k: torch.from_numpy(v[2:3]) for k, v in p.items()})
    assert (single[0] - f64[2]).abs().max().item() < 1e-12


def test_gradients_match_finite_differences(assets):
    flame = FLAME(assets, dtype=torch.float64)
    shaped = flame.for_shape(torch.zeros(300))
    rng = np.random.default_rng(4)
    expr = torch.from_numpy(rng.normal(size=(1, 100))).requires_grad_(True)
    jaw = x_rot6d(0.2).requires_grad_(True)
    weights = torch.from_numpy(rng.normal(size=(assets.n_vertices, 3)))

    def loss(e, j):
        return (shaped(e, jaw=j) * weights).sum()

    loss(expr, jaw).backward()
    eps = 1e-6
    for k in (0, 37, 99):
        d = torch.zeros_like(expr)
        d[0, k] = eps
        fd = (loss(expr.detach() + d, jaw.detach()) - loss(expr.detach() - d, jaw.detach())) / (2 * eps)
        assert abs(fd.item() - expr.grad[0, k].item()) < 1e-6 * max(1.0, abs(fd.item()))
    for k in (1, 5):
        d = torch.zeros_like(jaw)
        d[0, k] = eps
        fd = (loss(expr.detach(), jaw.detach() + d) - loss(expr.detach(), jaw.detach() - d)) / (2 * eps)
        assert abs(fd.item() - jaw.grad[0, k].item()) < 1e-5 * max(1.0, abs(fd.item()))


def test_rot6d_round_trip():
    rng = np.random.default_rng(5)
    raw = torch.from_numpy(rng.normal(size=(50, 6)))
    R = rot6d_to_matrix(raw)
    ref = np.stack([np_rot6d(a) for a in raw.numpy()])
    np.testing.assert_allclose(R.numpy(), ref, atol=1e-12)
    eye = np.broadcast_to(np.eye(3), R.shape)
    np.testing.assert_allclose((R @ R.transpose(-1, -2)).numpy(), eye, atol=1e-12)
    np.testing.assert_allclose(torch.linalg.det(R).numpy(), 1.0, atol=1e-12)
    # matrix -> 6D -> matrix is exact; 6D of a rotation -> matrix -> 6D too.
    r6 = matrix_to_rot6d(R)
    np.testing.assert_allclose(rot6d_to_matrix(r6).numpy(), R.numpy(), atol=1e-12)
    np.testing.assert_allclose(matrix_to_rot6d(rot6d_to_matrix(r6)).numpy(), r6.numpy(), atol=1e-12)


def test_bad_inputs_are_refused(assets):
    flame = FLAME(assets)
    with pytest.raises(ValueError, match="jaw"):
        flame(torch.zeros(300), torch.zeros(1, 100), jaw=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="expression"):
        flame(torch.zeros(300), torch.zeros(1, 101))
    with pytest.raises(ValueError, match="batch"):
        flame(torch.zeros(300), torch.zeros(2, 100), eyes=torch.zeros(3, 12))


def test_module_moves_with_to_and_keeps_buffers_out_of_state_dict(assets):
    flame = FLAME(assets).to(torch.float64)
    assert flame.v_template.dtype == torch.float64
    assert flame.faces.dtype == torch.long and tuple(flame.faces.shape) == assets.faces.shape
    assert flame.state_dict() == {}


@pytest.mark.cuda
def test_cuda_matches_cpu(assets):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    rng = np.random.default_rng(6)
    p = {k: torch.from_numpy(v).float() for k, v in random_params(rng, 3).items()}
    cpu = FLAME(assets)(**p)
    gpu = FLAME(assets).cuda()(**{k: v.cuda() for k, v in p.items()})
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max().item() < 1e-4
