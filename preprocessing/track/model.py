"""The tracker's unknowns and its forward model: FLAME parameters and cameras -> 2D landmarks.

Conventions (docs/maths.md sections 3, 7, 8): tracking bakes the head pose into the camera, so FLAME's
own global rotation stays identity and every frame has a world-to-camera rotation ``R = R0 Rh`` and
translation ``t``, where ``Rh`` is the head's rotation in a y-up, z-towards-the-camera frame and
``R0 = diag(1, -1, -1)`` turns that frame into OpenCV's (x right, y down, z forward). One focal length
(fx = fy) and one principal point serve the whole clip: the image centre, or where the uncropped video's
centre lands in the crop when video_to_subject.py recorded the crop; pixel ``u = fx x / z + cx``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from flame.assets import N_EXPR, N_SHAPE, FlameAssets
from flame.condition import build_condition
from flame.landmarks import LandmarkEmbedding, iris_vertices, yaw_bins
from flame.model import FLAME
from utils.rotations import identity_rot6d, rot6d_to_matrix

R0 = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # y-up / z-to-camera head frame -> OpenCV camera frame


@dataclass
class Observations:
    """What the images say, per frame: 68 landmarks and 2 iris centres (the subject's right eye first) in
    pixels, with a confidence per point (0 where unseen); ``valid`` is False for frames without a face."""

    frame_numbers: list[int]
    landmarks: Tensor      # (N, 68, 2)
    irises: Tensor         # (N, 2, 2)
    confidence: Tensor     # (N, 70): 68 landmarks then the two irises
    valid: Tensor          # (N,) bool
    img_size: tuple[int, int]  # (h, w)

    def __len__(self) -> int:
        return len(self.frame_numbers)

    def to(self, device: torch.device | str) -> Observations:
        return Observations(self.frame_numbers, self.landmarks.to(device), self.irises.to(device),
                            self.confidence.to(device), self.valid.to(device), self.img_size)


class TrackParams(nn.Module):
    """The unknowns of one clip: one identity ``shape`` and ``log_focal`` (fx = exp(log_focal) * width);
    per frame ``rotation`` (6D, the head's Rh), ``translation`` (camera space, metres), ``expression``,
    ``jaw`` and ``eyes`` (6D), ``eyelids``."""

    def __init__(self, n_frames: int, focal: float, *, n_shape: int = 100, n_expr: int = N_EXPR,
                 principal: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.principal = principal  # (cx, cy) in pixels when known (a crop's record), else the image centre
        self.shape = nn.Parameter(torch.zeros(n_shape))
        self.log_focal = nn.Parameter(torch.tensor(float(np.log(focal))))
        self.rotation = nn.Parameter(identity_rot6d(n_frames))
        self.translation = nn.Parameter(torch.zeros(n_frames, 3))
        self.expression = nn.Parameter(torch.zeros(n_frames, n_expr))
        self.jaw = nn.Parameter(identity_rot6d(n_frames))
        self.eyes = nn.Parameter(identity_rot6d(n_frames, 2).reshape(n_frames, 12))
        self.eyelids = nn.Parameter(torch.zeros(n_frames, 2))

    @property
    def n_frames(self) -> int:
        return int(self.rotation.shape[0])

    def full_shape(self) -> Tensor:
        """(300,) shape vector (the fitted components, then zeros)."""
        return torch.cat([self.shape, self.shape.new_zeros(N_SHAPE - self.shape.numel())])

    def full_expression(self) -> Tensor:
        return torch.cat([self.expression, self.expression.new_zeros(self.n_frames,
                                                                     N_EXPR - self.expression.shape[1])], 1)

    def head_rotation(self) -> Tensor:
        """(N, 3, 3) Rh."""
        return rot6d_to_matrix(self.rotation)

    def cameras(self, img_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """World-to-camera R (N,3,3), t (N,3) and the shared K (3,3) for images of ``img_size`` (h, w)."""
        h, w = img_size
        f = torch.exp(self.log_focal) * w
        zero, one = f.new_zeros(()), f.new_ones(())
        cx, cy = self.principal if self.principal is not None else (w / 2.0, h / 2.0)
        K = torch.stack([torch.stack([f, zero, f.new_tensor(cx)]),
                         torch.stack([zero, f, f.new_tensor(cy)]),
                         torch.stack([zero, zero, one])])
        return R0.to(f) @ self.head_rotation(), self.translation, K

    def conditions(self) -> Tensor:
        """(N, 120) condition vectors of the frames (flame.condition layout)."""
        return build_condition(self.full_expression(), self.jaw, self.eyes, self.eyelids)


def project(points: Tensor, R: Tensor, t: Tensor, K: Tensor) -> Tensor:
    """World points (B, P, 3) seen by cameras (B,3,3), (B,3), K (3,3) -> pixels (B, P, 2)."""
    cam = points @ R.transpose(1, 2) + t[:, None, :]
    z = cam[..., 2:3].clamp(min=1e-6)
    return cam[..., :2] / z * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])


class LandmarkModel(nn.Module):
    """FLAME evaluated only at the vertices the 68 landmarks (every yaw bin) and the two iris points
    use, so a clip of a thousand frames costs a few hundred vertices per frame."""

    def __init__(self, assets: FlameAssets, embedding: LandmarkEmbedding) -> None:
        super().__init__()
        faces = np.asarray(assets.faces, dtype=np.int64)
        used_faces = np.concatenate([embedding.static_faces.ravel(), embedding.dynamic_faces.ravel()])
        iris = iris_vertices(assets)
        ids = np.unique(np.concatenate([faces[used_faces].ravel(), iris]))
        lookup = np.full(assets.n_vertices, -1, dtype=np.int64)
        lookup[ids] = np.arange(len(ids))
        self.flame = FLAME(assets).restricted_to(ids)
        self.embedding = embedding
        self.register_buffer("face_slots", torch.from_numpy(lookup[faces]), persistent=False)  # (F,3)
        self.register_buffer("iris_slots", torch.from_numpy(lookup[iris]), persistent=False)  # (2,)
        self.register_buffer("dyn_faces", torch.from_numpy(embedding.dynamic_faces), persistent=False)
        self.register_buffer("dyn_bary", torch.from_numpy(embedding.dynamic_bary).float(), persistent=False)
        self.register_buffer("static_faces", torch.from_numpy(embedding.static_faces), persistent=False)
        self.register_buffer("static_bary", torch.from_numpy(embedding.static_bary).float(), persistent=False)

    def points3d(self, shape: Tensor, expression: Tensor, jaw: Tensor, eyes: Tensor, eyelids: Tensor,
                 head_rotation: Tensor) -> Tensor:
        """(B, 70, 3) model-space points: the 68 landmarks (contour by each frame's yaw bin), then the
        iris centres of the subject's right and left eye."""
        verts = self.flame(shape[None], expression, jaw=jaw, eyes=eyes, eyelids=eyelids)  # (B, K, 3)
        bins = yaw_bins(head_rotation.detach())
        faces = torch.cat([self.dyn_faces[bins], self.static_faces.expand(len(bins), -1)], 1)  # (B,68)
        bary = torch.cat([self.dyn_bary[bins], self.static_bary.expand(len(bins), -1, -1)], 1)
        slots = self.face_slots[faces]  # (B, 68, 3)
        b = torch.arange(len(bins), device=verts.device)[:, None, None]
        lmk = (verts[b, slots] * bary[..., None].to(verts)).sum(2)
        return torch.cat([lmk, verts[:, self.iris_slots]], 1)

    def forward(self, params: TrackParams, img_size: tuple[int, int],
                frames: Tensor | None = None) -> Tensor:
        """Projected points (B, 70, 2) of ``frames`` (all when None)."""
        sel = slice(None) if frames is None else frames
        R, t, K = params.cameras(img_size)
        pts = self.points3d(params.full_shape(), params.full_expression()[sel], params.jaw[sel],
                            params.eyes[sel], params.eyelids[sel], params.head_rotation()[sel])
        return project(pts, R[sel], t[sel], K)
