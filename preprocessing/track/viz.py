"""An overlay video of a tracked subject, to check the tracking before training on it.

Each frame: the image with the fitted FLAME mesh drawn over it (grey, shaded by its normals, half
transparent, by the independent z-buffer renderer of :mod:`preprocessing.mesh_renderer`), the fitted
68 landmarks (red) and, where the tracker's landmark cache has them, the detected ones (green).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flame.assets import load_flame_assets, resolve_flame_dir
from flame.landmarks import load_landmark_embedding
from flame.model import FLAME
from preprocessing.mesh_renderer import rasterize_mesh, vertex_normals
from preprocessing.track.evaluate import load_sequence
from preprocessing.track.model import R0, LandmarkModel, project
from preprocessing.track.observe import MESH_TO_68
from preprocessing.track.run import list_frames
from utils.image_io import read_image_uint8
from utils.video import write_video


def _dots(img: np.ndarray, pts: np.ndarray, colour: tuple[int, int, int], r: int) -> None:
    h, w = img.shape[:2]
    for x, y in np.round(pts).astype(int):
        img[max(0, y - r):min(h, y + r + 1), max(0, x - r):min(w, x + r + 1)] = colour


@torch.no_grad()
def overlay_frames(data_root: Path, tracking_root: Path, idname: str, flame_dir: Path | None = None,
                   max_frames: int | None = None) -> list[np.ndarray]:
    """The overlay images (uint8 (H, W, 3)) of the tracked frames, in frame order."""
    subject_dir = Path(data_root) / idname
    assets = load_flame_assets(resolve_flame_dir(flame_dir, subject_dir))
    embedding = load_landmark_embedding(assets.flame_dir)
    frames = list_frames(subject_dir / "imgs")
    seq = [f for f in load_sequence(Path(tracking_root) / idname / "checkpoint") if f.frame_id in frames]
    seq = seq[:max_frames] if max_frames else seq
    detected = {}
    cache = subject_dir / "track" / "landmarks.npz"
    if cache.is_file():
        with np.load(cache) as z:
            detected = {int(n): p[MESH_TO_68]
                        for n, p, ok in zip(z["numbers"], z["points"], z["found"]) if ok}
    flame, lm = FLAME(assets), LandmarkModel(assets, embedding)
    faces = np.asarray(assets.faces)
    out = []
    for f in seq:
        img = read_image_uint8(frames[f.frame_id]).copy()
        h, w = img.shape[:2]
        args = (f.expression[None], f.jaw[None], f.eyes[None], f.eyelids[None])
        verts = flame(f.shape[None], args[0], jaw=args[1], eyes=args[2], eyelids=args[3])[0].double().numpy()
        R, t, K = f.R.double().numpy(), f.t.double().numpy(), f.K.double().numpy()
        frag = rasterize_mesh(verts, faces, R, t, K, h, w)
        m = frag.mask
        n = frag.interpolate(vertex_normals(verts, faces) @ R.T, faces)[m]
        shade = np.clip(-n[:, 2:3] / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9), 0, 1)
        img[m] = (0.5 * img[m] + 0.5 * (60 + 170 * shade)).astype(np.uint8)
        pts = lm.points3d(f.shape, *args, R0 @ f.R[None])
        fitted = project(pts, f.R[None], f.t[None], f.K)[0, :68].numpy()
        r = max(1, round(h / 256))
        if f.frame_id in detected:
            _dots(img, detected[f.frame_id], (40, 220, 40), r)
        _dots(img, fitted, (230, 30, 30), r)
        out.append(img)
    return out


def write_overlay_video(data_root: Path, tracking_root: Path, idname: str, flame_dir: Path | None = None,
                        fps: float = 25.0) -> Path:
    """``<data_root>/<idname>/track/overlay.mp4``."""
    path = Path(data_root) / idname / "track" / "overlay.mp4"
    return write_video(path, overlay_frames(data_root, tracking_root, idname, flame_dir), fps=fps)
