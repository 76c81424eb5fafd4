"""Tracking against known ground truth: how far a tracked subject's FLAME and cameras are from the truth.

Used by the tests and ``bench/bench_tracker.py`` on the synthetic subject, whose ``.frame`` files hold
the parameters it was rendered with. Figures (means over frames):

- ``vertex_mm``: FLAME vertices (shape, expression, jaw, eyes, eyelids; no global pose) of the fit
  against the truth, in the model's units x 1000 (millimetres for FLAME), nothing aligned or removed;
- ``shape_vertex_mm``: the neutral heads alone (identity shape, zero expression): how much of the
  vertex error is the identity (landmarks see little of it: the back of the head and the neck count too);
- ``motion_vertex_mm``: the per-frame part alone: the true shape posed with the fitted and the true
  expression, jaw, eyes and eyelids;
- ``camera_vertex_mm``: the same vertices in each camera's frame (pose and translation included);
- ``rotation_deg``: the angle between the fitted and the true head rotation (camera R) per frame;
- ``consistency_px``: what an avatar needs of the cameras. The head's rigid vertices (those the true
  expression, jaw, eyes and eyelids never move) are projected with the true cameras, then each is
  triangulated from those pixel tracks with the *fitted* cameras, and the mean reprojection error is
  reported. Cameras that are right up to a change the static geometry can absorb (a global offset, a
  depth scale traded against rotation) score 0; per-frame pose errors that no static head can explain
  score pixels. Unlike ``rotation_deg`` it does not charge the fit for the gauge freedoms of
  monocular tracking;
- ``reprojection_px``: the 68 landmarks projected with the fitted and the true cameras;
- ``expression_landmark_fit_mm`` / ``expression_landmark_truth_mm``: how far the fitted / true expression
  coefficients alone (true neutral head; no jaw, eyes or eyelids) move the 68 landmarks, and
  ``expression_landmark_mm`` their difference. A prior that shrinks the expression to nothing shows as a
  fitted size far below the true one: the avatar's deformation network, which takes the coefficients as
  its condition, then hardly sees the expression (bench/NOTES.md, session 14). The difference itself is a
  poor guide, as is ``expression_rmse``: localized blendshapes of one region are nearly collinear and the
  jaw trades against the chin's and lips' components, so different coefficients give the same landmarks;
- ``expression_rmse``, ``jaw_deg`` (rotation angle), ``gaze_deg`` (angle between the gaze directions;
  the roll of an eyeball about its gaze is invisible and not counted), ``eyelids_mae``, ``focal_rel``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flame.assets import FlameAssets
from flame.landmarks import LandmarkEmbedding
from flame.model import FLAME
from preprocessing.track.model import R0, LandmarkModel, Observations, project
from scene.data.tracking import TrackedFrame, load_tracked_frame
from utils.rotations import identity_rot6d, rot6d_to_matrix, rotation_angle_deg


def load_sequence(folder: Path, numbers: list[int] | None = None) -> list[TrackedFrame]:
    paths = sorted(Path(folder).glob("*.frame"))
    frames = [load_tracked_frame(p) for p in paths]
    if numbers is not None:
        by_id = {f.frame_id: f for f in frames}
        frames = [by_id[n] for n in numbers]
    return frames


def _stack(frames: list[TrackedFrame]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([getattr(f, k) for f in frames]).float()
            for k in ("expression", "jaw", "eyes", "eyelids", "R", "t")} | {
        "shape": frames[0].shape.float(), "K": frames[0].K.float()}


def _gaze_deg(a6: torch.Tensor, b6: torch.Tensor) -> torch.Tensor:
    """Angle between the gaze directions (the eyeball's +z axis turned) of two eye rotations."""
    ga, gb = rot6d_to_matrix(a6)[..., :, 2], rot6d_to_matrix(b6)[..., :, 2]
    return torch.rad2deg(torch.acos((ga * gb).sum(-1).clamp(-1.0, 1.0)))


def _angle_deg(a6: torch.Tensor, b6: torch.Tensor) -> torch.Tensor:
    return rotation_angle_deg(rot6d_to_matrix(a6), rot6d_to_matrix(b6))


def triangulate(uv: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
                iters: int = 3) -> torch.Tensor:
    """Static points (P,3) that best explain pixel tracks ``uv`` (N,P,2) seen by cameras R (N,3,3), t (N,3),
    K (3,3): linear least squares on (u - cx) z = fx x (and the same for v), reweighted by 1/z so that the
    residuals it minimises approach pixel errors."""
    rows = []
    for axis in (0, 1):
        centred = uv[..., axis:axis + 1] - K[axis, 2]  # (N,P,1)
        a = centred * R[:, None, 2, :] - K[axis, axis] * R[:, None, axis, :]  # (N,P,3)
        b = K[axis, axis] * t[:, None, axis:axis + 1] - centred * t[:, None, 2:3]  # (N,P,1)
        rows.append((a, b))
    A = torch.cat([rows[0][0], rows[1][0]], 0).transpose(0, 1)  # (P, 2N, 3)
    B = torch.cat([rows[0][1], rows[1][1]], 0).transpose(0, 1)  # (P, 2N, 1)
    X = torch.linalg.lstsq(A, B).solution[..., 0]
    for _ in range(iters):
        w = 1.0 / (X[None] @ R.transpose(1, 2) + t[:, None])[..., 2].T[..., None]  # (P,N,1)
        w = torch.cat([w, w], 1)
        X = torch.linalg.lstsq(A * w, B * w).solution[..., 0]
    return X


def consistency_px(truth: dict[str, torch.Tensor], fit: dict[str, torch.Tensor], flame: FLAME,
                   rigid_mm: float = 0.5) -> float:
    """See the module doc: the rigid head's true pixel tracks, triangulated with the fitted cameras."""
    g = truth
    posed = flame(g["shape"][None], g["expression"], jaw=g["jaw"], eyes=g["eyes"], eyelids=g["eyelids"])
    neutral = flame(g["shape"][None], torch.zeros_like(g["expression"][:1]))[0]
    rigid = (posed - neutral).norm(dim=-1).amax(0) < rigid_mm / 1000.0
    if int(rigid.sum()) < 10:
        return float("nan")
    X = neutral[rigid].double()
    n = g["R"].shape[0]
    uv = project(X.expand(n, -1, -1), g["R"].double(), g["t"].double(), g["K"].double())
    R, t, K = fit["R"].double(), fit["t"].double(), fit["K"].double()
    X_fit = triangulate(uv, R, t, K)
    return float((project(X_fit.expand(n, -1, -1), R, t, K) - uv).norm(dim=-1).mean())


@torch.no_grad()
def compare_tracking(truth: list[TrackedFrame], fit: list[TrackedFrame], assets: FlameAssets,
                     embedding: LandmarkEmbedding) -> dict[str, float]:
    """Errors of ``fit`` against ``truth`` (the same frames, in the same order)."""
    if [f.frame_id for f in truth] != [f.frame_id for f in fit]:
        raise ValueError("compare_tracking: the two sequences hold different frames")
    g, f = _stack(truth), _stack(fit)
    flame = FLAME(assets)
    vg = flame(g["shape"][None], g["expression"], jaw=g["jaw"], eyes=g["eyes"], eyelids=g["eyelids"])
    vf = flame(f["shape"][None], f["expression"], jaw=f["jaw"], eyes=f["eyes"], eyelids=f["eyelids"])
    vm = flame(g["shape"][None], f["expression"], jaw=f["jaw"], eyes=f["eyes"], eyelids=f["eyelids"])
    zero = torch.zeros(1, g["expression"].shape[1])
    neutral = (flame(g["shape"][None], zero) - flame(f["shape"][None], zero)).norm(dim=-1).mean()
    cam_g = vg @ g["R"].transpose(1, 2) + g["t"][:, None]
    cam_f = vf @ f["R"].transpose(1, 2) + f["t"][:, None]
    lm = LandmarkModel(assets, embedding)
    pg = project(lm.points3d(g["shape"], g["expression"], g["jaw"], g["eyes"], g["eyelids"],
                             R0 @ g["R"])[:, :68], g["R"], g["t"], g["K"])
    pf = project(lm.points3d(f["shape"], f["expression"], f["jaw"], f["eyes"], f["eyelids"],
                             R0 @ f["R"])[:, :68], f["R"], f["t"], f["K"])
    n = g["expression"].shape[0]
    rest6d = identity_rot6d(n)

    def expression_at_landmarks(expression: torch.Tensor) -> torch.Tensor:
        return lm.points3d(g["shape"], expression, rest6d, rest6d.repeat(1, 2), torch.zeros(n, 2),
                           torch.eye(3).expand(n, 3, 3))[:, :68]

    lmk_rest = expression_at_landmarks(torch.zeros_like(g["expression"]))
    lmk_g = expression_at_landmarks(g["expression"]) - lmk_rest
    lmk_f = expression_at_landmarks(f["expression"]) - lmk_rest
    eye_err = torch.cat([_gaze_deg(f["eyes"][:, :6], g["eyes"][:, :6]),
                         _gaze_deg(f["eyes"][:, 6:], g["eyes"][:, 6:])])
    return {
        "vertex_mm": float((vg - vf).norm(dim=-1).mean() * 1000),
        "shape_vertex_mm": float(neutral * 1000),
        "motion_vertex_mm": float((vg - vm).norm(dim=-1).mean() * 1000),
        "camera_vertex_mm": float((cam_g - cam_f).norm(dim=-1).mean() * 1000),
        "reprojection_px": float((pg - pf).norm(dim=-1).mean()),
        "rotation_deg": float(_angle_deg(f["R"][:, :2].reshape(-1, 6), g["R"][:, :2].reshape(-1, 6)).mean()),
        "expression_rmse": float((f["expression"] - g["expression"]).pow(2).mean().sqrt()),
        "expression_rms_truth": float(g["expression"].pow(2).mean().sqrt()),
        "expression_landmark_mm": float((lmk_f - lmk_g).norm(dim=-1).mean() * 1000),
        "expression_landmark_fit_mm": float(lmk_f.norm(dim=-1).mean() * 1000),
        "expression_landmark_truth_mm": float(lmk_g.norm(dim=-1).mean() * 1000),
        "jaw_deg": float(_angle_deg(f["jaw"], g["jaw"]).mean()),
        "gaze_deg": float(eye_err.mean()),
        "eyelids_mae": float((f["eyelids"] - g["eyelids"]).abs().mean()),
        "focal_rel": float(f["K"][0, 0] / g["K"][0, 0] - 1.0),
        "consistency_px": consistency_px(g, f, flame),
    }


@torch.no_grad()
def observations_from_tracking(truth: list[TrackedFrame], assets: FlameAssets, embedding: LandmarkEmbedding,
                               noise_px: float = 0.0, seed: int = 0) -> Observations:
    """The 68 landmarks and iris centres the true parameters project to, plus Gaussian pixel noise: the
    tracker's input without a detector (the synthetic face is not one a face detector is made for)."""
    g = _stack(truth)
    lm = LandmarkModel(assets, embedding)
    pts = project(lm.points3d(g["shape"], g["expression"], g["jaw"], g["eyes"], g["eyelids"], R0 @ g["R"]),
                  g["R"], g["t"], g["K"])
    gen = torch.Generator().manual_seed(seed)
    pts = pts + noise_px * torch.randn(pts.shape, generator=gen)
    n = len(truth)
    return Observations([f.frame_id for f in truth], pts[:, :68], pts[:, 68:], torch.ones(n, 70),
                        torch.ones(n, dtype=torch.bool), truth[0].img_size)
