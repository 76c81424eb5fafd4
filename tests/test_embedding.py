"""scene/model/embedding.py and utils/triangle_raster.py: Gaussians on the mesh (docs/maths.md section 4)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from scene.model.embedding import Embedding, default_sample_count, positional_encoding, texel_grid_faces
from utils.triangle_raster import rasterize_triangles


@dataclass
class _UV:
    faces: np.ndarray
    uv: np.ndarray
    uv_faces: np.ndarray


def _grid_mesh(n: int = 7, seed: int = 0) -> tuple[np.ndarray, _UV, np.ndarray]:
    """A bumpy n x n vertex sheet with jittered UVs inside [0.05, 0.95]^2, plus one extra face that
    overlaps others in UV (as mouth faces may) and a separate UV island. Boundary = first row."""
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    x = jj / (n - 1)
    y = ii / (n - 1)
    z = 0.1 * np.sin(3 * x) * np.cos(2 * y)
    verts = np.stack([x, y, z], -1).reshape(-1, 3)
    uv = np.stack([0.05 + 0.6 * x, 0.05 + 0.6 * y], -1).reshape(-1, 2)
    uv[n + 1:-n - 1] += rng.uniform(-0.02, 0.02, size=uv[n + 1:-n - 1].shape)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            faces += [[a, b, d], [a, d, c]]
    faces = np.array(faces)
    uv_faces = faces.copy()
    # extra faces reuse mesh vertices: one overlapping in UV, one on its own island (new vt rows)
    extra_uv = np.array([[0.7, 0.7], [0.95, 0.72], [0.8, 0.95]])
    uv_all = np.concatenate([uv, extra_uv])
    V = len(uv)
    faces = np.concatenate([faces, [[0, n + 1, 2 * n + 3], [5, 6, n + 5]]])
    uv_faces = np.concatenate([uv_faces, [[0, n + 1, 2 * n + 3], [V, V + 1, V + 2]]])
    boundary = np.arange(n)
    return verts, _UV(faces, uv_all, uv_faces), boundary


def _brute_force(uv: np.ndarray, uv_faces: np.ndarray, S: int) -> np.ndarray:
    """Lowest covering face per texel by per-texel, per-face sign tests (python loops)."""
    out = -np.ones((S, S), dtype=np.int64)
    for j in range(S):
        for i in range(S):
            p = ((i + 0.5) / S, 1 - (j + 0.5) / S)
            for f, (a, b, c) in enumerate(uv_faces):
                A, B, C = uv[a], uv[b], uv[c]
                d = [(B[0] - A[0]) * (p[1] - A[1]) - (B[1] - A[1]) * (p[0] - A[0]),
                     (C[0] - B[0]) * (p[1] - B[1]) - (C[1] - B[1]) * (p[0] - B[0]),
                     (A[0] - C[0]) * (p[1] - C[1]) - (A[1] - C[1]) * (p[0] - C[0])]
                if min(d) >= 0 or max(d) <= 0:
                    out[j, i] = f
                    break
    return out


def test_texel_coverage_matches_brute_force() -> None:
    verts, uvm, boundary = _grid_mesh()
    S = 24
    face, bary = texel_grid_faces(uvm.uv, uvm.uv_faces, S)
    ref = _brute_force(uvm.uv, uvm.uv_faces, S)
    np.testing.assert_array_equal(face, ref)
    emb = Embedding.build(uvm, verts, boundary, uv_size=S)
    assert emb.n_texels == int((ref >= 0).sum())
    # independent neck cut: texels whose face touches a boundary vertex
    touching = np.isin(uvm.faces, boundary).any(axis=1)
    kept = (ref >= 0) & ~touching[np.maximum(ref, 0)]
    assert emb.count == int(kept.sum()) and 0 < emb.count < emb.n_texels


def test_barycentrics_positions_and_boundary() -> None:
    verts, uvm, boundary = _grid_mesh(seed=1)
    S = 32
    emb = Embedding.build(uvm, torch.from_numpy(verts), boundary, uv_size=S)
    b = emb.bary.double().numpy()
    assert b.min() >= 0 and b.max() <= 1
    np.testing.assert_allclose(b.sum(1), 1, atol=1e-6)
    assert emb.vertex_ids.dtype == torch.long and emb.vertex_ids.shape == (emb.count, 3)
    # the barycentrics reproduce the texel centre in UV space
    rows, cols = emb.texel_rc[:, 0].numpy(), emb.texel_rc[:, 1].numpy()
    uv_f = uvm.uv[uvm.uv_faces[emb.face_ids.numpy()]]
    uv_pt = (uv_f * b[..., None]).sum(1)
    np.testing.assert_allclose(uv_pt[:, 0], (cols + 0.5) / S, atol=1e-6)
    np.testing.assert_allclose(uv_pt[:, 1], 1 - (rows + 0.5) / S, atol=1e-6)
    # every Gaussian lies on its triangle: in its plane and inside it
    tri = verts[emb.vertex_ids.numpy()]
    p = emb.canonical.double().numpy()
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    assert np.abs(((p - tri[:, 0]) * n).sum(1)).max() < 1e-6
    areas = [np.linalg.norm(np.cross(tri[:, (k + 1) % 3] - p, tri[:, (k + 2) % 3] - p), axis=1)
             for k in range(3)]
    full = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    np.testing.assert_allclose(sum(areas), full, rtol=1e-5, atol=1e-9)
    assert not np.isin(emb.vertex_ids.numpy(), boundary).any()
    np.testing.assert_array_equal(emb.vertex_ids.numpy(), uvm.faces[emb.face_ids.numpy()])


def test_interpolate_batched_matches_manual() -> None:
    verts, uvm, boundary = _grid_mesh()
    emb = Embedding.build(uvm, verts, boundary, uv_size=16)
    torch.testing.assert_close(emb.interpolate(torch.from_numpy(verts).float()), emb.canonical, atol=1e-6,
                               rtol=0)
    posed = torch.randn(2, 3, len(verts), 3, dtype=torch.float64)
    out = emb.interpolate(posed)
    assert out.shape == (2, 3, emb.count, 3) and out.dtype == torch.float64
    ref = np.einsum("abnkc,nk->abnc", posed.numpy()[:, :, emb.vertex_ids.numpy()], emb.bary.double().numpy())
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


def test_positional_encoding_formula() -> None:
    x = torch.randn(5, 3, dtype=torch.float64)
    enc = positional_encoding(x)
    assert enc.shape == (5, 51)
    xn = x.numpy()
    cols = [xn]
    for k in range(8):
        cols += [np.sin(2.0 ** k * xn), np.cos(2.0 ** k * xn)]
    np.testing.assert_allclose(enc.numpy(), np.concatenate(cols, 1), rtol=0, atol=1e-12)
    # explicit spot check: column 3 + 6k + c is sin(2^k x_c), column 6 + 6k + c is cos
    assert enc[2, 3 + 6 * 5 + 1].item() == pytest.approx(np.sin(32 * xn[2, 1]))
    assert enc[2, 6 + 6 * 7 + 2].item() == pytest.approx(np.cos(128 * xn[2, 2]))
    verts, uvm, boundary = _grid_mesh()
    emb = Embedding.build(uvm, verts, boundary, uv_size=16)
    torch.testing.assert_close(emb.encoding, positional_encoding(emb.canonical))


def test_fallback_sampling_without_uv_mesh() -> None:
    verts, uvm, boundary = _grid_mesh()
    faces = uvm.faces[:-2]
    with pytest.warns(UserWarning, match="no UV mesh"):
        emb = Embedding.build(None, verts, boundary, uv_size=16, faces=faces, seed=3)
    assert emb.n_texels == default_sample_count(16) == round(16 * 16 * 14876 / 16384)
    assert not np.isin(emb.vertex_ids.numpy(), boundary).any()
    np.testing.assert_allclose(emb.bary.sum(1).numpy(), 1, atol=1e-6)
    with pytest.warns(UserWarning):
        again = Embedding.build(None, verts, boundary, uv_size=16, faces=faces, seed=3)
    torch.testing.assert_close(again.canonical, emb.canonical)
    # area-uniform: the share of samples on each face follows its area
    with pytest.warns(UserWarning):
        big = Embedding.build(None, verts, [], faces=faces, n_samples=40000, seed=1)
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    share = np.bincount(big.face_ids.numpy(), minlength=len(faces)) / 40000
    np.testing.assert_allclose(share, area / area.sum(), atol=0.006)
    with pytest.raises(ValueError, match="faces"):
        Embedding.build(None, verts, boundary)


def test_rasterizer_depth_test_and_speed() -> None:
    # two overlapping triangles: the nearer one wins regardless of index; barycentrics sum to 1
    tri = np.array([[[0, 0], [10, 0], [0, 10]], [[0, 0], [10, 0], [0, 10]]], dtype=float)
    r = rasterize_triangles(tri, 10, 10, depth=np.array([[2.0, 2, 2], [1.0, 1, 1]]))
    assert (r.face[r.mask] == 1).all() and r.mask.sum() == 55  # centres with x + y <= 10 -> 55
    np.testing.assert_allclose(r.depth[r.mask], 1.0)
    np.testing.assert_allclose(r.bary_persp[r.mask].sum(-1), 1.0)
    # a 128^2 grid with ~10k small UV triangles is fast
    n = 71
    verts, uvm, boundary = _grid_mesh(n=n)
    start = time.perf_counter()
    emb = Embedding.build(uvm, verts, boundary, uv_size=128)
    assert time.perf_counter() - start < 2.0
    assert emb.n_texels > 0.3 * 128 * 128


REAL_COUNTS = {"FlameMesh.obj": 14876, "head_template_mesh.obj": 14734}


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_flame_uv_counts(name: str) -> None:
    """With the user's licensed UV meshes in flame/, the texel grid at 128 has the known size
    (docs/maths.md section 4); skipped when the file is not there (nothing licensed is in the repo)."""
    from pathlib import Path

    from flame.obj import read_obj

    path = Path(__file__).resolve().parents[1] / "flame" / name
    if not path.is_file():
        pytest.skip(f"{path} not present (licensed asset)")
    obj = read_obj(path)
    face, _ = texel_grid_faces(obj.uv, obj.uv_faces, 128)
    assert int((face >= 0).sum()) == REAL_COUNTS[name]
    if name == "FlameMesh.obj":
        assert int((face >= 9976).sum()) == 140


@pytest.mark.cuda
def test_interpolate_on_cuda() -> None:
    verts, uvm, boundary = _grid_mesh()
    emb = Embedding.build(uvm, verts, boundary, uv_size=16).to("cuda")
    posed = torch.randn(3, len(verts), 3)
    out = emb.interpolate(posed.cuda())
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), emb.to("cpu").interpolate(posed))
