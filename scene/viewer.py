"""What ``view.py`` shows: a trained avatar rendered for a browser's camera, with edits on top.

:class:`ViewerModel` holds the subject, the avatar (and a second one with ``--compare``) and renders one
view: the sequence frame ``k`` with the slider edits (:func:`flame.condition.edited_condition`) from a
free camera, as panels side by side (the avatar, the compared avatar, the ground truth), as 8-bit RGB.
It knows nothing about the browser; :mod:`scene.viewer_app` wires it to viser's page. Cameras come from
viser as camera-to-world poses in OpenCV axes (x right, y down, z forward), the convention of
:class:`~scene.data.cameras.Camera`, with a vertical field of view and the canvas size in pixels.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from flame.condition import edited_condition
from gaussian_renderer import render
from scene.assemble import build_avatar, open_subject
from scene.data.cameras import Camera
from scene.data.subject import SubjectDataError
from scene.model.checkpoint import load_checkpoint, newest_checkpoint
from scene.model.cuda_graphs import inference_deformer
from utils.device import resolve_device
from utils.errors import InputError
from utils.image_io import to_uint8
from utils.options import ModelOptions, ViewConfig, read_run_record
from utils.precision import configure_arithmetic
from utils.rotations import matrix_to_quaternion, quaternion_to_matrix
from utils.visualize import caption_strip, error_map, uncertainty_colors


class ViewerSetupError(InputError):
    """Bad input for view.py; the message says what to change."""


@dataclass
class Edits:
    """The expression sliders, on top of the current frame's condition (degrees and FLAME units)."""

    jaw_open_deg: float = 0.0
    eye_yaw_deg: float = 0.0
    eye_pitch_deg: float = 0.0
    eyelids: float = 0.0
    expression: list[float] = field(default_factory=list)

    def apply(self, condition: Tensor) -> Tensor:
        return edited_condition(condition, jaw_open_rad=math.radians(self.jaw_open_deg),
                                eye_yaw_rad=math.radians(self.eye_yaw_deg),
                                eye_pitch_rad=math.radians(self.eye_pitch_deg), eyelids=self.eyelids,
                                expression=self.expression)


@dataclass
class ViewPose:
    """A browser camera: camera-to-world rotation as a quaternion (w, x, y, z) and position, OpenCV axes,
    vertical field of view in radians."""

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov_y: float


def pose_of_camera(camera: Camera) -> ViewPose:
    """The browser pose that sees what ``camera`` sees (its vertical field of view, its pose)."""
    R = camera.R.detach().double().cpu()
    q = matrix_to_quaternion(R.T)  # camera-to-world rotation
    centre = camera.camera_center.detach().double().cpu()
    fov = 2.0 * math.atan(camera.image_height / (2.0 * camera.fy))
    return ViewPose(tuple(float(v) for v in q), tuple(float(v) for v in centre), fov)


def camera_of_pose(pose: ViewPose, width: int, height: int, device: torch.device | str = "cpu",
                   shift_x: float = 0.0) -> Camera:
    """A pinhole camera of ``width`` x ``height`` pixels for ``pose``: square pixels, focal length from the
    vertical field of view, principal point at the centre (moved by ``shift_x`` pixels, for panels)."""
    q = torch.tensor(pose.wxyz, dtype=torch.float64)
    R_cw = quaternion_to_matrix(q / q.norm())
    R = R_cw.T
    t = -R @ torch.tensor(pose.position, dtype=torch.float64)
    f = height / (2.0 * math.tan(pose.fov_y / 2.0))
    K = torch.tensor([[f, 0.0, width / 2.0 + shift_x], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    return Camera(R.float().to(device), t.float().to(device), K.to(device), width, height, name="viewer")


def fit_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """``width`` x ``height`` scaled down (never up) so that the longer side is at most ``max_size``."""
    scale = min(1.0, max_size / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_height(image: Tensor, width: int, height: int, background: Tensor) -> Tensor:
    """(3,h,w) image scaled to ``height`` rows (the viewer camera's scale: its focal length comes from the
    vertical field of view) and centred in ``width`` columns, cropped or padded with ``background`` at
    the sides."""
    _, h, w = image.shape
    scale = height / h
    nw = max(1, round(w * scale))
    scaled = F.interpolate(image[None], size=(height, nw), mode="bilinear", align_corners=False,
                           antialias=scale < 1)[0]
    out = background.view(3, 1, 1).expand(3, height, width).clone()
    if nw >= width:
        x0 = (nw - width) // 2
        out[:] = scaled[:, :, x0:x0 + width]
    else:
        x0 = (width - nw) // 2
        out[:, :, x0:x0 + nw] = scaled
    return out


@functools.lru_cache(maxsize=16)
def _strip(text: str, width: int) -> Tensor:
    """The caption strip of a panel, drawn once per text and width (not on every view of an orbit)."""
    return caption_strip(text, width)


def label_panel(image: Tensor, text: str) -> Tensor:
    """(3,h,w) image with ``text`` in a caption strip over its top rows (:func:`caption_strip`)."""
    strip = _strip(text, image.shape[-1]).to(image)
    out = image.clone()
    rows = min(strip.shape[1], out.shape[1])
    out[:, :rows] = strip[:, :rows]
    return out


@dataclass
class ViewRequest:
    """One view to render: sequence frame, camera pose, canvas size and what to show."""

    frame: int
    pose: ViewPose
    width: int
    height: int
    edits: Edits = field(default_factory=Edits)
    uncertainty: bool = False
    error: bool = False
    ground_truth: bool = False


class _LoadedAvatar:
    """An avatar, its checkpoint and its fastest per-frame deformation."""

    def __init__(self, paths, model: ModelOptions, subject, device: torch.device, checkpoint: Path,
                 use_graph: bool) -> None:
        self.avatar = build_avatar(paths, model, subject, device, seed=0)
        state = load_checkpoint(checkpoint, self.avatar)
        self.iteration = int(state["iteration"])
        self.avatar.eval()
        self.avatar.freeze_for_inference()  # fixed weights from here on
        self.checkpoint = checkpoint
        self.deform = inference_deformer(self.avatar, use_graph)
        self.label = f"{self.avatar.method} @ {self.iteration}"


class ViewerModel:
    """The subject, the avatar(s) and the sequence to play; :meth:`render` makes one view."""

    def __init__(self, cfg: ViewConfig) -> None:
        self.cfg = cfg
        v, p = cfg.view, cfg.paths
        self.device = resolve_device(cfg.run.device)  # DeviceError: a domain error, one line
        configure_arithmetic(cfg.run, self.device)
        self.run_dir = p.model_dir
        checkpoint = v.checkpoint or newest_checkpoint(self.run_dir)
        if checkpoint is None:
            raise ViewerSetupError(f"no checkpoint in {self.run_dir / 'ckpt'}: train first (train.py with "
                                   "the same --idname/--logname) or pass --checkpoint")
        self.subject = open_subject(p.data_root, p.tracking_root, p.idname, cfg.data, self.device,
                                    preload="none")
        graphs = cfg.run.cuda_graphs
        self.main = _LoadedAvatar(p, cfg.model, self.subject, self.device, checkpoint, graphs)
        self.other = None
        if v.compare is not None:
            self.other = self._load_compared(v.compare, graphs)
        self.source = self.subject
        if v.cross is not None:
            try:
                self.source = open_subject(v.cross_data_root or p.data_root, v.cross_tracking_root
                                           or p.tracking_root, v.cross, cfg.data, self.device,
                                           with_images=False)
            except SubjectDataError as exc:
                raise ViewerSetupError(f"--cross {v.cross}: the source subject cannot be used: {exc}") \
                    from exc
        self.background = self.subject.background.to(self.device)
        self.lock = threading.Lock()  # the deformations write into static (graph) buffers
        self.last_ms = float("nan")
        self._cached_frame: tuple[int, object] | None = None

    def _load_compared(self, run: Path, graphs: bool) -> _LoadedAvatar:
        try:
            record = read_run_record(run)
        except ValueError as exc:
            raise ViewerSetupError(f"--compare {run}: {exc}") from exc
        if record is None:
            raise ViewerSetupError(f"--compare {run}: no train_log.json there, so it is not a train.py run "
                                   "folder")
        if record["paths"].get("idname") != self.subject.idname:
            raise ViewerSetupError(f"--compare {run}: a run of subject {record['paths'].get('idname')!r}, "
                                   f"not {self.subject.idname!r}; compare runs of one subject")
        names = {f for f in ModelOptions.__dataclass_fields__ if ModelOptions.is_flag(f)}
        model = ModelOptions(**{k: v for k, v in record["model"].items() if k in names})
        checkpoint = newest_checkpoint(run)
        if checkpoint is None:
            raise ViewerSetupError(f"--compare {run}: no checkpoint in {run / 'ckpt'}")
        return _LoadedAvatar(self.cfg.paths, model, self.subject, self.device, checkpoint, graphs)

    # -- the sequence ------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return len(self.source)

    @property
    def has_uncertainty(self) -> bool:
        return self.main.avatar.method == "ours"

    def has_ground_truth(self, k: int) -> bool:
        return self.source is self.subject and self.subject.has_image(k)

    def tracked_camera(self, k: int) -> Camera:
        return self.source.camera(k)

    def look_at(self, k: int = 0) -> tuple[float, float, float]:
        """A point to orbit about: the centre of the avatar's Gaussians in frame ``k``."""
        with self.lock, torch.no_grad():
            gs, _ = self.main.deform(self.source.condition(k), self.tracked_camera(k))
            centre = gs.means.mean(0).double().cpu()
        return tuple(float(c) for c in centre)

    def _frame(self, k: int):
        """Frame ``k`` with its images, kept while the timeline stays on it (orbiting the camera with the
        ground truth beside would otherwise decode the same PNGs for every view: ~11 ms at 512x512)."""
        if self._cached_frame is None or self._cached_frame[0] != k:
            self._cached_frame = (k, self.subject.frame(k))
        return self._cached_frame[1]

    # -- rendering ---------------------------------------------------------------------------------
    def _panel(self, loaded: _LoadedAvatar, cond: Tensor, cam: Camera, uncertainty: bool) -> Tensor:
        gs, extras = loaded.deform(cond, cam)
        colors = None
        if uncertainty and extras.uncertainty is not None:
            colors = uncertainty_colors(extras.uncertainty)
        return render(cam, gs, self.background, override_color=colors, backend=self.cfg.run.backend).image

    @torch.no_grad()
    def render(self, req: ViewRequest) -> np.ndarray:
        """The view of ``req`` as (height, width, 3) uint8: panels side by side (avatar, compared avatar,
        ground truth where asked and present), each rendered for the shared camera; with ``error`` each
        avatar panel is its error map at the tracked camera instead. Sets ``last_ms`` (render time)."""
        k = int(req.frame) % self.n_frames
        width, height = fit_size(req.width, req.height, self.cfg.view.max_size)
        avatars = [self.main] + ([self.other] if self.other is not None else [])
        gt_panel = req.ground_truth and self.has_ground_truth(k)
        n = len(avatars) + int(gt_panel)
        pw = max(1, width // n)
        cond = req.edits.apply(self.source.condition(k))
        frame = self._frame(k) if (gt_panel or req.error) and self.has_ground_truth(k) else None
        panels = []
        t0 = time.perf_counter()
        with self.lock:
            for loaded in avatars:
                if req.error and frame is not None:
                    img = self._panel(loaded, cond, frame.camera, False)
                    err = error_map(img, frame.image, frame.head_mask, self.background)
                    img = fit_height(err, pw, height, self.background)
                else:
                    cam = camera_of_pose(req.pose, pw, height, self.device)
                    img = self._panel(loaded, cond, cam, req.uncertainty)
                panels.append(img)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        self.last_ms = (time.perf_counter() - t0) * 1e3
        if gt_panel:
            panels.append(fit_height(frame.image, pw, height, self.background))
        if len(panels) > 1:  # side by side: say which panel is which
            names = [a.label for a in avatars] + [f"ground truth, frame {int(self.subject.frame_ids[k]):05d}"]
            panels = [label_panel(img, name) for img, name in zip(panels, names)]
        return to_uint8(torch.cat(panels, dim=2))

    def orbit(self, req: ViewRequest, n: int) -> list[np.ndarray]:
        """``req``'s view with the camera turned about FLAME's vertical axis through the origin, a full
        turn in ``n`` frames (the first is ``req`` itself), for the viewer's orbit video."""
        base = camera_of_pose(req.pose, req.width, req.height)
        frames = []
        for k in range(n):
            turned = pose_of_camera(base.turned(360.0 * k / n))
            pose = ViewPose(turned.wxyz, turned.position, req.pose.fov_y)
            frames.append(self.render(ViewRequest(req.frame, pose, req.width, req.height, req.edits,
                                                  uncertainty=req.uncertainty)))
        return frames

    @property
    def labels(self) -> list[str]:
        return [self.main.label] + ([self.other.label] if self.other is not None else [])
