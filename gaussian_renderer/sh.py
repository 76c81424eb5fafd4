"""Real spherical harmonics up to degree 3 (docs/maths.md section 7), the one implementation in the project.

The sums are written in the original rasterizer's evaluation order (left to right, constants
multiplied first) so that float32 results match it to the last bit as far as torch allows.
"""

from __future__ import annotations

from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

MAX_SH_DEGREE = 3


def sh_coefficient_count(degree: int) -> int:
    """Number of SH coefficients per channel for ``degree``: (degree + 1)^2."""
    return (degree + 1) ** 2


def eval_sh(degree: int, shs: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate SH colour ``(..., 3)`` from coefficients ``shs (..., K, 3)`` (DC first) in unit
    directions ``dirs (..., 3)``, adding each band only up to ``degree`` (0..3). No +0.5 offset."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"eval_sh: degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    need = sh_coefficient_count(degree)
    if shs.dim() < 2 or shs.shape[-1] != 3 or shs.shape[-2] < need:
        raise ValueError(f"eval_sh: shs must be (..., K>={need}, 3) for degree {degree}, "
                         f"got {tuple(shs.shape)}")
    if dirs.shape[-1] != 3:
        raise ValueError(f"eval_sh: dirs must be (..., 3), got {tuple(dirs.shape)}")
    sh = [shs[..., i, :] for i in range(need)]
    result = C0 * sh[0]
    if degree > 0:
        x = dirs[..., 0:1]
        y = dirs[..., 1:2]
        z = dirs[..., 2:3]
        result = result - (C1 * y) * sh[1] + (C1 * z) * sh[2] - (C1 * x) * sh[3]
        if degree > 1:
            xx, yy, zz = x * x, y * y, z * z
            xy, yz, xz = x * y, y * z, x * z
            result = (result
                      + (C2[0] * xy) * sh[4]
                      + (C2[1] * yz) * sh[5]
                      + (C2[2] * (2.0 * zz - xx - yy)) * sh[6]
                      + (C2[3] * xz) * sh[7]
                      + (C2[4] * (xx - yy)) * sh[8])
            if degree > 2:
                result = (result
                          + ((C3[0] * y) * (3.0 * xx - yy)) * sh[9]
                          + ((C3[1] * xy) * z) * sh[10]
                          + ((C3[2] * y) * (4.0 * zz - xx - yy)) * sh[11]
                          + ((C3[3] * z) * (2.0 * zz - 3.0 * xx - 3.0 * yy)) * sh[12]
                          + ((C3[4] * x) * (4.0 * zz - xx - yy)) * sh[13]
                          + ((C3[5] * z) * (xx - yy)) * sh[14]
                          + ((C3[6] * x) * (xx - 3.0 * yy)) * sh[15])
    return result
