"""Export Gaussians as a PLY file in the standard 3D Gaussian Splatting binary layout (docs/maths.md
section 10), so that common splat viewers open a frame of the avatar.

One ``vertex`` element, little-endian float32 properties in this order: x y z nx ny nz f_dc_0..2
f_rest_0..44 opacity scale_0..2 rot_0..3. As 3DGS stores them: ``f_rest`` channel-major (index
``c * 15 + k`` holds coefficient k+1 of channel c), opacity as a logit, scale as a log, rotation w first;
normals are zero. Written with numpy structured arrays (no extra dependency) and atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from gaussian_renderer.types import GaussianSet
from utils.atomic import atomic_open

SH_C0 = 0.28209479177387814
N_REST = 15  # degree 3: 16 coefficients per channel, DC first
OPACITY_EPS = 1e-7


def ply_property_names() -> list[str]:
    """The 62 property names in file order."""
    return (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
            + [f"f_rest_{i}" for i in range(3 * N_REST)] + ["opacity"]
            + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


def gaussians_to_ply_array(gaussians: GaussianSet) -> np.ndarray:
    """The structured array (P,) of ``gaussians`` in the 3DGS layout.

    SH coefficients beyond ``gaussians.sh_degree`` are written as zero (the viewer then shows what our
    renderer draws). With precomputed ``colors`` (conditional appearance) the DC term is set so that
    SH evaluation gives that colour, ``(c - 0.5) / C0``, and the rest is zero.
    """
    means = _np(gaussians.means)
    P = means.shape[0]
    rest = np.zeros((P, N_REST, 3), dtype=np.float64)
    if gaussians.colors is not None:
        dc = (_np(gaussians.colors).reshape(P, 3) - 0.5) / SH_C0
    elif gaussians.shs is not None:
        shs = _np(gaussians.shs)
        if shs.ndim != 3 or shs.shape[0] != P or shs.shape[2] != 3:
            raise ValueError(f"PLY export: shs must be ({P}, K, 3), got {shs.shape}")
        dc = shs[:, 0]
        k = min(shs.shape[1], (gaussians.sh_degree + 1) ** 2) - 1
        rest[:, :k] = shs[:, 1:k + 1]
    else:
        raise ValueError("PLY export: the Gaussians carry neither shs nor colors")
    opac = np.clip(_np(gaussians.opacities).reshape(P), OPACITY_EPS, 1.0 - OPACITY_EPS)
    columns = [means, np.zeros((P, 3)), dc, rest.transpose(0, 2, 1).reshape(P, 3 * N_REST),
               np.log(opac / (1.0 - opac))[:, None], np.log(_np(gaussians.scales).reshape(P, 3)),
               _np(gaussians.rotations).reshape(P, 4)]
    flat = np.concatenate(columns, axis=1)
    names = ply_property_names()
    out = np.empty(P, dtype=[(n, "<f4") for n in names])
    for i, n in enumerate(names):
        out[n] = flat[:, i]
    return out


def write_ply(path: str | os.PathLike, gaussians: GaussianSet) -> Path:
    """Write ``gaussians`` to ``path`` (binary little-endian PLY), atomically; returns the path."""
    path = Path(path)
    data = gaussians_to_ply_array(gaussians)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(data)}"]
    header += [f"property float {n}" for n in data.dtype.names]
    header.append("end_header")
    payload = ("\n".join(header) + "\n").encode("ascii") + data.tobytes()
    with atomic_open(path, "wb", fsync=True) as f:
        f.write(payload)
    return path


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)
