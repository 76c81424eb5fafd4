"""Gaussians on the mesh: where each Gaussian sits on the FLAME surface (docs/maths.md section 4).

Built once per subject from the canonical mesh (the subject's shape, zero expression). Each texel
of a ``uv_size`` x ``uv_size`` grid whose centre falls inside a texture-space triangle of the UV mesh
is one Gaussian, fixed to that triangle at the texel centre's barycentrics; Gaussians on triangles
that touch the neck ``boundary`` ring are dropped. Per frame, :meth:`Embedding.interpolate` places
them on the posed mesh. Without a UV mesh, the same kind of (face, barycentric) pairs are sampled
area-uniformly with a fixed seed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from utils.triangle_raster import rasterize_triangles

if TYPE_CHECKING:  # pragma: no cover
    from flame.assets import UVMesh

# Fraction of a uv_size^2 grid that FLAME's own UV layout covers (14876 of 16384 texels at 128):
# the sample count used when no UV mesh is available.
FLAME_UV_COVERAGE = 14876 / 16384
N_FREQS = 8


def positional_encoding(x: Tensor, n_freqs: int = N_FREQS) -> Tensor:
    """[x, sin(2^0 x), cos(2^0 x), ..., sin(2^(K-1) x), cos(2^(K-1) x)] along the last axis:
    for 3D input and K = 8, 3 + 48 = 51 values (for each k: sin of all coords, then cos)."""
    parts = [x]
    for k in range(n_freqs):
        f = float(2.0 ** k)
        parts.append(torch.sin(f * x))
        parts.append(torch.cos(f * x))
    return torch.cat(parts, dim=-1)


def texel_grid_faces(uv: np.ndarray, uv_faces: np.ndarray, uv_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterize texture-space triangles at texel centres (u = (i+0.5)/S, v = 1 - (j+0.5)/S).
    Returns ``face`` (S, S) int64 (-1 where uncovered; lowest face index wins overlaps) and
    ``bary`` (S, S, 3)."""
    uv = np.asarray(uv, dtype=np.float64)
    tri_uv = uv[np.asarray(uv_faces, dtype=np.int64)]  # (F, 3, 2)
    pix = np.empty_like(tri_uv)
    pix[..., 0] = tri_uv[..., 0] * uv_size  # column coordinate
    pix[..., 1] = (1.0 - tri_uv[..., 1]) * uv_size  # row coordinate (v points up)
    r = rasterize_triangles(pix, uv_size, uv_size)
    return r.face, r.bary


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` area-uniform points on a triangle mesh: face ids (count,) and barycentrics (count, 3),
    from ``numpy.random.default_rng(seed)``."""
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not np.isfinite(area).all() or area.sum() <= 0:
        raise ValueError("sample_surface: the mesh has no area (degenerate or non-finite vertices)")
    rng = np.random.default_rng(seed)
    face = rng.choice(len(faces), size=count, p=area / area.sum())
    r1 = np.sqrt(rng.random(count))
    r2 = rng.random(count)
    bary = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)
    return face.astype(np.int64), bary


@dataclass
class Embedding:
    """Kept Gaussians (N of them) on the mesh. ``face_ids`` (N,) index the rasterized faces (the UV
    mesh's, mouth faces included); ``vertex_ids`` (N,3) long; ``bary`` (N,3); ``canonical`` (N,3)
    positions on the canonical mesh; ``encoding`` (N,51); ``texel_rc`` (N,2) long (row, column) of
    each Gaussian's texel (-1 when sampled without a UV mesh); ``n_texels`` covered texels before
    the neck cut; ``n_mouth`` kept Gaussians on the UV mesh's mouth-closing faces; ``uv_size``."""

    face_ids: Tensor
    vertex_ids: Tensor
    bary: Tensor
    canonical: Tensor
    encoding: Tensor
    texel_rc: Tensor
    n_texels: int
    uv_size: int
    n_mouth: int = 0

    @property
    def count(self) -> int:
        return int(self.vertex_ids.shape[0])

    def counts(self) -> dict[str, int]:
        """The texel counts users compare with the original's (14876 / 14527 at uv_size 128 on FLAME)."""
        return {"uv_size": self.uv_size, "texels_covered": self.n_texels,
                "gaussians_after_neck_cut": self.count, "mouth_gaussians": self.n_mouth}

    def describe(self) -> str:
        """One line for the console: the counts of :meth:`counts`."""
        return (f"{self.n_texels} UV texels covered at uv_size {self.uv_size}, {self.count} Gaussians after "
                f"the neck cut, {self.n_mouth} of them on the mouth faces")

    @classmethod
    def build(cls, uv_mesh: UVMesh | None, canonical_vertices: Any, boundary_idx: Any,
              uv_size: int = 128, seed: int = 0, *, faces: Any = None,
              n_samples: int | None = None) -> Embedding:
        """Lay Gaussians on the canonical mesh (V,3).

        With ``uv_mesh`` (``faces`` (F',3) vertex ids, ``uv`` (T,2), ``uv_faces`` (F',3)) its faces
        are rasterized in texture space at ``uv_size``. Without it, ``faces`` (F,3) must be given and
        ``n_samples`` points (default ``round(FLAME_UV_COVERAGE * uv_size**2)``, the count FLAME's
        layout gives) are sampled area-uniformly with ``seed``; a warning says so. Gaussians whose
        face touches a vertex in ``boundary_idx`` are dropped.
        """
        verts = torch.as_tensor(canonical_vertices).detach().cpu().double().numpy()
        if verts.ndim != 2 or verts.shape[1] != 3:
            raise ValueError(f"Embedding.build: canonical_vertices must be (V, 3), got {verts.shape}")
        if uv_mesh is not None:
            mesh_faces = np.asarray(uv_mesh.faces, dtype=np.int64)
            uv_faces = np.asarray(uv_mesh.uv_faces, dtype=np.int64)
            if mesh_faces.shape != uv_faces.shape:
                raise ValueError(f"Embedding.build: UV mesh faces {mesh_faces.shape} and uv_faces "
                                 f"{uv_faces.shape} differ in shape; the OBJ file is malformed")
            face_grid, bary_grid = texel_grid_faces(np.asarray(uv_mesh.uv), uv_faces, uv_size)
            rows, cols = np.nonzero(face_grid >= 0)  # row-major texel order
            face_id = face_grid[rows, cols]
            bary = bary_grid[rows, cols]
            texel_rc = np.stack([rows, cols], axis=1).astype(np.int64)
        else:
            if faces is None:
                raise ValueError("Embedding.build: without a UV mesh the mesh faces are needed (faces=...)")
            mesh_faces = np.asarray(torch.as_tensor(faces).cpu().numpy(), dtype=np.int64)
            count = n_samples if n_samples is not None else default_sample_count(uv_size)
            warnings.warn(f"no UV mesh: sampling {count} Gaussians area-uniformly on the mesh (seed {seed}) "
                          "instead of the texel grid; put FlameMesh.obj into the FLAME folder for the "
                          "standard layout", stacklevel=2)
            face_id, bary = sample_surface(verts, mesh_faces, count, seed)
            texel_rc = np.full((count, 2), -1, dtype=np.int64)
        if mesh_faces.size and (mesh_faces.min() < 0 or mesh_faces.max() >= len(verts)):
            raise ValueError(f"Embedding.build: faces index vertices 0..{mesh_faces.max()}, but the "
                             f"canonical mesh has {len(verts)} vertices; the UV mesh does not match the "
                             "model")
        n_texels = int(len(face_id))
        boundary = np.zeros(len(verts), dtype=bool)
        b_idx = np.asarray(torch.as_tensor(boundary_idx).cpu().numpy(), dtype=np.int64).reshape(-1)
        boundary[b_idx] = True
        vertex_ids = mesh_faces[face_id]
        keep = ~boundary[vertex_ids].any(axis=1)
        face_id, bary, vertex_ids, texel_rc = face_id[keep], bary[keep], vertex_ids[keep], texel_rc[keep]
        first_mouth = len(mesh_faces) - getattr(uv_mesh, "n_mouth_faces", 0)  # mouth faces come last
        n_mouth = int((face_id >= first_mouth).sum()) if uv_mesh is not None else 0
        canonical = (verts[vertex_ids] * bary[..., None]).sum(axis=1)
        canonical_t = torch.from_numpy(canonical).float()
        return cls(
            face_ids=torch.from_numpy(face_id.astype(np.int64)),
            vertex_ids=torch.from_numpy(vertex_ids.astype(np.int64)),
            bary=torch.from_numpy(bary).float(),
            canonical=canonical_t,
            encoding=positional_encoding(canonical_t),
            texel_rc=torch.from_numpy(texel_rc),
            n_texels=n_texels,
            uv_size=int(uv_size),
            n_mouth=n_mouth,
        )

    def _corners(self, vertices: Tensor) -> Tensor:
        """The corners (..., N, 3, 3) of each Gaussian's triangle on vertices (..., V, 3)."""
        ids = self.vertex_ids.to(vertices.device)
        return vertices[..., ids.reshape(-1), :].reshape(*vertices.shape[:-2], *ids.shape, 3)

    def interpolate(self, vertices: Tensor) -> Tensor:
        """Posed vertices (..., V, 3) -> Gaussian base positions (..., N, 3) at the same barycentrics."""
        bary = self.bary.to(device=vertices.device, dtype=vertices.dtype)
        return (self._corners(vertices) * bary[..., None]).sum(dim=-2)

    def normals(self, vertices: Tensor) -> Tensor:
        """Unit normals (..., N, 3) of each Gaussian's triangle on posed vertices (..., V, 3); the sign
        follows the face's winding (the surface priors square it, so it does not matter there)."""
        a, b, c = self._corners(vertices).unbind(-2)
        return torch.nn.functional.normalize(torch.linalg.cross(b - a, c - a), dim=-1)

    def to(self, device: torch.device | str) -> Embedding:
        """The same embedding with its tensors on ``device``."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, Tensor):
                kw[k] = v.to(device)
        return Embedding(**kw)


def default_sample_count(uv_size: int) -> int:
    """Gaussian count used without a UV mesh: FLAME's texel coverage of a ``uv_size`` grid."""
    return int(round(FLAME_UV_COVERAGE * uv_size ** 2))


__all__ = ["Embedding", "positional_encoding", "texel_grid_faces", "sample_surface", "default_sample_count",
           "FLAME_UV_COVERAGE"]
