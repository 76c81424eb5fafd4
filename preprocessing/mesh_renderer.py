"""A small z-buffer mesh renderer (numpy), independent of the Gaussian renderer.

It draws the synthetic subject's ground truth (docs/maths.md section 12): vertices are moved into the
OpenCV camera (x right, y down, z forward) by ``R``, ``t``, projected with ``K`` in continuous pixel
coordinates (u = fx x/z + cx, pixel i spans [i, i+1)), and rasterized at pixel centres by
``utils.triangle_raster`` with a depth test. With supersampling ``ss`` the same projection is scaled
by ``ss`` and sampled on an ``ss`` times finer grid; :func:`box_downsample` averages it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.triangle_raster import rasterize_triangles


@dataclass
class Fragments:
    """Per sample (Hs, Ws): ``face`` (-1 = empty), perspective-correct ``bary`` (Hs, Ws, 3),
    view ``depth`` (inf = empty); ``points`` (V, 3) camera-space vertices; ``ss`` the supersampling
    factor."""

    face: np.ndarray
    bary: np.ndarray
    depth: np.ndarray
    points: np.ndarray
    ss: int

    @property
    def mask(self) -> np.ndarray:
        return self.face >= 0

    def interpolate(self, values: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Per-vertex ``values`` (V, C) interpolated at every covered sample -> (Hs, Ws, C), 0 elsewhere."""
        out = np.zeros((*self.face.shape, values.shape[-1]), dtype=np.float64)
        m = self.mask
        corners = values[faces[self.face[m]]]  # (K, 3, C)
        out[m] = (corners * self.bary[m][..., None]).sum(axis=1)
        return out


def to_camera(vertices: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """World (V, 3) -> OpenCV camera coordinates with world-to-camera ``R``, ``t``."""
    return np.asarray(vertices, np.float64) @ np.asarray(R, np.float64).T + np.asarray(t, np.float64)


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera points (V, 3) -> continuous pixel coordinates (V, 2): u = fx x/z + cx, v = fy y/z + cy."""
    z = points_cam[:, 2:3]
    return points_cam[:, :2] / z * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])


def rasterize_mesh(vertices: np.ndarray, faces: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray,
                   height: int, width: int, ss: int = 1) -> Fragments:
    """Z-buffer rasterization of a world-space mesh seen by an OpenCV camera, ``ss`` x ``ss`` samples
    per pixel (sample (a, b) of pixel (j, i) sits at ((i + (b+0.5)/ss), (j + (a+0.5)/ss)))."""
    faces = np.asarray(faces, np.int64)
    pts = to_camera(vertices, R, t)
    uv = project(pts, np.asarray(K, np.float64)) * ss
    tri = uv[faces]
    r = rasterize_triangles(tri, width * ss, height * ss, depth=pts[faces, 2])
    return Fragments(face=r.face, bary=r.bary_persp, depth=r.depth, points=pts, ss=ss)


def box_downsample(image: np.ndarray, ss: int) -> np.ndarray:
    """Average ``ss`` x ``ss`` blocks: (H*ss, W*ss, ...) -> (H, W, ...)."""
    if ss == 1:
        return image
    h, w = image.shape[0] // ss, image.shape[1] // ss
    return image.reshape(h, ss, w, ss, *image.shape[2:]).mean(axis=(1, 3))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) from the faces' winding."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return vn / np.maximum(norm, 1e-12)
