"""Stage 3 of the tracker: refine every frame's camera against an avatar trained on the tracking so far.

The photometric stage (stage 2) compares the frames with a plain head (one colour per splat, one light):
hair, skin detail and everything FLAME does not draw bias it, and what is left of the per-frame pose
error costs an avatar trained on the tracking more than a decibel (bench/NOTES.md, session 10). An
avatar trained on that tracking (``scene.trainer.Trainer``, every frame, the subject's own images) is a
far better picture of the head: this stage trains one, then fits a small rotation ``dR`` and translation
``dt`` to each frame's world-to-camera pose, ``x_cam = dR (R X + t) + dt``, by rendering the fixed avatar
against the frame (L1 over the whole image, as the avatar was trained). Expressions, jaw, eyes, shape and
focal length are kept. ``rounds`` > 1 trains a new avatar on the refined cameras and refines again.

The rasterizer gives no camera gradients, so the correction is applied to the Gaussians instead: each
frame's Gaussians are taken into its camera's frame once, ``x_c = R X + t`` (covariances ``R S R^T``), and
every step moves them by ``dR x_c + dt`` (covariances ``dR S dR^T``), which is what the corrected camera
sees. The frames of a batch are rendered side by side in one rasterizer call
(``gaussian_renderer.strip``); colours are evaluated once along each frame's own viewing directions
(below a degree of correction the view-dependent colour does not change).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gaussian_renderer.strip import at_origin, camera_space, render_camera_space, view_strip
from gaussian_renderer.torch_backend import gaussian_colors
from preprocessing.frames_io import PreprocessError
from preprocessing.track.model import R0, Observations, TrackParams
from scene.data.subject import Subject
from scene.model.avatar import Avatar
from scene.trainer import Trainer
from utils.image_io import find_image
from utils.options import parse_train_args
from utils.rotations import (
    matrix_to_rot6d,
    quaternion_to_matrix,
    rotation_angle_deg,
    unit_quaternion_to_matrix,
)


@dataclass
class AvatarRefineConfig:
    """The stage's settings (``avatar_refine_config`` picks them per device)."""

    rounds: int = 1              # train an avatar, refine the cameras; repeated this many times
    iterations: int = 3000       # the avatar's training iterations (a few seconds on a GPU)
    steps: int = 30              # Adam steps of each frame's camera correction
    batch: int = 8               # frames corrected together (the same fit; fewer small operations a frame)
    strip: bool = True           # a batch's frames side by side in one rasterizer call
    # (gaussian_renderer.strip; on a GPU, where a call's host work outweighs its kernels) instead of one
    # call per frame (the CPU's torch backend, whose cost grows faster than the image)
    step_px: float = 0.5         # the first steps' size, in pixels the head moves in the image
    final_step: float = 0.05     # cosine decay of the step to this fraction: Adam's last steps set the
    # precision (a constant step leaves the camera jittering by about one step, and at 512 px a 0.1 degree
    # turn of a long-lens camera is 3 px)
    uv_size: int = 128           # the avatar's size (train.py's options of the same names)
    hidden_dim: int = 256
    hidden_layers: int = 6
    seed: int = 0


def avatar_refine_config(device: torch.device | str) -> AvatarRefineConfig:
    """Full settings on a GPU; on the CPU a smaller avatar (the README demo's) trained for fewer steps and
    fewer correction steps: at 128 px over seeds 0-2, 1200 iterations and 20 steps left the avatar on the
    refined tracking 0.16 dB below the truth's in 59 % of the time that 2000 and 25 took (0.04 dB), a
    difference within the seeds' spread (bench/NOTES.md, session 12)."""
    if torch.device(device).type == "cpu":
        return AvatarRefineConfig(iterations=1200, steps=20, uv_size=64, hidden_dim=128, hidden_layers=4,
                                  strip=False)
    return AvatarRefineConfig()


TRAINING_MASKS = (("alpha", "", "alpha matte"), ("parsing", "_neckhead", "neck-head mask"),
                  ("parsing", "_mouth", "mouth mask"))


def missing_training_masks(subject_dir: Path, numbers: list[int]) -> str | None:
    """What keeps the stage's avatar from training on the frames (it needs each frame's alpha matte and
    neck-head and mouth masks, as train.py does), or None when nothing does."""
    for folder, suffix, label in TRAINING_MASKS:
        missing = [n for n in numbers if find_image(subject_dir / folder, f"{n:05d}{suffix}") is None]
        if missing:
            return (f"{subject_dir}: {len(missing)} frame(s) lack the {label} ({folder}/NNNNN{suffix}.png, "
                    f"e.g. {missing[0]:05d}) that the avatar stage trains with")
    return None


def check_trainable(subject_dir: Path, numbers: list[int]) -> None:
    """Stop before any tracking work when the stage's avatar could not train on the frames."""
    problem = missing_training_masks(subject_dir, numbers)
    if problem is not None:
        raise PreprocessError(f"{problem}: run the matting and face parsing "
                              "(preprocessing/video_to_subject.py) first, or track without --avatar_refine")


def train_avatar(data_root: Path, tracking_root: Path, idname: str, flame_dir: Path, log_root: Path,
                 cfg: AvatarRefineConfig, device: torch.device, quiet: bool = False) -> Trainer:
    """A baseline avatar trained on every frame of ``tracking_root/idname`` (no test split, no evaluation,
    no LPIPS); returns its finished :class:`Trainer` (the avatar, the subject, the background). ``quiet``:
    no training progress bar."""
    argv = ["--idname", idname, "--data_root", str(data_root), "--tracking_root", str(tracking_root),
            "--flame_dir", str(flame_dir), "--log_root", str(log_root), "--logname", "avatar",
            "--iterations", str(cfg.iterations), "--skip_test", "--lambda_lpips", "0", "--grid_every", "0",
            "--eval_every", "0", "--ckpt_every", "0", "--log_every", "500", "--seed", str(cfg.seed),
            "--random_background", "0",  # the stage's cameras were measured (bench/NOTES.md) over white
            "--uv_size", str(cfg.uv_size), "--hidden_dim", str(cfg.hidden_dim), "--hidden_layers",
            str(cfg.hidden_layers), "--device", str(device), "--overwrite", "--allow_missing",
            *(["--quiet"] if quiet else [])]
    train_cfg = parse_train_args(argv)
    train_cfg.data.test_num = train_cfg.data.eval_num = 0  # every frame trains: the tracker fits them all
    trainer = Trainer(train_cfg)
    trainer.run()
    return trainer


def small_turn(rotvec: Tensor) -> Tensor:
    """Unit quaternions (..., 4), w first, of turns by rotation vectors ``rotvec`` (..., 3), exact to second
    order in the angle (w = 1, v = rotvec / 2, normalised): for the sub-degree corrections this stage fits."""
    return F.normalize(torch.cat([torch.ones_like(rotvec[..., :1]), 0.5 * rotvec], -1), dim=-1)


def _cosine(k: int, steps: int, final: float) -> float:
    """Step size factor at step ``k`` of ``steps``: 1 at the start, ``final`` at the end, cosine between."""
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * k / max(steps - 1, 1)))


def camera_corrections(avatar: Avatar, subject: Subject, background: Tensor, cfg: AvatarRefineConfig,
                       progress=None) -> tuple[Tensor, Tensor]:
    """The corrected world-to-camera R (N,3,3) and t (N,3) of each of ``subject``'s frames, fitted by
    rendering the fixed ``avatar`` against the frame (module doc). ``cfg.batch`` frames are fitted together
    (with ``cfg.strip``, side by side in one rasterizer call: ``gaussian_renderer.strip``): one loss (the
    sum of theirs), one backward, one Adam step over their (B, 6) corrections. Adam works elementwise and
    each frame's loss depends on its own correction alone, so that is the same fit as one frame at a time,
    with the small per-step operations (and the host work of a rasterizer call) paid once per batch."""
    avatar.eval()
    for p in avatar.parameters():
        p.requires_grad_(False)
    Rs, ts = [], []
    for first in range(0, len(subject), cfg.batch):
        frames = [subject.frame(i) for i in range(first, min(first + cfg.batch, len(subject)))]
        cameras = [f.camera for f in frames]
        with torch.no_grad():
            sets = [avatar.deform(f.condition, f.camera)[0] for f in frames]
            placed = [camera_space(gs, cam) for gs, cam in zip(sets, cameras)]
            means = torch.stack([m for m, _ in placed])                         # (B, P, 3), camera frames
            covariances = torch.stack([c for _, c in placed])                   # (B, P, 3, 3)
            # colours along each frame's own viewing directions, kept: below a degree of correction the
            # view-dependent colour does not change
            colors = torch.stack([gaussian_colors(gs, gs.means, cam.camera_center.to(gs.means))
                                  for gs, cam in zip(sets, cameras)])
            opacities = torch.stack([gs.opacities.reshape(-1, 1) for gs in sets])
            images = torch.stack([f.image for f in frames])
        views = view_strip(cameras) if cfg.strip else at_origin(cameras)
        R = torch.stack([c.R for c in cameras]).float()  # (B, 3, 3)
        t = torch.stack([c.t for c in cameras]).float()  # (B, 3)
        fx = torch.stack([c.K[0, 0] for c in cameras]).float()
        # the corrections in pixel units: a turn of the camera by p / f radians and a shift by p z / f metres
        # both move the head about p pixels in the image, so one step size serves both
        to_si = torch.cat([(1.0 / fx)[:, None].expand(-1, 3), (t[:, 2] / fx)[:, None].expand(-1, 3)], 1)
        x = torch.zeros(len(frames), 6, device=R.device, requires_grad=True)
        opt = torch.optim.Adam([x], lr=cfg.step_px, fused=R.is_cuda)
        for k in range(cfg.steps):
            opt.param_groups[0]["lr"] = cfg.step_px * _cosine(k, cfg.steps, cfg.final_step)
            turn, shift = (x * to_si).split(3, dim=1)
            dR = unit_quaternion_to_matrix(small_turn(turn))                   # (B, 3, 3)
            seen = render_camera_space(views, means, covariances, opacities, colors, background, dR, shift)
            loss = (seen - images).abs().mean(dim=(1, 2, 3)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            turn, shift = (x * to_si).split(3, dim=1)
            dR = quaternion_to_matrix(small_turn(turn))
            Rs.append(dR @ R)
            ts.append((dR @ t[..., None])[..., 0] + shift)
        if progress is not None:
            progress(len(frames))
    return torch.cat(Rs), torch.cat(ts)


def set_cameras(params: TrackParams, R: Tensor, t: Tensor) -> None:
    """Write world-to-camera poses (N,3,3), (N,3) into ``params`` (R = R0 Rh: the head rotation Rh is
    R0^T R, R0 being its own inverse)."""
    with torch.no_grad():
        r0 = R0.to(R)
        params.rotation.copy_(matrix_to_rot6d(r0 @ R))
        params.translation.copy_(t)


def refine_with_avatar(params: TrackParams, obs: Observations, data_root: Path, idname: str,
                       flame_dir: Path, work: Path, write_frames, cfg: AvatarRefineConfig,
                       device: torch.device, progress=None, quiet: bool = False) -> dict:
    """Refine ``params``' cameras in place over ``cfg.rounds`` rounds. ``write_frames(params, obs, folder)``
    writes the ``.frame`` files each round's avatar trains on, under ``work/tracking``; the avatar's run
    goes to ``work/runs`` (``work`` is the tracking output's own folder: two trackings of one subject never
    share it). ``quiet``: no progress bar of the avatar's training. Returns the mean correction per round
    (degrees, millimetres)."""
    tracking_root = work / "tracking"
    rounds = []
    for _ in range(cfg.rounds):
        shutil.rmtree(tracking_root / idname, ignore_errors=True)
        write_frames(params, obs, tracking_root / idname / "checkpoint")
        trainer = train_avatar(data_root, tracking_root, idname, flame_dir, work / "runs", cfg,
                               device, quiet=quiet)
        position = {n: k for k, n in enumerate(obs.frame_numbers)}
        index = [position[n] for n in trainer.subject.frame_ids if n in position]
        if len(index) != len(obs):
            raise RuntimeError(f"the avatar stage's subject paired {len(index)} of {len(obs)} tracked frames "
                               f"({tracking_root / idname}): was its folder changed by another process?")
        R_old, t_old = (x.detach().clone() for x in params.cameras(obs.img_size)[:2])
        R_new, t_new = camera_corrections(trainer.avatar, trainer.subject, trainer.background, cfg, progress)
        R_all, t_all = R_old.clone(), t_old.clone()
        R_all[index], t_all[index] = R_new.to(R_all), t_new.to(t_all)
        set_cameras(params, R_all, t_all)
        rounds.append({"rotation_deg": float(rotation_angle_deg(R_all, R_old).mean()),
                       "translation_mm": float((t_all - t_old).norm(dim=-1).mean() * 1000)})
    return {"rounds": rounds}
