"""A FLAME-format synthetic head model (docs/maths.md section 12), built from a seed with no licensed data.

The head is a deformed, latitude-longitude gridded ellipsoid in FLAME's frame (y up, looking along
+z, metres, about 0.25 m from crown to the neck cut), open at the neck (the rim ring is the
``boundary`` mask), with nose, brows, cheeks, lips, chin and ears as smooth bumps. A slit between an
upper and a lower lip row is the mouth; the faces that would close it are left out of the model's
faces and appended after them in ``FlameMesh.obj`` only (like the original's 30 mouth faces). Two
closed eyeball spheres sit in the eye sockets, poles along the gaze (+z) so their front caps are the
iris and pupil. Grid density is raised on the face, where the texture layout also gives more area.

Joints: root (neck cut centre), neck, jaw (hinge behind the mouth between the ears), left and
right eye (eyeball centres), parents -1, 0, 1, 1, 1. Left means the subject's left, +x.
``write_synthetic_flame`` writes the files in the real layout (docs/maths.md section 2).
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse

from flame.landmarks import (
    LANDMARK_FILE,
    MAX_YAW_DEG,
    N_YAW_BINS,
    LandmarkEmbedding,
    write_landmark_embedding,
)
from flame.obj import atomic_write_bytes, write_obj

__all__ = ["SyntheticFlame", "build_synthetic_flame", "write_synthetic_flame", "DEFAULT_RESOLUTION"]

DEFAULT_RESOLUTION = 64

# Geometry constants (metres / radians).
THETA_MAX = 2.55          # polar angle of the neck cut (0 = crown)
THETA_EYE, PHI_EYE = 1.33, 0.39
THETA_MOUTH = 1.86
PHI_MOUTH = 0.33          # half-width of the mouth slit (azimuth of the corners)
EYE_RADIUS = 0.0120
EYE_PROTRUSION = 0.0038   # how far the eyeball pokes out of the skin
LID_SHELL = 0.0015        # closed lids lie this far outside the eyeball
IRIS_ANGLE, PUPIL_ANGLE = 0.55, 0.22
RIM_Y = -0.15


@dataclass
class SyntheticFlame:
    """The synthetic model in memory. ``faces`` are the model's own faces; ``mouth_faces`` close the
    mouth (they follow ``faces`` in the UV mesh); ``uv_faces`` covers ``faces`` then ``mouth_faces``."""

    v_template: np.ndarray
    faces: np.ndarray
    mouth_faces: np.ndarray
    uv: np.ndarray
    uv_faces: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: scipy.sparse.csc_matrix
    kintree_table: np.ndarray
    weights: np.ndarray
    masks: dict[str, np.ndarray]
    l_eyelid: np.ndarray
    r_eyelid: np.ndarray
    landmarks: LandmarkEmbedding


# ---------------------------------------------------------------------------------------------------
# small helpers

def _smoothstep(a: float | np.ndarray, b: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _angdiff(phi: np.ndarray, phi0: float) -> np.ndarray:
    return (phi - phi0 + np.pi) % (2.0 * np.pi) - np.pi


def _bump(theta: np.ndarray, phi: np.ndarray, t0: float, p0: float, st: float, sp: float) -> np.ndarray:
    return np.exp(-0.5 * ((theta - t0) / st) ** 2 - 0.5 * (_angdiff(phi, p0) / sp) ** 2)


def _warped_grid(n: int, lo: float, hi: float, density, endpoint: bool) -> np.ndarray:
    """n (+1 with endpoint) samples of [lo, hi] spaced inversely to ``density``."""
    x = np.linspace(lo, hi, 4001)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density(x[1:]) + density(x[:-1])) * np.diff(x))])
    cdf /= cdf[-1]
    q = np.arange(n + 1 if endpoint else n) / n
    return np.interp(q, cdf, x)


def _theta_density(t: np.ndarray) -> np.ndarray:
    return (1.0 + 1.3 * np.exp(-0.5 * ((t - 1.62) / 0.32) ** 2)
            + 0.8 * np.exp(-0.5 * ((t - THETA_EYE) / 0.08) ** 2))


def _phi_density(p: np.ndarray) -> np.ndarray:
    return (1.0 + 1.6 * np.exp(-0.5 * (p / 0.55) ** 2)
            + 0.8 * np.exp(-0.5 * ((np.abs(p) - PHI_EYE) / 0.1) ** 2))


def _surface(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """The neutral head surface at polar angle ``theta`` (0 = crown) and azimuth ``phi`` (0 = +z)."""
    st, ct, sp, cp = np.sin(theta), np.cos(theta), np.sin(phi), np.cos(phi)
    back = cp < 0
    ax, ay, az = 0.076, 0.108, np.where(back, 0.100, 0.090)
    head = np.stack([ax * st * sp, ay * ct + 0.005, az * st * cp], axis=-1)
    # Below the jaw the surface blends into a neck cylinder set back from the chin.
    front = 0.5 * (1.0 + cp)
    blend = _smoothstep(1.85 + 0.38 * front, 2.36 + 0.12 * front, theta)
    y_neck = -0.055 - (theta - 1.9) / (THETA_MAX - 1.9) * (-RIM_Y - 0.055)
    neck = np.stack([0.050 * sp, y_neck, -0.012 + 0.052 * cp], axis=-1)
    p = (1.0 - blend)[:, None] * head + blend[:, None] * neck
    # Facial features, mostly forward (+z) on the front.
    dz = (0.020 * _bump(theta, phi, 1.63, 0.0, 0.07, 0.09)            # nose tip
          + 0.012 * _bump(theta, phi, 1.45, 0.0, 0.12, 0.07)          # nose bridge
          + 0.006 * _bump(theta, phi, 1.17, PHI_EYE, 0.06, 0.22)      # brows
          + 0.006 * _bump(theta, phi, 1.17, -PHI_EYE, 0.06, 0.22)
          - 0.007 * _bump(theta, phi, THETA_EYE, PHI_EYE, 0.08, 0.11)  # eye sockets
          - 0.007 * _bump(theta, phi, THETA_EYE, -PHI_EYE, 0.08, 0.11)
          + 0.005 * _bump(theta, phi, 1.68, 0.62, 0.13, 0.18)         # cheeks
          + 0.005 * _bump(theta, phi, 1.68, -0.62, 0.13, 0.18)
          + 0.006 * _bump(theta, phi, THETA_MOUTH, 0.0, 0.07, 0.24)   # lips
          + 0.009 * _bump(theta, phi, 2.10, 0.0, 0.08, 0.25))         # chin
    ears = 0.011 * (_bump(theta, phi, 1.55, np.pi / 2, 0.14, 0.10)
                    + _bump(theta, phi, 1.55, -np.pi / 2, 0.14, 0.10))
    p[:, 2] += dz * (1.0 - blend)
    p[:, 0] += ears * np.sign(sp)
    return p


# ---------------------------------------------------------------------------------------------------
# the mesh

@dataclass
class _Mesh:
    verts: np.ndarray
    theta: np.ndarray           # per head vertex (grid values, before lip pinching)
    phi: np.ndarray
    n_head: int
    faces: np.ndarray
    mouth_faces: np.ndarray
    uv: np.ndarray
    uv_faces: np.ndarray
    rim: np.ndarray
    lip_rows: tuple[np.ndarray, np.ndarray]
    eye_ids: tuple[np.ndarray, np.ndarray]
    eye_alpha: np.ndarray       # per eyeball vertex, angle from the gaze axis (same for both eyes)
    eye_centres: np.ndarray     # (2,3) left, right


def _eye_centre(sign: float) -> np.ndarray:
    p = _surface(np.array([THETA_EYE]), np.array([sign * PHI_EYE]))[0]
    return p - np.array([0.0, 0.0, EYE_RADIUS - EYE_PROTRUSION])


def _build_mesh(resolution: int) -> _Mesh:
    n_lon = int(resolution) + int(resolution) % 2
    n_lat = max(12, (3 * n_lon) // 4)
    thetas = _warped_grid(n_lat, 0.0, THETA_MAX, _theta_density, endpoint=True)   # rows 0..n_lat
    phis = _warped_grid(n_lon, -np.pi, np.pi, _phi_density, endpoint=False)       # phis[n_lon//2] == 0
    phis[n_lon // 2] = 0.0
    half = n_lon // 2
    phis[half + 1:] = -phis[half - 1:0:-1]  # exact left/right symmetry

    # Head vertices: pole, then rings 1..n_lat (ring n_lat is the neck rim).
    ring_theta = np.repeat(thetas[1:], n_lon)
    ring_phi = np.tile(phis, n_lat)
    theta = np.concatenate([[0.0], ring_theta])
    phi = np.concatenate([[0.0], ring_phi])

    def vid(i, j):
        return 1 + (np.asarray(i) - 1) * n_lon + np.asarray(j) % n_lon

    # The mouth slit lies between rows i_m (upper lip) and i_m + 1 (lower lip), columns with
    # |phi| < PHI_MOUTH; the lips are pinched towards each other so the rest mouth is nearly closed.
    i_m = int(np.argmin(np.abs(0.5 * (thetas[1:-1] + thetas[2:]) - THETA_MOUTH))) + 1
    corner = int(np.sum(phis[half:] < PHI_MOUTH)) - 1
    corner = max(corner, 1)
    cols = np.arange(half - corner, half + corner + 1)        # lip columns, corners included
    mid, gap = 0.5 * (thetas[i_m] + thetas[i_m + 1]), thetas[i_m + 1] - thetas[i_m]
    rel = np.abs(phis[cols]) / max(np.abs(phis[cols]).max(), 1e-9)
    open_frac = 0.3 + 0.7 * rel ** 2
    theta_geo = theta.copy()
    theta_geo[vid(i_m, cols)] = mid - 0.5 * gap * open_frac
    theta_geo[vid(i_m + 1, cols)] = mid + 0.5 * gap * open_frac
    head = _surface(theta_geo, phi)
    head[0] = _surface(np.array([0.0]), np.array([0.0]))[0]

    # Faces (outward winding: theta-direction edge x phi-direction edge).
    j = np.arange(n_lon)
    fan = np.stack([np.zeros(n_lon, dtype=np.int64), vid(1, j), vid(1, j + 1)], axis=1)
    ii, jj = np.meshgrid(np.arange(1, n_lat), j, indexing="ij")
    a, b, c, d = vid(ii, jj), vid(ii, jj + 1), vid(ii + 1, jj), vid(ii + 1, jj + 1)
    quads_t1 = np.stack([a, c, b], axis=-1)
    quads_t2 = np.stack([b, c, d], axis=-1)
    is_mouth = np.zeros(ii.shape, dtype=bool)
    is_mouth[i_m - 1, cols[:-1]] = True
    grid_faces = np.stack([quads_t1, quads_t2], axis=2)                  # (rows, cols, 2, 3)

    # Head texture layout: u across (seam at the back), v down from the crown; rows shrink towards
    # the crown so the crown is a point. Column 0 has a duplicate vt at the right edge for the seam.
    s = np.arange(n_lat + 1) / n_lat
    eq = np.argmin(np.abs(thetas - np.pi / 2))
    q = np.sin(0.5 * np.pi * np.minimum(1.0, s / s[eq])) ** 0.7
    u_col = np.arange(n_lon + 1) / n_lon - 0.5                           # n_lon + 1: seam duplicate
    v_row = 0.99 - 0.78 * s
    u_ring = 0.5 + 0.98 * u_col[None, :] * q[1:, None]                     # (n_lat, n_lon + 1)
    v_ring = np.broadcast_to(v_row[1:, None], u_ring.shape)
    uv_head = np.concatenate([[[0.5, 0.99]], np.stack([u_ring, v_ring], -1).reshape(-1, 2)])

    def tid(i, jcol):
        return 1 + (np.asarray(i) - 1) * (n_lon + 1) + np.asarray(jcol)

    t_fan = np.stack([np.zeros(n_lon, dtype=np.int64), tid(1, j), tid(1, j + 1)], axis=1)
    ta, tb, tc, td = tid(ii, jj), tid(ii, jj + 1), tid(ii + 1, jj), tid(ii + 1, jj + 1)
    grid_uv = np.stack([np.stack([ta, tc, tb], -1), np.stack([tb, tc, td], -1)], axis=2)

    head_faces = np.concatenate([fan, grid_faces[~is_mouth].reshape(-1, 3)])
    head_uv_faces = np.concatenate([t_fan, grid_uv[~is_mouth].reshape(-1, 3)])
    mouth_faces = grid_faces[is_mouth].reshape(-1, 3)
    # The mouth faces get their own texture box in the free top-left corner of the atlas (like the
    # original's mouth faces), so the Gaussians inside the mouth do not shrink with the resolution.
    n_cols = len(cols)
    uc = 0.03 + 0.18 * np.arange(n_cols) / (n_cols - 1)
    uv_mouth = np.concatenate([np.stack([uc, np.full(n_cols, 0.975)], -1),      # upper lip row
                               np.stack([uc, np.full(n_cols, 0.915)], -1)])     # lower lip row
    k = np.arange(n_cols - 1)
    mouth_uv_local = np.stack([np.stack([k, k + n_cols, k + 1], -1),
                               np.stack([k + 1, k + n_cols, k + n_cols + 1], -1)], axis=1).reshape(-1, 3)

    # Eyeballs: poles on the gaze axis (+z); alpha = angle from the front pole.
    n_ea, n_eb = max(6, n_lon // 6), max(8, n_lon // 4)
    alpha = np.concatenate([[0.0], np.repeat(np.arange(1, n_ea) * np.pi / n_ea, n_eb), [np.pi]])
    beta = np.concatenate([[0.0], np.tile(np.arange(n_eb) * 2 * np.pi / n_eb, n_ea - 1), [0.0]])
    unit = np.stack([np.sin(alpha) * np.cos(beta), np.sin(alpha) * np.sin(beta), np.cos(alpha)], -1)
    n_eye = unit.shape[0]

    def evid(k, l):
        return 1 + (np.asarray(k) - 1) * n_eb + np.asarray(l) % n_eb

    le = np.arange(n_eb)
    kk, ll = np.meshgrid(np.arange(1, n_ea - 1), le, indexing="ij")
    ea, eb, ec, ed = evid(kk, ll), evid(kk, ll + 1), evid(kk + 1, ll), evid(kk + 1, ll + 1)
    back = n_eye - 1
    eye_faces = np.concatenate([
        np.stack([np.zeros(n_eb, dtype=np.int64), evid(1, le), evid(1, le + 1)], 1),
        np.stack([ea, ec, eb], -1).reshape(-1, 3), np.stack([eb, ec, ed], -1).reshape(-1, 3),
        np.stack([np.full(n_eb, back), evid(n_ea - 1, le + 1), evid(n_ea - 1, le)], 1)])
    # Eyeball texture: the same sinusoidal layout in a small box per eye, front pole at the top.
    ue = np.arange(n_eb + 1) / n_eb - 0.5
    ve = np.arange(n_ea + 1) / n_ea
    ring_uv = np.stack(np.broadcast_arrays(ue[None, :] * np.sin(ve[1:-1, None] * np.pi),
                                           np.broadcast_to(-ve[1:-1, None], (n_ea - 1, n_eb + 1))), -1)
    eye_uv_unit = np.concatenate([[[0.0, 0.0]], ring_uv.reshape(-1, 2), [[0.0, -1.0]]])

    def etid(k, l):
        return 1 + (np.asarray(k) - 1) * (n_eb + 1) + np.asarray(l)

    n_eye_uv = eye_uv_unit.shape[0]
    eye_uv_faces = np.concatenate([
        np.stack([np.zeros(n_eb, dtype=np.int64), etid(1, le), etid(1, le + 1)], 1),
        np.stack([etid(kk, ll), etid(kk + 1, ll), etid(kk, ll + 1)], -1).reshape(-1, 3),
        np.stack([etid(kk, ll + 1), etid(kk + 1, ll), etid(kk + 1, ll + 1)], -1).reshape(-1, 3),
        np.stack([np.full(n_eb, n_eye_uv - 1), etid(n_ea - 1, le + 1), etid(n_ea - 1, le)], 1)])

    centres = np.stack([_eye_centre(+1.0), _eye_centre(-1.0)])
    n_head = head.shape[0]
    verts = [head]
    faces = [head_faces]
    uv = [uv_head]
    uv_faces = [head_uv_faces]
    eye_ids = []
    for e, (x0, x1) in enumerate(((0.55, 0.78), (0.22, 0.45))):   # left eye (+x) on the right of the atlas
        offset = n_head + e * n_eye
        verts.append(centres[e] + EYE_RADIUS * unit)
        faces.append(eye_faces + offset)
        box = np.array([0.5 * (x0 + x1), 0.19]) + eye_uv_unit * np.array([x1 - x0, 0.17])
        uv_faces.append(eye_uv_faces + sum(len(t) for t in uv))
        uv.append(box)
        eye_ids.append(np.arange(offset, offset + n_eye))
    mouth_uv_faces = mouth_uv_local + sum(len(t) for t in uv)
    uv.append(uv_mouth)
    uv_all = np.concatenate(uv)
    return _Mesh(verts=np.concatenate(verts), theta=theta, phi=phi, n_head=n_head,
                 faces=np.concatenate(faces), mouth_faces=mouth_faces, uv=uv_all,
                 uv_faces=np.concatenate(uv_faces + [mouth_uv_faces]),
                 rim=vid(n_lat, j), lip_rows=(vid(i_m, cols), vid(i_m + 1, cols)),
                 eye_ids=(eye_ids[0], eye_ids[1]), eye_alpha=alpha, eye_centres=centres)


# ---------------------------------------------------------------------------------------------------
# rigging, blendshapes, masks

def _smooth_fields(rng: np.random.Generator, points: np.ndarray, n_fields: int, n_terms: int,
                   freq: np.ndarray) -> np.ndarray:
    """(n_fields, P, 3) smooth random vector fields of unit RMS-scale: sums of ``n_terms`` plane waves
    with frequency magnitudes ``freq`` (n_fields,) in rad/m, random directions and phases."""
    k = rng.normal(size=(n_fields, n_terms, 3))
    k *= (freq[:, None] / np.linalg.norm(k, axis=-1))[..., None]
    phase = rng.uniform(0.0, 2 * np.pi, size=(n_fields, n_terms))
    amp = rng.normal(size=(n_fields, n_terms, 3)) / np.sqrt(n_terms)
    waves = np.cos(np.einsum("ftc,pc->ftp", k, points) + phase[..., None])   # (F, T, P)
    return np.einsum("ftp,ftc->fpc", waves, amp)


def _skinning(mesh: _Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Skinning weights (V,5) and the jaw factor A (head vertices; 0 above the mouth, 1 below)."""
    V, H = mesh.verts.shape[0], mesh.n_head
    theta, phi = mesh.theta, mesh.phi
    y = mesh.verts[:H, 1]
    up_row = mesh.theta[mesh.lip_rows[0][0]]
    low_row = mesh.theta[mesh.lip_rows[1][0]]
    aphi = np.abs(phi)
    widen = 0.55 * np.maximum(0.0, aphi - PHI_MOUTH)
    A = _smoothstep(up_row - widen, low_row + widen, theta)
    # Lateral falloff: the lower lip follows the jaw fully in the middle and about half at the
    # corners (an oval opening), the cheeks less and less towards the ears.
    B = 1.0 - 0.45 * _smoothstep(0.05, PHI_MOUTH, aphi) - 0.55 * _smoothstep(PHI_MOUTH, 1.35, aphi)
    C = _smoothstep(-0.118, -0.088, y)
    w_root = _smoothstep(-0.095, -0.14, y)
    w_jaw = (1.0 - w_root) * A * B * C
    w_jaw[0] = 0.0
    weights = np.zeros((V, 5))
    weights[:H, 0] = w_root
    weights[:H, 2] = w_jaw
    weights[:H, 1] = 1.0 - w_root - w_jaw
    weights[mesh.eye_ids[0], 3] = 1.0
    weights[mesh.eye_ids[1], 4] = 1.0
    return weights, A


def _joint_regressor(mesh: _Mesh) -> scipy.sparse.csc_matrix:
    """Sparse (5,V), rows sum to 1: root = neck-rim centre, neck = centre of the ring at the top of
    the neck, jaw = mean of head vertices at the two jaw hinges, eyes = eyeball centres."""
    V, H = mesh.verts.shape[0], mesh.n_head
    head = mesh.verts[:H]
    y_mouth = mesh.verts[mesh.lip_rows[0], 1].mean()
    # The grid ring whose back-of-head vertex is at the top of the neck (y = -0.085).
    back = np.flatnonzero(np.cos(mesh.phi) < -0.99)
    ring_theta = mesh.theta[back[np.argmin(np.abs(head[back, 1] + 0.085))]]
    ring = np.flatnonzero(mesh.theta == ring_theta)
    hinge = []
    for sign in (1.0, -1.0):
        target = np.array([sign * 0.075, y_mouth + 0.012, -0.008])
        hinge.append(np.argsort(np.linalg.norm(head - target, axis=1))[:4])
    rows = [mesh.rim, ring, np.concatenate(hinge), mesh.eye_ids[0], mesh.eye_ids[1]]
    r = np.concatenate([np.full(len(ids), k) for k, ids in enumerate(rows)])
    c = np.concatenate(rows)
    w = np.concatenate([np.full(len(ids), 1.0 / len(ids)) for ids in rows])
    return scipy.sparse.csc_matrix((w, (r, c)), shape=(5, V))


Region = tuple[float, float, float, float, tuple[float, float, float], str]


def _expression_regions(mesh: _Mesh) -> list[Region]:
    """(theta, phi, sigma_theta, sigma_phi, main direction, lip side) of the expression regions."""
    tm = THETA_MOUTH
    regions = []
    for s in (1.0, -1.0):
        regions += [
            (tm, s * PHI_MOUTH, 0.07, 0.10, (s * 0.6, 0.7, -0.4), ""),          # mouth corners
            (1.16, s * 0.36, 0.07, 0.20, (0.0, 1.0, 0.1), ""),                 # brows
            (1.20, s * 0.14, 0.06, 0.10, (-s * 0.5, 0.8, 0.1), ""),           # inner brows
            (1.70, s * 0.58, 0.12, 0.18, (s * 0.3, 0.8, 0.5), ""),            # cheeks
            (1.62, s * 0.15, 0.05, 0.07, (s * 0.8, 0.4, 0.0), ""),            # nose wings
            (THETA_EYE + 0.13, s * PHI_EYE, 0.05, 0.12, (0.0, 1.0, 0.3), ""),  # lower lids (squint)
        ]
    regions += [
        (tm - 0.03, 0.0, 0.06, 0.22, (0.0, 0.6, 0.8), "upper"),      # upper lip
        (tm + 0.05, 0.0, 0.06, 0.22, (0.0, -0.6, 0.8), "lower"),     # lower lip
        (2.08, 0.0, 0.09, 0.25, (0.0, 0.7, 0.7), "lower"),           # chin
        (0.95, 0.0, 0.18, 0.45, (0.0, 1.0, 0.0), ""),                # forehead
    ]
    return regions


def _expression_dirs(mesh: _Mesh, rng: np.random.Generator, A: np.ndarray) -> np.ndarray:
    """(V,3,100) localized expression blendshapes; eyeballs and the neck do not move."""
    H = mesh.n_head
    regions = _expression_regions(mesh)
    dirs = np.zeros((mesh.verts.shape[0], 3, 100))
    order = np.concatenate([rng.permutation(len(regions)) for _ in range(100 // len(regions) + 1)])[:100]
    for k, r in enumerate(order):
        t0, p0, st, sp, main, side = regions[r]
        w = _bump(mesh.theta, mesh.phi, t0, p0, st * rng.uniform(0.8, 1.3), sp * rng.uniform(0.8, 1.3))
        if side == "upper":
            w = w * (1.0 - A)
        elif side == "lower":
            w = w * A
        direction = np.asarray(main) + 0.6 * rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        amp = 0.0022 / (1.0 + k / 40.0)
        dirs[:H, :, k] = amp * w[:, None] * direction[None, :]
        if k % 3 == 0 and p0 != 0.0:   # every third paired component also moves the mirror region
            w2 = _bump(mesh.theta, mesh.phi, t0, -p0, st, sp)
            dirs[:H, :, k] += amp * w2[:, None] * (direction * np.array([-1.0, 1.0, 1.0]))[None, :]
    return dirs


def _identity_dirs(mesh: _Mesh, rng: np.random.Generator) -> np.ndarray:
    """(V,3,300) smooth identity blendshapes; each eyeball moves rigidly with the field at its centre."""
    n = 300
    freq = 6.0 + 40.0 * np.sqrt(np.arange(n) / n)
    sigma = 0.003 / (1.0 + np.arange(n) / 8.0) ** 0.8
    pts = np.concatenate([mesh.verts[:mesh.n_head], mesh.eye_centres])
    fields = _smooth_fields(rng, pts, n, 4, freq) * sigma[:, None, None]     # (300, H+2, 3)
    dirs = np.zeros((mesh.verts.shape[0], 3, n))
    dirs[:mesh.n_head] = fields[:, :mesh.n_head].transpose(1, 2, 0)
    for e in range(2):
        dirs[mesh.eye_ids[e]] = fields[:, mesh.n_head + e].T[None]
    return dirs


def _pose_dirs(mesh: _Mesh, rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """(V,3,36) small pose correctives: neck ones where the neck bends, jaw ones on jaw-skinned
    vertices only, none for the eyes (as in FLAME)."""
    V, H = mesh.verts.shape[0], mesh.n_head
    posedirs = np.zeros((V, 3, 36))
    fields = _smooth_fields(rng, mesh.verts[:H], 18, 3, np.full(18, 25.0))    # (18, H, 3)
    neck_w = 4.0 * weights[:H, 0] * weights[:H, 1]
    jaw_w = weights[:H, 2]
    posedirs[:H, :, 0:9] = 0.004 * (fields[:9] * neck_w[None, :, None]).transpose(1, 2, 0)
    posedirs[:H, :, 9:18] = 0.004 * (fields[9:] * jaw_w[None, :, None]).transpose(1, 2, 0)
    return posedirs


def _eyelid(mesh: _Mesh, e: int) -> np.ndarray:
    """(V,3) eyelid closing: skin inside the eyeball is pushed out onto a shell just outside it
    (upper skin further, so it covers the eye first) and the skin above the eye slides down."""
    H = mesh.n_head
    c = mesh.eye_centres[e]
    head = mesh.verts[:H]
    d = head - c
    dist = np.linalg.norm(d, axis=1)
    r_open = np.sqrt(EYE_RADIUS ** 2 - (EYE_RADIUS - EYE_PROTRUSION) ** 2)
    elev = d[:, 1] / r_open
    front = d[:, 2] > 0
    push = np.maximum(0.0, EYE_RADIUS + LID_SHELL - dist) * (1.0 + 1.2 * np.clip(elev, 0.0, 1.0)) * front
    out = np.zeros((mesh.verts.shape[0], 3))
    out[:H] = push[:, None] * d / np.maximum(dist, 1e-12)[:, None]
    lateral = 1.0 - _smoothstep(0.8 * r_open, 1.8 * r_open, np.abs(d[:, 0]))
    above = _smoothstep(0.6, 1.2, elev) * (1.0 - _smoothstep(1.6, 2.6, elev)) * lateral * front
    out[:H, 1] -= 0.004 * above
    out[:H, 2] += 0.0015 * above
    out[np.linalg.norm(out, axis=1) < 1e-7] = 0.0  # cut the far tails: the lid region is exact
    return out


def _masks(mesh: _Mesh, weights: np.ndarray, A: np.ndarray,
           eyelids: list[np.ndarray]) -> dict[str, np.ndarray]:
    H = mesh.n_head
    theta, phi = mesh.theta, mesh.phi
    aphi = np.abs(phi)
    y = mesh.verts[:H, 1]
    ids = np.arange(H)
    lips = ((theta - THETA_MOUTH) / 0.09) ** 2 + (phi / (PHI_MOUTH + 0.05)) ** 2 <= 1.0
    masks: dict[str, np.ndarray] = {"boundary": mesh.rim}
    masks["lips"] = ids[lips]
    masks["upper_lip"] = ids[lips & (A < 0.5)]
    masks["lower_lip"] = ids[lips & (A >= 0.5)]
    masks["left_eyeball"], masks["right_eyeball"] = mesh.eye_ids
    for e, side in enumerate(("left", "right")):
        masks[f"{side}_iris"] = mesh.eye_ids[e][mesh.eye_alpha <= IRIS_ANGLE]
        masks[f"{side}_pupil"] = mesh.eye_ids[e][mesh.eye_alpha <= PUPIL_ANGLE]
        sign = 1.0 if e == 0 else -1.0
        region = ((theta - THETA_EYE) / 0.17) ** 2 + ((phi - sign * PHI_EYE) / 0.24) ** 2 <= 1.0
        masks[f"{side}_eyelid"] = np.flatnonzero(np.abs(eyelids[e]).sum(axis=1) > 0)
        masks[f"{side}_eye_region"] = np.union1d(ids[region], masks[f"{side}_eyelid"])
        ear = ((theta - 1.55) / 0.2) ** 2 + ((phi - sign * np.pi / 2) / 0.16) ** 2 <= 1.0
        masks[f"{side}_ear"] = ids[ear]
    masks["eye_region"] = np.union1d(masks["left_eye_region"], masks["right_eye_region"])
    masks["nose"] = ids[((theta - 1.55) / 0.17) ** 2 + (phi / 0.16) ** 2 <= 1.0]
    masks["forehead"] = ids[(theta > 0.75) & (theta < 1.12) & (aphi < 0.75)]
    masks["face"] = ids[(theta > 0.9) & (theta < 2.3) & (aphi < 0.95) & (y > -0.095)]
    masks["scalp"] = ids[(theta < 0.75) | ((aphi > 1.75) & (theta < 1.9)) |
                         ((aphi > 1.25) & (theta < 1.25))]
    masks["neck"] = ids[weights[:H, 0] > 0.0]
    return {k: np.asarray(v, dtype=np.int64) for k, v in masks.items()}


def _landmark_targets() -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) of landmarks 17..67 in the 68-point order (image left = the subject's right, -phi)."""
    t, p = [], []

    def add(th, ph):
        t.extend(np.broadcast_to(th, np.shape(ph)).tolist() if np.ndim(ph) else [th])
        p.extend(np.atleast_1d(ph).tolist())

    add(1.13, np.linspace(-0.64, -0.12, 5))                      # 17-21 right brow
    add(1.13, np.linspace(0.12, 0.64, 5))                        # 22-26 left brow
    for th in (1.33, 1.43, 1.53, 1.63):                          # 27-30 nose bridge to tip
        add(th, 0.0)
    add(1.71, np.array([-0.13, -0.065, 0.0, 0.065, 0.13]))       # 31-35 nostrils
    for sign in (-1.0, 1.0):                                     # 36-41 right eye, 42-47 left eye
        c = sign * PHI_EYE
        dx = np.array([-0.13, -0.05, 0.05, 0.13, 0.05, -0.05])
        dt = np.array([0.0, -0.055, -0.055, 0.0, 0.055, 0.055])
        for k in range(6):
            add(THETA_EYE + dt[k], c + dx[k])
    ph = np.array([-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0]) * (PHI_MOUTH + 0.02)   # 48-54 upper lip
    add_t = THETA_MOUTH - np.array([0.0, 0.05, 0.07, 0.06, 0.07, 0.05, 0.0])
    for th, q in zip(add_t, ph):
        add(th, q)
    for th, q in zip(THETA_MOUTH + np.array([0.05, 0.07, 0.07, 0.07, 0.05]),        # 55-59 lower lip
                     np.array([0.6, 0.25, 0.0, -0.25, -0.6]) * (PHI_MOUTH + 0.02)):
        add(th, q)
    inner = np.array([-0.85, -0.3, 0.0, 0.3, 0.85]) * PHI_MOUTH                     # 60-64 inner upper
    for q in inner:
        add(THETA_MOUTH - 0.02, q)
    for q in (0.3 * PHI_MOUTH, 0.0, -0.3 * PHI_MOUTH):                              # 65-67 inner lower
        add(THETA_MOUTH + 0.02, q)
    return np.asarray(t), np.asarray(p)


def _contour_targets(bin_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) of the 17 jaw-contour landmarks seen at yaw bin ``bin_index`` (flame.landmarks): the
    outline slides round the cheek the head turns away from."""
    a = bin_index if bin_index <= MAX_YAW_DEG else MAX_YAW_DEG - bin_index
    phi = np.linspace(-1.3, 1.3, 17)
    theta = 2.13 - 0.58 * (phi / 1.3) ** 2
    phi = phi + np.deg2rad(a) * 0.6 * np.abs(phi) / 1.3
    return theta, phi


def _snap_to_mesh(mesh: _Mesh, theta: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Landmark (face, barycentric) pairs: the head vertex nearest each surface point, as a one-hot
    barycentric of a model face that holds it."""
    points = _surface(theta, phi)
    head = mesh.verts[: mesh.n_head]
    vids = np.argmin(((points[:, None, :] - head[None]) ** 2).sum(-1), axis=1)
    faces, bary = [], []
    for v in vids:
        f = int(np.flatnonzero((mesh.faces == v).any(axis=1))[0])
        faces.append(f)
        bary.append((mesh.faces[f] == v).astype(np.float64))
    return np.asarray(faces, dtype=np.int64), np.asarray(bary)


def _landmark_embedding(mesh: _Mesh) -> LandmarkEmbedding:
    """The synthetic head's own 68-point embedding in FLAME's layout (static + per-yaw-bin contour)."""
    static_f, static_b = _snap_to_mesh(mesh, *_landmark_targets())
    dyn = [_snap_to_mesh(mesh, *_contour_targets(b)) for b in range(N_YAW_BINS)]
    return LandmarkEmbedding(static_f, static_b, np.stack([d[0] for d in dyn]), np.stack([d[1] for d in dyn]))


def build_synthetic_flame(resolution: int = DEFAULT_RESOLUTION, seed: int = 0) -> SyntheticFlame:
    """Build the synthetic model in memory. ``resolution`` is the number of grid columns around the
    head (>= 16; 64 gives about 3.4k vertices); ``seed`` fixes the random blendshapes."""
    if int(resolution) < 16:
        raise ValueError(f"synthetic FLAME: resolution must be >= 16, got {resolution}")
    rng = np.random.default_rng(seed)
    mesh = _build_mesh(int(resolution))
    weights, A = _skinning(mesh)
    J_regressor = _joint_regressor(mesh)
    shapedirs = np.concatenate([_identity_dirs(mesh, rng), _expression_dirs(mesh, rng, A)], axis=2)
    posedirs = _pose_dirs(mesh, rng, weights)
    eyelids = [_eyelid(mesh, 0), _eyelid(mesh, 1)]
    kintree = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    return SyntheticFlame(v_template=mesh.verts, faces=mesh.faces, mouth_faces=mesh.mouth_faces, uv=mesh.uv,
                          uv_faces=mesh.uv_faces, shapedirs=shapedirs, posedirs=posedirs,
                          J_regressor=J_regressor, kintree_table=kintree, weights=weights,
                          masks=_masks(mesh, weights, A, eyelids), l_eyelid=eyelids[0], r_eyelid=eyelids[1],
                          landmarks=_landmark_embedding(mesh))


def _pickle_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    pickle.dump(obj, buf, protocol=2)
    return buf.getvalue()


def write_synthetic_flame(out_dir: str | Path, *, resolution: int = DEFAULT_RESOLUTION,
                          seed: int = 0) -> Path:
    """Write the synthetic model into ``out_dir`` in FLAME's layout (docs/maths.md section 2):
    ``generic_model.pkl``, ``FLAME_masks/FLAME_masks.pkl``, ``FlameMesh.obj`` (model faces, then the
    mouth-closing faces), ``blendshapes/{l,r}_eyelid.npy`` and ``landmark_embedding.npy`` (its own 68-point
    landmark embedding, flame.landmarks). Returns ``out_dir``."""
    out = Path(out_dir)
    model = build_synthetic_flame(resolution=resolution, seed=seed)
    J = model.J_regressor @ model.v_template
    generic = {
        "v_template": model.v_template, "f": model.faces.astype(np.uint32),
        "shapedirs": model.shapedirs, "posedirs": model.posedirs, "J_regressor": model.J_regressor,
        "kintree_table": model.kintree_table, "weights": model.weights, "J": J,
        "bs_style": "lbs", "bs_type": "lrotmin",
    }
    atomic_write_bytes(out / "generic_model.pkl", _pickle_bytes(generic))
    atomic_write_bytes(out / "FLAME_masks" / "FLAME_masks.pkl", _pickle_bytes(model.masks))
    write_obj(out / "FlameMesh.obj", model.v_template, np.concatenate([model.faces, model.mouth_faces]),
              model.uv, model.uv_faces)
    for name, arr in (("l_eyelid", model.l_eyelid), ("r_eyelid", model.r_eyelid)):
        buf = io.BytesIO()
        np.save(buf, arr)
        atomic_write_bytes(out / "blendshapes" / f"{name}.npy", buf.getvalue())
    write_landmark_embedding(out / LANDMARK_FILE, model.landmarks)
    info = {"generator": "flame.synthetic", "resolution": int(resolution), "seed": int(seed),
            "n_vertices": int(model.v_template.shape[0]), "n_faces": int(model.faces.shape[0]),
            "n_mouth_faces": int(model.mouth_faces.shape[0])}
    atomic_write_bytes(out / "synthetic_flame.json", (json.dumps(info, indent=2) + "\n").encode())
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m flame.synthetic OUT_DIR [--resolution N] [--seed S]``: write the synthetic model."""

    parser = argparse.ArgumentParser(description="Write a synthetic FLAME-format model (no licensed data).")
    parser.add_argument("out_dir", type=Path, help="folder to write generic_model.pkl etc. into")
    parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION,
                        help=f"grid columns around the head (default {DEFAULT_RESOLUTION}, ~3.4k vertices)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random blendshapes (default 0)")
    args = parser.parse_args(argv)
    out = write_synthetic_flame(args.out_dir, resolution=args.resolution, seed=args.seed)
    print(f"synthetic FLAME model written to {out}")


if __name__ == "__main__":
    main()
