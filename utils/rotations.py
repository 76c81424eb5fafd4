"""Rotation helpers, the one place for them: 6D (first two rows), quaternions (w first), axis turns."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def rot6d_to_matrix(r6: Tensor) -> Tensor:
    """(..., 6) -> (..., 3, 3). The 6 numbers are the first two *rows* (docs/maths.md section 3):
    b1 = a1/|a1|, b2 = normalize(a2 - (b1.a2) b1), b3 = b1 x b2; the matrix has rows b1, b2, b3."""
    a1, a2 = r6[..., :3], r6[..., 3:6]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


def matrix_to_rot6d(R: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 6): the first two rows, flattened."""
    return R[..., :2, :].reshape(*R.shape[:-2], 6)


IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # the identity rotation's first two rows


def identity_rot6d(*batch: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """:data:`IDENTITY_6D` broadcast to ``batch`` + (6,)."""
    eye = torch.tensor(IDENTITY_6D, dtype=dtype, device=device)
    return eye.expand(*batch, 6).clone()


def quaternion_multiply(q1: Tensor, q2: Tensor) -> Tensor:
    """Hamilton product q1 ⊗ q2 of (..., 4) quaternions, w first (broadcasting), in vector form:
    (w1 w2 - v1.v2, w1 v2 + w2 v1 + v1 x v2) -- 9 elementwise kernels where the 16 products of the
    component form took 23 (each a launch of its own on a GPU: the avatar composes every Gaussian's
    rotation this way every frame and training step, forward and backward)."""
    w1, v1 = q1[..., :1], q1[..., 1:]
    w2, v2 = q2[..., :1], q2[..., 1:]
    w = w1 * w2 - (v1 * v2).sum(dim=-1, keepdim=True)
    v = torch.addcmul(w2 * v1, w1, v2) + torch.linalg.cross(*torch.broadcast_tensors(v1, v2), dim=-1)
    return torch.cat([w, v], dim=-1)


_QUADRATIC_FORMS: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _rotation_quadratic_form(device: torch.device, dtype: torch.dtype) -> Tensor:
    """(9, 16) T with vec(R(q)) = T vec(q q^T) for a unit quaternion q (w, x, y, z); made once per device."""
    key = (device, dtype)
    if key not in _QUADRATIC_FORMS:
        T = torch.zeros(9, 4, 4, dtype=torch.float64)
        w, x, y, z = range(4)
        terms = {0: [(w, w, 1), (x, x, 1), (y, y, -1), (z, z, -1)], 1: [(x, y, 2), (w, z, -2)],
                 2: [(x, z, 2), (w, y, 2)], 3: [(x, y, 2), (w, z, 2)],
                 4: [(w, w, 1), (x, x, -1), (y, y, 1), (z, z, -1)], 5: [(y, z, 2), (w, x, -2)],
                 6: [(x, z, 2), (w, y, -2)], 7: [(y, z, 2), (w, x, 2)],
                 8: [(w, w, 1), (x, x, -1), (y, y, -1), (z, z, 1)]}
        for i, entries in terms.items():
            for a, b, v in entries:
                T[i, a, b] = v
        _QUADRATIC_FORMS[key] = T.reshape(9, 16).to(device=device, dtype=dtype)
    return _QUADRATIC_FORMS[key]


def unit_quaternion_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) unit quaternions -> (..., 3, 3), as one quadratic form: two kernels forward and backward, for
    the inner loops of small optimisations (:func:`quaternion_to_matrix` takes some thirty)."""
    outer = (q[..., :, None] * q[..., None, :]).reshape(*q.shape[:-1], 16)
    return (outer @ _rotation_quadratic_form(q.device, q.dtype).T).reshape(*q.shape[:-1], 3, 3)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) quaternion (w, x, y, z), used as given (not normalised again) -> (..., 3, 3)."""
    r, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y),
        2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x),
        2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def rotation_angle_deg(A: Tensor, B: Tensor) -> Tensor:
    """The angle in degrees of the turn between rotations (..., 3, 3) ``A`` and ``B`` (that of A B^T)."""
    cos = (((A @ B.transpose(-1, -2)).diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def rotation_about_y(angle_rad: float, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """3x3 rotation by ``angle_rad`` about the y axis (right-handed)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=dtype, device=device)


def rotation_about_x(angle_rad: float, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """3x3 rotation by ``angle_rad`` about the x axis (right-handed)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=dtype, device=device)


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """(..., 3, 3) rotation -> (..., 4) unit quaternion (w, x, y, z) with w >= 0; the inverse of
    :func:`quaternion_to_matrix` (Shepperd's method: the largest of the four squared terms is taken as the
    pivot, so no division by a small number)."""
    m = R.reshape(-1, 3, 3)
    t = torch.stack([1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                     1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1)
    pivot = t.argmax(-1)
    s = t.gather(1, pivot[:, None]).clamp_min(1e-12).sqrt()[:, 0] * 2  # 4 * |component of the pivot|
    w = torch.stack([s / 4, (m[:, 2, 1] - m[:, 1, 2]) / s, (m[:, 0, 2] - m[:, 2, 0]) / s,
                     (m[:, 1, 0] - m[:, 0, 1]) / s], -1)
    x = torch.stack([(m[:, 2, 1] - m[:, 1, 2]) / s, s / 4, (m[:, 0, 1] + m[:, 1, 0]) / s,
                     (m[:, 0, 2] + m[:, 2, 0]) / s], -1)
    y = torch.stack([(m[:, 0, 2] - m[:, 2, 0]) / s, (m[:, 0, 1] + m[:, 1, 0]) / s, s / 4,
                     (m[:, 1, 2] + m[:, 2, 1]) / s], -1)
    z = torch.stack([(m[:, 1, 0] - m[:, 0, 1]) / s, (m[:, 0, 2] + m[:, 2, 0]) / s,
                     (m[:, 1, 2] + m[:, 2, 1]) / s, s / 4], -1)
    q = torch.stack([w, x, y, z], 1).gather(1, pivot[:, None, None].expand(-1, 1, 4))[:, 0]
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*R.shape[:-2], 4)
