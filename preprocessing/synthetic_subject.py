"""The synthetic subject: a rendered FLAME-format head with tracker-format frames (docs/maths.md section 12).

``make_synthetic_subject`` writes, from a seed and no licensed data:

- ``<data_root>/<id>/flame/``: the synthetic FLAME assets (``flame.synthetic.write_synthetic_flame``),
  which ``flame.assets.resolve_flame_dir`` picks up for this subject;
- ``<data_root>/<id>/imgs/NNNNN.png`` (head over a noisy, non-white background), ``alpha/NNNNN.png``
  (head coverage), ``parsing/NNNNN_neckhead.png`` and ``parsing/NNNNN_mouth.png`` (lips + mouth
  interior);
- ``<tracking_root>/<id>/checkpoint/NNNNN.frame`` in metrical-tracker's layout.

Per frame the expression, jaw (the mouth opens in some frames), eyes, eyelids and the head pose vary
smoothly; the head pose is baked into the camera's R, t as the tracker does, so the FLAME global
rotation stays identity. The images come from the independent z-buffer renderer in
``preprocessing/mesh_renderer.py`` (never the Gaussian renderer): textured skin, hair and brows,
lips, a dark mouth interior and eyes with a sclera and an iris that turns with the eyeball, with
Lambert shading, supersampled for anti-aliased edges.

CLI: ``python -m preprocessing.synthetic_subject --idname demo --data_root dataset
--tracking_root metrical-tracker/output [--frames N --size S --seed K --resolution R]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flame.assets import load_flame_assets
from flame.model import FLAME
from flame.synthetic import write_synthetic_flame
from preprocessing import DEMO_IDNAME
from preprocessing.mesh_renderer import box_downsample, rasterize_mesh, vertex_normals
from scene.data.novel_views import NOVEL_DIR, NOVEL_INDEX
from scene.data.tracking import save_tracked_frame
from utils.atomic import write_json
from utils.image_io import write_image

MARKER = "synthetic.json"
DEFAULT_FRAMES = 60
DEFAULT_SIZE = 128
DEFAULT_RESOLUTION = 48
FOCAL_FACTOR = 3.5      # fx = fy = FOCAL_FACTOR * image size
HEAD_FILL = 0.6         # fraction of the image height the head spans
IRIS_ANGLE, PUPIL_ANGLE = 0.55, 0.22

# Materials (linear RGB in [0, 1]).
SKIN = np.array([0.86, 0.66, 0.54])
HAIR = np.array([0.23, 0.15, 0.10])
BROW = np.array([0.28, 0.18, 0.12])
LIPS = np.array([0.74, 0.27, 0.30])
MOUTH = np.array([0.22, 0.05, 0.06])
SCLERA = np.array([0.95, 0.95, 0.92])
IRIS = np.array([0.20, 0.38, 0.62])
PUPIL = np.array([0.03, 0.03, 0.04])


# ----------------------------------------------------------------------------------------- rotations
def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: (..., 3) axis-angle -> (..., 3, 3)."""
    aa = np.asarray(aa, np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    k = aa / np.maximum(theta, 1e-12)
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    Kx = np.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    s, c = np.sin(theta)[..., None], np.cos(theta)[..., None]
    eye = np.broadcast_to(np.eye(3), Kx.shape)
    return eye + s * Kx + (1 - c) * (Kx @ Kx)


def rot6d(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6): the first two rows (docs/maths.md section 3)."""
    return R[..., :2, :].reshape(*R.shape[:-2], 6)


# ----------------------------------------------------------------------------------------- motion
@dataclass
class Motion:
    """Per-frame parameters (n frames): expression (n,100), jaw (n,6), eyes (n,12), eyelids (n,2),
    head rotation (n,3,3) and translation (n,3) (baked into the camera), identity shape (300,)."""

    shape: np.ndarray
    expression: np.ndarray
    jaw: np.ndarray
    eyes: np.ndarray
    eyelids: np.ndarray
    head_R: np.ndarray
    head_T: np.ndarray


def _smooth(rng: np.random.Generator, n: int, channels: int, amp: float, max_cycles: int = 3) -> np.ndarray:
    """(n, channels) smooth signals: a few sinusoids of 1..max_cycles cycles over the sequence."""
    t = np.arange(n)[:, None] / max(n, 1)
    out = np.zeros((n, channels))
    for _ in range(3):
        f = rng.integers(1, max_cycles + 1, size=channels)
        ph = rng.uniform(0, 2 * np.pi, size=channels)
        a = rng.uniform(0.3, 1.0, size=channels)
        out += a * np.sin(2 * np.pi * f * t + ph)
    return amp * out / 2.0


def make_motion(n_frames: int, seed: int) -> Motion:
    """Smoothly varying expression, jaw, gaze, blinks and head pose; a random identity."""
    rng = np.random.default_rng(seed + 1000)
    shape = np.zeros(300)
    shape[:20] = rng.normal(0.0, 0.8, size=20)
    expression = np.zeros((n_frames, 100))
    expression[:, :10] = _smooth(rng, n_frames, 10, 1.2)
    expression[:, 10:30] = _smooth(rng, n_frames, 20, 0.3)
    t = np.arange(n_frames) / max(n_frames, 1)
    phase = rng.uniform(0, 2 * np.pi)
    open_angle = 0.32 * np.clip(np.sin(2 * np.pi * 2 * t + phase) * 1.4, 0.0, 1.0)  # open ~40% of frames
    jaw_aa = np.stack([open_angle, 0.03 * np.sin(2 * np.pi * t + phase), np.zeros(n_frames)], -1)
    jaw = rot6d(axis_angle_to_matrix(jaw_aa))
    gaze = _smooth(rng, n_frames, 2, 0.45, max_cycles=4)  # yaw, pitch
    eye_aa = np.stack([gaze[:, 1], gaze[:, 0], np.zeros(n_frames)], -1)
    eye6 = rot6d(axis_angle_to_matrix(eye_aa))
    eyes = np.concatenate([eye6, eye6], axis=1)
    blink = np.zeros(n_frames)
    for c in rng.uniform(0, n_frames, size=max(1, n_frames // 12)):
        blink += np.exp(-0.5 * ((np.arange(n_frames) - c) / 0.8) ** 2)
    lids = np.clip(0.05 + 0.9 * blink, 0.0, 1.0)
    eyelids = np.stack([lids, np.clip(lids + 0.03 * rng.normal(size=n_frames), 0, 1)], -1)
    pose = _smooth(rng, n_frames, 3, 1.0) * np.array([0.18, 0.45, 0.10])  # pitch, yaw, roll (rad)
    head_R = axis_angle_to_matrix(pose)
    head_T = _smooth(rng, n_frames, 3, 0.01)
    return Motion(shape, expression, jaw, eyes, eyelids, head_R, head_T)


# ----------------------------------------------------------------------------------------- appearance
class Appearance:
    """Material and texture of the synthetic head, as functions of the canonical (zero-expression)
    surface point, so the pattern sticks to the skin and the iris turns with the eye."""

    def __init__(self, canonical: np.ndarray, faces: np.ndarray, n_model_faces: int,
                 masks: dict[str, np.ndarray], seed: int) -> None:
        rng = np.random.default_rng(seed + 2000)
        V = len(canonical)
        self.canonical = canonical
        self.face_region = np.zeros(len(faces), dtype=np.int64)  # 0 skin, 1 lips, 2 mouth, 3 eye
        self.eye_centres = []
        self.eye_of_face = np.full(len(faces), -1, dtype=np.int64)
        for e, key in enumerate(("left_eyeball", "right_eyeball")):
            ids = np.asarray(masks.get(key, []), np.int64)
            if len(ids) == 0:
                continue
            member = np.zeros(V, bool)
            member[ids] = True
            on = member[faces].all(axis=1)
            self.face_region[on] = 3
            self.eye_of_face[on] = e
            pts = canonical[ids]
            self.eye_centres.append(0.5 * (pts.min(0) + pts.max(0)))
        lips = np.asarray(masks.get("lips", []), np.int64)
        if len(lips):
            member = np.zeros(V, bool)
            member[lips] = True
            on = member[faces].sum(axis=1) >= 2
            self.face_region[on & (self.face_region == 0)] = 1
        self.face_region[n_model_faces:] = 2
        scalp = np.asarray(masks.get("scalp", []), np.int64)
        self.hair_faces = np.zeros(len(faces), bool)
        if len(scalp):
            member = np.zeros(V, bool)
            member[scalp] = True
            self.hair_faces = (member[faces].sum(axis=1) >= 2) & (self.face_region == 0)
        # skin texture: random 3D Fourier features of a few-centimetre scale
        self.freq = rng.normal(size=(12, 3))
        self.freq *= (2 * np.pi / rng.uniform(0.012, 0.05, size=(12, 1))) / np.linalg.norm(self.freq, axis=1,
                                                                                             keepdims=True)
        self.phase = rng.uniform(0, 2 * np.pi, size=12)
        lo, hi = canonical.min(0), canonical.max(0)
        self.lo, self.hi = lo, hi
        eyes = np.array(self.eye_centres) if self.eye_centres else None
        self.eye_y = float(eyes[:, 1].mean()) if eyes is not None else lo[1] + 0.62 * (hi[1] - lo[1])
        self.eye_x = np.abs(eyes[:, 0]) if eyes is not None else np.array([0.03])
        self.front_z = float(np.percentile(canonical[:, 2], 80))

    def colour(self, face: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Albedo (K, 3) of samples on faces (K,) at canonical points (K, 3)."""
        region, eye = self.face_region[face], self.eye_of_face[face]
        col = np.empty((len(p), 3))
        noise = np.sin(p @ self.freq.T + self.phase).mean(axis=1)  # ~[-0.4, 0.4]
        skin = SKIN * (1.0 + 0.35 * noise[:, None])
        # freckle-like dots and fine stripes so there is detail to learn
        dots = (np.sin(p[:, 0] * 900.0) * np.sin(p[:, 1] * 870.0) * np.sin(p[:, 2] * 910.0)) > 0.55
        skin[dots] *= 0.82
        h = (p[:, 1] - self.lo[1]) / max(self.hi[1] - self.lo[1], 1e-9)
        if self.hair_faces.any():
            hair = self.hair_faces[face]
        else:
            hair = (h > 0.78) | ((h > 0.45) & (p[:, 2] < self.front_z - 0.06))
        stripes = 0.85 + 0.15 * np.sin(p[:, 0] * 400.0 + p[:, 1] * 150.0)
        skin[hair] = HAIR * stripes[hair, None]
        dy = p[:, 1] - (self.eye_y + 0.022)
        brow = (np.abs(dy) < 0.005) & (np.min(np.abs(np.abs(p[:, 0:1]) - self.eye_x[None]), axis=1) < 0.02) \
            & (p[:, 2] > self.front_z - 0.03)
        skin[brow] = BROW
        col[:] = skin
        col[region == 1] = LIPS * (1.0 + 0.15 * noise[region == 1, None])
        col[region == 2] = MOUTH
        on_eye = region == 3
        if on_eye.any() and self.eye_centres:
            centres = np.array(self.eye_centres)[np.maximum(eye[on_eye], 0)]
            d = p[on_eye] - centres
            ang = np.arccos(np.clip(d[:, 2] / np.maximum(np.linalg.norm(d, axis=1), 1e-12), -1, 1))
            e = np.where(ang < IRIS_ANGLE, 1, 0) + np.where(ang < PUPIL_ANGLE, 1, 0)
            col[on_eye] = np.choose(e[:, None], [SCLERA[None], IRIS[None] * (0.8 + 0.4 * ang[:, None]),
                                                 PUPIL[None]])
        return np.clip(col, 0.0, 1.0)


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A non-white, noisy backdrop (H, W, 3): a soft gradient plus pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    base = np.stack([0.35 + 0.25 * xx, 0.45 + 0.15 * yy, 0.55 - 0.2 * xx * yy], -1)
    return np.clip(base + rng.normal(0.0, 0.06, size=base.shape), 0.0, 1.0)


# ----------------------------------------------------------------------------------------- camera
def camera_for(verts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Base camera looking at the face (FLAME looks along +z): world-to-camera R0 = diag(1,-1,-1),
    distance so the head spans HEAD_FILL of the image, slightly off-centre principal point.
    Returns K, R0, centre c of the head (aim point), distance d."""
    lo, hi = verts.min(0), verts.max(0)
    c = 0.5 * (lo + hi)
    extent = float(max(hi[1] - lo[1], hi[0] - lo[0]))
    f = FOCAL_FACTOR * size
    d = f * extent / (HEAD_FILL * size) + 0.5 * float(hi[2] - lo[2])
    K = np.array([[f, 0.0, 0.51 * size], [0.0, f, 0.49 * size], [0.0, 0.0, 1.0]])
    return K, np.diag([1.0, -1.0, -1.0]), c, d


# ----------------------------------------------------------------------------------------- generator
def _subject_paths(data_root: Path, tracking_root: Path, idname: str) -> dict[str, Path]:
    subj = data_root / idname
    return {"subject": subj, "imgs": subj / "imgs", "alpha": subj / "alpha", "parsing": subj / "parsing",
            "flame": subj / "flame", "checkpoint": tracking_root / idname / "checkpoint",
            "novel": subj / NOVEL_DIR}


NOVEL_VIEWS: dict[str, tuple[float, float]] = {  # name -> (yaw, pitch) in degrees, as render.py turns
    "yaw-45": (-45.0, 0.0), "yaw-30": (-30.0, 0.0), "yaw-15": (-15.0, 0.0), "yaw+15": (15.0, 0.0),
    "yaw+30": (30.0, 0.0), "yaw+45": (45.0, 0.0), "pitch-15": (0.0, -15.0), "pitch+15": (0.0, 15.0)}


def turned_pose(R: np.ndarray, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """The world-to-camera rotation that sees the head turned by ``yaw`` about FLAME's y axis, then
    ``pitch`` about its x axis, through FLAME's origin: R (R_x(pitch) R_y(yaw))^T, t unchanged (the
    turn of ``render.py --rotate``, docs/maths.md section 10)."""
    turn = axis_angle_to_matrix(np.array([np.deg2rad(pitch_deg), 0.0, 0.0])) @ axis_angle_to_matrix(
        np.array([0.0, np.deg2rad(yaw_deg), 0.0]))
    return np.asarray(R, np.float64) @ turn.T


@dataclass
class _FrameRenderer:
    """What drawing one frame needs; one per subject, shared with worker processes by fork."""

    posed: np.ndarray        # (N, V, 3) posed vertices per frame
    faces: np.ndarray
    canonical: np.ndarray
    look: Appearance
    K: np.ndarray
    light: np.ndarray
    image_size: int
    ss: int
    seed: int

    def __call__(self, k: int, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``k``'s expression seen by camera R, t -> image (H,W,3), alpha (H,W), mouth mask (H,W)."""
        faces, ss, size = self.faces, self.ss, self.image_size
        frag = rasterize_mesh(self.posed[k], faces, R, t, self.K, size, size, ss=ss)
        m = frag.mask
        region = self.look.face_region[frag.face[m]]
        p_can = frag.interpolate(self.canonical, faces)[m]
        albedo = self.look.colour(frag.face[m], p_can)
        normals_cam = vertex_normals(self.posed[k], faces) @ R.T
        n = frag.interpolate(normals_cam, faces)[m]
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        view = -frag.interpolate(frag.points, faces)[m]
        n *= np.sign((n * view).sum(1, keepdims=True) + 1e-12)  # face the camera
        shade = 0.45 + 0.6 * np.clip(n @ self.light, 0.0, 1.0)
        shade = np.where(region == 2, 0.6 + 0.4 * shade, shade)
        rng = np.random.default_rng([self.seed + 3000, k])  # per frame: the same in any process
        bg = background(size, rng)
        bg = np.repeat(np.repeat(bg, ss, 0), ss, 1) if ss > 1 else bg
        full = bg.copy()
        full[m] = np.clip(albedo * shade[:, None], 0.0, 1.0)
        mouth = np.zeros(m.shape)
        mouth[m] = (region == 1) | (region == 2)
        alpha = box_downsample(m.astype(np.float64), ss)
        return box_downsample(full, ss), alpha, box_downsample(mouth, ss) >= 0.5


_RENDERER: dict[str, _FrameRenderer] = {}


def _draw_and_write(job: tuple[int, np.ndarray, np.ndarray, str]) -> None:
    """Render frame ``k`` with R, t and write its image, alpha, neck-head and mouth masks under ``folder``
    (runs in a worker process, or inline)."""
    k, R, t, folder = job
    img, alpha, mouth_mask = _RENDERER["current"](k, R, t)
    root, name = Path(folder), f"{k:05d}"
    write_image(root / "imgs" / f"{name}.png", img)
    write_image(root / "alpha" / f"{name}.png", alpha)
    write_image(root / "parsing" / f"{name}_neckhead.png", (alpha > 0).astype(np.float64))
    write_image(root / "parsing" / f"{name}_mouth.png", mouth_mask.astype(np.float64))


def _run_jobs(renderer: _FrameRenderer, jobs: list, workers: int, verbose: bool) -> None:
    """Draw ``jobs`` inline or on ``workers`` forked processes (frames are independent)."""
    _RENDERER["current"] = renderer
    try:
        if workers <= 1 or len(jobs) < 2:
            for k, job in enumerate(jobs):
                _draw_and_write(job)
                if verbose and (k + 1) % max(1, len(jobs) // 10) == 0:
                    print(f"  frame {k + 1}/{len(jobs)}", file=sys.stderr)
            return
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            chunk = max(1, len(jobs) // (8 * workers))
            for k, _ in enumerate(pool.map(_draw_and_write, jobs, chunksize=chunk)):
                if verbose and (k + 1) % max(1, len(jobs) // 10) == 0:
                    print(f"  frame {k + 1}/{len(jobs)}", file=sys.stderr)
    finally:
        _RENDERER.clear()


def _auto_workers(n_jobs: int, image_size: int, ss: int) -> int:
    """One process for small jobs (a fork costs more than it saves), else one per core (at most 16)."""
    work = n_jobs * (image_size * ss) ** 2
    return 1 if work < 2e7 or sys.platform == "win32" else min(16, os.cpu_count() or 1)


def make_synthetic_subject(data_root: str | Path, tracking_root: str | Path, idname: str = "demo",
                           n_frames: int = DEFAULT_FRAMES, image_size: int = DEFAULT_SIZE, seed: int = 0,
                           resolution: int = DEFAULT_RESOLUTION, supersample: int = 3,
                           verbose: bool = False, novel_views: int = 0, workers: int = 0) -> Path:
    """Generate the synthetic subject (see module docstring); returns ``<data_root>/<idname>``.
    Existing generated files of this subject are replaced. ``novel_views`` > 0 also draws, for each of
    the last ``novel_views`` frames, the views of :data:`NOVEL_VIEWS` (same expression, head turned)
    into ``<id>/novel_views/<view>/`` with ``novel_views.json``; ``workers`` processes draw (0: auto)."""
    if n_frames < 1 or image_size < 8 or resolution < 8:
        raise ValueError(f"make_synthetic_subject: need n_frames >= 1, image_size >= 8, resolution >= 8 "
                         f"(got {n_frames}, {image_size}, {resolution})")
    if not 0 <= novel_views <= n_frames:
        raise ValueError(f"make_synthetic_subject: novel_views must be in 0..n_frames, got {novel_views}")
    start = time.perf_counter()
    paths = _subject_paths(Path(data_root), Path(tracking_root), idname)
    params = {"n_frames": int(n_frames), "image_size": int(image_size), "seed": int(seed),
              "resolution": int(resolution), "supersample": int(supersample), "novel_views": int(novel_views)}
    paths["subject"].mkdir(parents=True, exist_ok=True)
    _write_marker(paths["subject"], params, complete=False)
    for key in ("imgs", "alpha", "parsing", "checkpoint", "novel"):
        if paths[key].exists():
            shutil.rmtree(paths[key])
        if key != "novel":
            paths[key].mkdir(parents=True)

    flame_dir = write_synthetic_flame(paths["flame"], resolution=resolution, seed=seed)
    assets = load_flame_assets(flame_dir)
    model = FLAME(assets, dtype=torch.float64)
    motion = make_motion(n_frames, seed)
    uv_mesh = assets.uv_mesh
    faces = np.asarray(uv_mesh.faces if uv_mesh is not None else assets.faces, np.int64)
    n_model = len(assets.faces)

    with torch.no_grad():
        shaped = model.for_shape(torch.from_numpy(motion.shape))
        canonical = shaped(torch.zeros(1, 100, dtype=torch.float64))[0].numpy()
        posed = shaped(torch.from_numpy(motion.expression), jaw=torch.from_numpy(motion.jaw),
                       eyes=torch.from_numpy(motion.eyes), eyelids=torch.from_numpy(motion.eyelids)).numpy()
    look = Appearance(canonical, faces, n_model, assets.masks, seed)
    K, R0, c, d = camera_for(canonical, image_size)
    t0 = np.array([0.0, 0.0, d]) - R0 @ c
    light = np.array([-0.4, -0.5, -1.0])  # towards the light, camera frame (up-left, in front)
    light /= np.linalg.norm(light)
    renderer = _FrameRenderer(posed, faces, canonical, look, K, light, image_size, max(1, int(supersample)),
                              seed)

    cams = []
    for k in range(n_frames):
        Rh, Th = motion.head_R[k], motion.head_T[k]
        R = R0 @ Rh
        t = R0 @ (c - Rh @ c + Th) + t0
        cams.append((R, t))
        save_tracked_frame(paths["checkpoint"] / f"{k:05d}.frame", shape=motion.shape,
                           expression=motion.expression[k], jaw=motion.jaw[k], eyes=motion.eyes[k],
                           eyelids=motion.eyelids[k], R=R, t=t, K=K, img_size=(image_size, image_size),
                           frame_id=k, global_step=k)
    jobs = [(k, R, t, str(paths["subject"])) for k, (R, t) in enumerate(cams)]
    novel = range(n_frames - novel_views, n_frames)
    for view, (yaw, pitch) in NOVEL_VIEWS.items() if novel_views else ():
        folder = str(paths["novel"] / view)
        jobs += [(k, turned_pose(cams[k][0], yaw, pitch), cams[k][1], folder) for k in novel]
    _run_jobs(renderer, jobs, workers or _auto_workers(len(jobs), image_size, renderer.ss), verbose)
    if novel_views:
        views = {v: {"yaw_deg": y, "pitch_deg": p} for v, (y, p) in NOVEL_VIEWS.items()}
        write_json(paths["novel"] / NOVEL_INDEX, {
            "frames": list(novel), "views": views,
            "note": "each view: the frame's expression and camera with the head turned (R (R_x(pitch) "
                    "R_y(yaw))^T, t unchanged), lit as the frame (the light stays with the camera)"})
    _write_marker(paths["subject"], params, complete=True)
    if verbose:
        print(f"synthetic subject '{idname}': {n_frames} frames at {image_size}x{image_size}"
              f"{f' + {len(jobs) - n_frames} novel views' if novel_views else ''} in "
              f"{time.perf_counter() - start:.1f}s -> {paths['subject']}", file=sys.stderr)
    return paths["subject"]


def _write_marker(subject: Path, params: dict, complete: bool) -> None:
    tmp = subject / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({**params, "complete": complete}, indent=1))
    tmp.replace(subject / MARKER)


def read_marker(subject: Path) -> dict | None:
    """The generation parameters of a synthetic subject folder, or None when it has no marker."""
    try:
        return json.loads((subject / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def ensure_demo_subject(data_root: str | Path, tracking_root: str | Path, idname: str = DEMO_IDNAME,
                        **sizes: int) -> Path:
    """Generate the synthetic subject unless a complete one with the same parameters exists.
    ``sizes``: ``n_frames``, ``image_size``, ``seed``, ``resolution``, ``supersample``. A folder of
    that name that this generator did not make is never touched (clear error)."""
    defaults = {"n_frames": DEFAULT_FRAMES, "image_size": DEFAULT_SIZE, "seed": 0,
                "resolution": DEFAULT_RESOLUTION, "supersample": 3}
    unknown = set(sizes) - set(defaults)
    if unknown:
        raise TypeError(f"ensure_demo_subject: unknown argument(s) {sorted(unknown)}; use {sorted(defaults)}")
    params = {**defaults, **{k: int(v) for k, v in sizes.items()}}
    paths = _subject_paths(Path(data_root), Path(tracking_root), idname)
    marker = read_marker(paths["subject"])
    if paths["subject"].exists() and marker is None and any(paths["subject"].iterdir()):
        raise FileExistsError(f"{paths['subject']}: exists and was not generated by the synthetic subject "
                              "generator; choose another --idname or --data_root for the demo")
    if marker is not None and marker.get("complete") and all(marker.get(k) == v for k, v in params.items()) \
            and paths["checkpoint"].is_dir():
        return paths["subject"]
    return make_synthetic_subject(data_root, tracking_root, idname, **params)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Generate the synthetic demo subject (docs/maths.md section 12).")
    ap.add_argument("--idname", default="demo")
    ap.add_argument("--data_root", default="dataset")
    ap.add_argument("--tracking_root", default="metrical-tracker/output")
    ap.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="number of frames")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image size in pixels (square)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, help="synthetic mesh resolution")
    ap.add_argument("--supersample", type=int, default=3, help="samples per pixel side (anti-aliasing)")
    ap.add_argument("--force", action="store_true", help="regenerate even when an identical subject exists")
    ap.add_argument("--novel_views", type=int, default=0, metavar="N",
                    help="also draw the last N frames from turned views (yaw +-15/30/45, pitch +-15 degrees) "
                         "into <id>/novel_views/ (render.py --novel_views, metrics.py score them)")
    ap.add_argument("--workers", type=int, default=0, help="drawing processes (0: one per core for big jobs)")
    args = ap.parse_args(argv)
    kw = dict(n_frames=args.frames, image_size=args.size, seed=args.seed, resolution=args.resolution,
              supersample=args.supersample)
    if args.force or args.novel_views:
        out = make_synthetic_subject(args.data_root, args.tracking_root, args.idname, verbose=True,
                                     novel_views=args.novel_views, workers=args.workers, **kw)
    else:
        out = ensure_demo_subject(args.data_root, args.tracking_root, args.idname, **kw)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
