"""Stage 1 of the tracker: fit FLAME and the cameras to the 2D landmarks of all frames at once.

One identity shape and one focal length for the clip; per frame head rotation, translation,
expression, jaw, eyes and eyelids. The loss is a robust reprojection error (pixels, divided by the
image height) of the 68 landmarks and the two iris centres, Gaussian priors on shape and expression,
a pull of jaw and eyes towards rest, a box on the eyelids, a temporal smoothness term over
consecutive frames, which also fills frames with no face (their landmark weight is zero), and a penalty
on the head pose's acceleration (jitter). Everything is batched over frames on one device: a thousand
frames is one tensor program per iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from preprocessing.track.model import R0, LandmarkModel, Observations, TrackParams
from utils.rotations import identity_rot6d

# per-point weights: contour (0-16) is the least certain, eyes and mouth the most telling
_POINT_WEIGHTS = torch.cat([torch.full((17,), 0.3), torch.full((10,), 1.0), torch.full((9,), 1.0),
                            torch.full((12,), 2.0), torch.full((20,), 1.5), torch.full((2,), 10.0)])


@dataclass
class FitConfig:
    """Weights and schedule of the landmark fit (defaults tuned on the synthetic subject)."""

    rigid_steps: int = 300
    steps: int = 1500
    lr: float = 0.01
    w_shape: float = 1e-7
    w_expression: float = 1e-7    # at 512-px frames; 1e-5 at 128 px; between, log-linear in the height
    w_expression_128: float = 1e-5  # (expression_weight; bench/NOTES.md, session 14)
    w_jaw: float = 1e-4
    w_eyes: float = 1e-6
    w_eyelids: float = 1.0        # the box [0, 1] on the eyelid weights
    w_focal: float = 1e-2
    w_smooth: float = 1e-4
    w_accel: float = 1e-2         # the head pose's second differences (jitter; steady motion is free)
    accel_scale: float = 0.003    # ... quadratic below this (6D rotation units a frame squared), linear above
    robust_px: float = 4.0


def _robust(residual_px: Tensor, scale: float) -> Tensor:
    """Pseudo-Huber of pixel residuals (..., 2), quadratic below ``scale`` pixels, linear above."""
    r2 = (residual_px ** 2).sum(-1)
    return scale ** 2 * (torch.sqrt(1.0 + r2 / scale ** 2) - 1.0)


def reprojection_loss(pred: Tensor, obs: Observations, frames: Tensor | None, scale: float) -> Tensor:
    """Mean robust reprojection error, in squared units of the image height."""
    sel = slice(None) if frames is None else frames
    target = torch.cat([obs.landmarks[sel], obs.irises[sel]], 1)
    w = obs.confidence[sel] * _POINT_WEIGHTS.to(pred) * obs.valid[sel, None].to(pred)
    h = float(obs.img_size[0])
    return (w * _robust(pred - target, scale)).sum() / w.sum().clamp(min=1e-9) / h ** 2


def smoothness(x: Tensor, gaps: Tensor) -> Tensor:
    """Mean squared first difference over consecutive frames (N, D), divided by their number gap."""
    if x.shape[0] < 2:
        return x.new_zeros(())
    return ((x[1:] - x[:-1]) ** 2).sum(-1).div(gaps.to(x)).mean()


def acceleration(x: Tensor, gaps: Tensor, scale: float) -> Tensor:
    """Mean robust second difference over consecutive frames (N, D): the change of the per-frame velocity
    (first differences divided by their frame gaps), through a pseudo-Huber of ``scale``. A head moving
    steadily costs nothing; jitter (below ``scale``) costs its square; the real accelerations of a fast turn
    (above it) cost only linearly, so they are smoothed far less."""
    if x.shape[0] < 3:
        return x.new_zeros(())
    velocity = (x[1:] - x[:-1]) / gaps.to(x)[:, None]
    a2 = ((velocity[1:] - velocity[:-1]) ** 2).sum(-1)
    return (2.0 * scale ** 2 * (torch.sqrt(1.0 + a2 / scale ** 2) - 1.0)).mean()


def pose_vector(p: TrackParams) -> Tensor:
    """(N, 9) the per-frame head pose in the units the temporal terms weigh: 6D rotation, translation
    in decimetres."""
    return torch.cat([p.rotation, p.translation * 10.0], 1)


def expression_weight(cfg: FitConfig, height_px: int) -> float:
    """The expression prior's weight for frames ``height_px`` tall: ``w_expression`` at 512 px and above,
    ``w_expression_128`` at 128 px and below, log-linear in the height between (interpolated, not measured).

    The avatar's deformation network takes the expression as its condition. At 512 px a strong prior (1e-5)
    shrank it to a few per cent of its size and cost the avatar 0.4 dB against 1e-7; at 128 px, where 1 px
    of landmark noise is four times more of the frame and the expression moves the landmarks by under a
    pixel, 1e-7 cost it 1.5-2 dB and 1.6e-6 0.5 dB against 1e-5 (bench/NOTES.md, session 14)."""
    t = min(max(math.log2(512.0 / float(height_px)) / 2.0, 0.0), 1.0)  # 0 at 512 px, 1 at 128 px
    a, b = cfg.w_expression, cfg.w_expression_128
    if a <= 0.0 or b <= 0.0:  # a prior switched off: no logarithm; linear between
        return (1.0 - t) * a + t * b
    return math.exp((1.0 - t) * math.log(a) + t * math.log(b))


def regularisers(p: TrackParams, cfg: FitConfig, gaps: Tensor, height_px: int) -> Tensor:
    """The priors and temporal terms of the fit, for frames ``height_px`` tall."""
    eye = identity_rot6d(device=p.jaw.device)
    lids = p.eyelids
    reg = (cfg.w_shape * p.shape.pow(2).sum()
           + expression_weight(cfg, height_px) * p.expression.pow(2).sum(-1).mean()
           + cfg.w_jaw * (p.jaw - eye).pow(2).sum(-1).mean()
           + cfg.w_eyes * (p.eyes - eye.repeat(2)).pow(2).sum(-1).mean()
           + cfg.w_eyelids * (torch.relu(-lids) + torch.relu(lids - 1.0)).pow(2).sum(-1).mean())
    pose = pose_vector(p)
    motion = torch.cat([pose, p.jaw, p.eyes, p.eyelids, p.expression * 0.1], 1)
    jitter = acceleration(pose, gaps, cfg.accel_scale)
    return reg + cfg.w_smooth * smoothness(motion, gaps) + cfg.w_accel * jitter


def frame_gaps(frame_numbers: list[int], device: torch.device) -> Tensor:
    n = torch.tensor(frame_numbers, dtype=torch.float32, device=device)
    return (n[1:] - n[:-1]).clamp(min=1.0)


@torch.no_grad()
def initialise_pose(params: TrackParams, model: LandmarkModel, obs: Observations) -> None:
    """Head facing the camera, placed from the landmarks' centre and spread: depth from the ratio of the
    canonical landmark width to the observed one, x and y from the centre's ray."""
    dev = params.translation.device
    h, w = obs.img_size
    f = float(torch.exp(params.log_focal)) * w
    n = params.n_frames
    eye = identity_rot6d(1, device=dev)
    pts = model.points3d(params.full_shape(), params.full_expression()[:1], eye, eye.repeat(1, 2),
                         torch.zeros(1, 2, device=dev), torch.eye(3, device=dev)[None])[0, :68]
    width3d = float(pts[:, 0].max() - pts[:, 0].min())
    centre3d = R0.to(pts) @ pts.mean(0)
    lm = obs.landmarks
    conf = obs.confidence[:, :68] * obs.valid[:, None]
    cw = conf / conf.sum(1, keepdim=True).clamp(min=1e-9)
    centre = (lm * cw[..., None]).sum(1)  # (N, 2)
    x = lm[..., 0]
    spread = x.masked_fill(conf <= 0, -1e9).amax(1) - x.masked_fill(conf <= 0, 1e9).amin(1)
    z = f * width3d / spread.clamp(min=1.0)
    good = obs.valid & (spread > 1.0)
    z = torch.where(good, z, z[good].median() if good.any() else torch.full_like(z, 1.0))
    centre = torch.where(good[:, None], centre, centre[good].mean(0) if good.any() else
                         torch.tensor([w / 2.0, h / 2.0], device=dev))
    cx, cy = params.principal if params.principal is not None else (w / 2.0, h / 2.0)
    x = (centre[:, 0] - cx) * z / f
    y = (centre[:, 1] - cy) * z / f
    params.translation.copy_(torch.stack([x, y, z], 1) - centre3d)
    params.rotation.copy_(identity_rot6d(n, device=dev))


def fit_landmarks(params: TrackParams, model: LandmarkModel, obs: Observations, cfg: FitConfig,
                  progress=None) -> dict[str, float]:
    """Run the rigid then the full landmark fit in place; returns the final loss terms."""
    gaps = frame_gaps(obs.frame_numbers, params.translation.device)
    initialise_pose(params, model, obs)
    focal0 = params.log_focal.detach().clone()

    def loss_fn(full: bool) -> tuple[Tensor, Tensor]:
        pred = model(params, obs.img_size)
        rep = reprojection_loss(pred, obs, None, cfg.robust_px)
        if full:
            total = rep + regularisers(params, cfg, gaps, obs.img_size[0])
        else:
            pose = pose_vector(params)
            jitter = acceleration(pose, gaps, cfg.accel_scale)
            total = rep + cfg.w_smooth * smoothness(pose, gaps) + cfg.w_accel * jitter
        total = total + cfg.w_focal * (params.log_focal - focal0) ** 2
        return total, rep

    stages = [(cfg.rigid_steps, [params.rotation, params.translation], False),
              (cfg.steps, list(params.parameters()), True)]
    rep = torch.zeros(())
    for steps, group, full in stages:
        opt = torch.optim.Adam(group, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(steps * 0.6), int(steps * 0.85)], 0.3)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            total, rep = loss_fn(full)
            total.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(1)
    with torch.no_grad():
        pred = model(params, obs.img_size)
        err = (pred - torch.cat([obs.landmarks, obs.irises], 1)).norm(dim=-1)
        seen = (obs.confidence > 0) & obs.valid[:, None]
    return {"reprojection_loss": float(rep.detach()),
            "landmark_error_px": float(err[:, :68][seen[:, :68]].mean()),
            "iris_error_px": float(err[:, 68:][seen[:, 68:]].mean()) if seen[:, 68:].any() else float("nan")}
