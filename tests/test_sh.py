"""Spherical harmonics (docs/maths.md section 7): values at known directions, band truncation, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gaussian_renderer.sh import C0, C1, C2, C3, eval_sh


def basis_numpy(x: float, y: float, z: float) -> np.ndarray:
    """The 16 real SH basis values as docs/maths.md section 7 lists them, written out independently."""
    return np.array([
        C0,
        -C1 * y, C1 * z, -C1 * x,
        C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * z * z - x * x - y * y), C2[3] * x * z,
        C2[4] * (x * x - y * y),
        C3[0] * y * (3 * x * x - y * y), C3[1] * x * y * z, C3[2] * y * (4 * z * z - x * x - y * y),
        C3[3] * z * (2 * z * z - 3 * x * x - 3 * y * y), C3[4] * x * (4 * z * z - x * x - y * y),
        C3[5] * z * (x * x - y * y), C3[6] * x * (x * x - 3 * y * y),
    ])


def one_hot_shs(dtype=torch.float64) -> torch.Tensor:
    """(16, 16, 3): batch entry k has coefficient k = 1 in every channel, so eval gives basis_k."""
    return torch.eye(16, dtype=dtype)[:, :, None].expand(16, 16, 3).clone()


def test_constants_match_spec():
    assert C0 == pytest.approx(1.0 / (2.0 * math.sqrt(math.pi)), rel=1e-15)
    assert C1 == pytest.approx(math.sqrt(3.0 / (4.0 * math.pi)), rel=1e-15)
    assert C2[0] == pytest.approx(0.5 * math.sqrt(15.0 / math.pi), rel=1e-15)
    assert C2[2] == pytest.approx(0.25 * math.sqrt(5.0 / math.pi), rel=1e-15)
    assert C3[1] == pytest.approx(0.5 * math.sqrt(105.0 / math.pi), rel=1e-15)


def test_plus_z_direction_hand_values():
    # d = (0, 0, 1): only the zonal terms survive: C0, C1 z, C2[2] * 2, C3[3] * 2.
    out = eval_sh(3, one_hot_shs(), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64).expand(16, 3))
    expected = np.zeros(16)
    expected[0] = 0.28209479177387814
    expected[2] = 0.4886025119029199
    expected[6] = 2 * 0.31539156525252005
    expected[12] = 2 * 0.3731763325901154
    np.testing.assert_allclose(out[:, 0].numpy(), expected, rtol=0, atol=1e-15)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_plus_x_direction_hand_values():
    # d = (1, 0, 0): -C1, C2[2] * (-1), C2[4], C3[4] * (-1), C3[6].
    out = eval_sh(3, one_hot_shs(), torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64).expand(16, 3))
    expected = np.zeros(16)
    expected[0] = C0
    expected[3] = -0.4886025119029199
    expected[6] = -0.31539156525252005
    expected[8] = 0.5462742152960396
    expected[13] = 0.4570457994644658
    expected[15] = -0.5900435899266435
    np.testing.assert_allclose(out[:, 0].numpy(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("direction", [(1.0, 1.0, 1.0), (0.3, -0.8, 0.52), (-0.6, 0.0, -0.8),
                                       (0.0, -1.0, 0.0)])
def test_general_directions_match_independent_basis(direction):
    d = np.asarray(direction)
    d = d / np.linalg.norm(d)
    out = eval_sh(3, one_hot_shs(), torch.tensor(d).expand(16, 3))
    np.testing.assert_allclose(out[:, 1].numpy(), basis_numpy(*d), rtol=1e-13, atol=1e-15)


def test_degree_truncation_and_linearity():
    g = torch.Generator().manual_seed(0)
    shs = torch.randn(5, 16, 3, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    basis = np.stack([basis_numpy(*v) for v in dirs.numpy()])  # (5, 16)
    for degree in range(4):
        n = (degree + 1) ** 2
        expected = np.einsum("pk,pkc->pc", basis[:, :n], shs[:, :n].numpy())
        np.testing.assert_allclose(eval_sh(degree, shs, dirs).numpy(), expected, rtol=1e-12, atol=1e-13)
        # only the first (degree + 1)^2 coefficients are read
        truncated = eval_sh(degree, shs[:, :n], dirs)
        np.testing.assert_allclose(truncated.numpy(), expected, rtol=1e-12, atol=1e-13)


def test_float32_and_batch_shapes():
    shs = torch.randn(2, 4, 16, 3)
    dirs = torch.nn.functional.normalize(torch.randn(2, 4, 3), dim=-1)
    out = eval_sh(3, shs, dirs)
    assert out.shape == (2, 4, 3) and out.dtype == torch.float32
    ref = eval_sh(3, shs.double(), dirs.double())
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    shs = torch.randn(3, 16, 3, generator=g, dtype=torch.float64, requires_grad=True)
    dirs = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, d: eval_sh(3, s, d), (shs, dirs))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="degree"):
        eval_sh(4, torch.zeros(1, 25, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="shs must be"):
        eval_sh(2, torch.zeros(1, 4, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="dirs must be"):
        eval_sh(0, torch.zeros(1, 1, 3), torch.zeros(1, 2))
