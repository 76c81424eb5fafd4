"""Pinhole cameras from tracked OpenCV extrinsics and intrinsics (docs/maths.md section 7).

A :class:`Camera` holds world-to-camera ``R``, ``t`` and intrinsics ``K`` (x right, y down, z forward)
and derives what the rasterizers read: the 4x4 world-to-view matrix, the projection matrix that
carries the principal point, their float32 product ``F = P V`` and the camera centre. All matrices
are row-major and act on column vectors (``x_view = V @ [x, 1]``); the CUDA adapter transposes them
for the original's column-major API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from utils.rotations import rotation_about_x, rotation_about_y

ZNEAR = 0.01
ZFAR = 100.0


def projection_matrix(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                      znear: float = ZNEAR, zfar: float = ZFAR) -> Tensor:
    """docs/maths.md section 7 projection: NDC x = (2 fx x / W + (2 cx / W - 1) z) / z, likewise y."""
    P = torch.zeros(4, 4, dtype=torch.float32)
    P[0, 0] = 2.0 * fx / width
    P[0, 2] = 2.0 * cx / width - 1.0
    P[1, 1] = 2.0 * fy / height
    P[1, 2] = 2.0 * cy / height - 1.0
    P[2, 2] = zfar / (zfar - znear)
    P[2, 3] = -zfar * znear / (zfar - znear)
    P[3, 2] = 1.0
    return P


@dataclass
class Camera:
    """One view. ``R`` (3,3) and ``t`` (3,) map world to camera; ``K`` (3,3) is in pixels of a
    ``image_width`` x ``image_height`` image, read in continuous coordinates (pixel i spans [i, i+1))."""

    R: Tensor
    t: Tensor
    K: Tensor
    image_width: int
    image_height: int
    znear: float = ZNEAR
    zfar: float = ZFAR
    name: str = ""
    world_view_transform: Tensor = field(init=False, repr=False)
    projection: Tensor = field(init=False, repr=False)
    full_proj_transform: Tensor = field(init=False, repr=False)
    camera_center: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        device = self.R.device
        R = torch.as_tensor(self.R, dtype=torch.float32, device=device).reshape(3, 3)
        t = torch.as_tensor(self.t, dtype=torch.float32, device=device).reshape(3)
        K = torch.as_tensor(self.K, dtype=torch.float32, device=device).reshape(3, 3)
        self.R, self.t, self.K = R, t, K
        V = torch.eye(4, dtype=torch.float32, device=device)
        V[:3, :3] = R
        V[:3, 3] = t
        self.world_view_transform = V
        Kc = K.detach().cpu().double()
        self.fx, self.fy = float(Kc[0, 0]), float(Kc[1, 1])
        self.cx, self.cy = float(Kc[0, 2]), float(Kc[1, 2])
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"camera {self.name!r}: focal lengths must be positive, "
                             f"got fx={self.fx}, fy={self.fy}")
        self.projection = projection_matrix(self.fx, self.fy, self.cx, self.cy, self.image_width,
                                            self.image_height, self.znear, self.zfar).to(device)
        self.full_proj_transform = self.projection @ V  # float32, formed once (docs/maths.md section 7)
        self.camera_center = -(R.T @ t)

    @property
    def tanfovx(self) -> float:
        """tan(fov_x / 2) = W / (2 fx): the rasterizer's focal length is W / (2 tanfovx) = fx."""
        return self.image_width / (2.0 * self.fx)

    @property
    def tanfovy(self) -> float:
        return self.image_height / (2.0 * self.fy)

    @property
    def device(self) -> torch.device:
        return self.R.device

    def to(self, device: torch.device | str) -> Camera:
        """The same camera with its tensors on ``device``."""
        return Camera(self.R.to(device), self.t.to(device), self.K.to(device), self.image_width,
                      self.image_height, self.znear, self.zfar, self.name)

    def with_pose(self, R: Tensor, t: Tensor) -> Camera:
        """The same intrinsics and image size with another world-to-camera pose."""
        return Camera(R.to(self.device), t.to(self.device), self.K, self.image_width, self.image_height,
                      self.znear, self.zfar, self.name)

    def turned_about_y(self, angle_deg: float) -> Camera:
        """The camera looking at the head turned by ``angle_deg`` about FLAME's vertical (y) axis through
        its origin: R -> R Ry(angle)^T, t unchanged (render.py's turntable, docs/maths.md section 10)."""
        return self.turned(angle_deg)

    def turned(self, yaw_deg: float, pitch_deg: float = 0.0) -> Camera:
        """The camera looking at the head turned by ``yaw_deg`` about FLAME's y axis, then ``pitch_deg``
        about its x axis, through its origin: R -> R (Rx(pitch) Ry(yaw))^T, t unchanged (the novel views
        of the synthetic subject, docs/maths.md section 10)."""
        ry = rotation_about_y(math.radians(yaw_deg), dtype=self.R.dtype, device=self.R.device)
        rx = rotation_about_x(math.radians(pitch_deg), dtype=self.R.dtype, device=self.R.device)
        return self.with_pose(self.R @ (rx @ ry).T, self.t)

    def project(self, points: Tensor) -> Tensor:
        """World points (..., 3) to continuous pixel coordinates (..., 2) (u = fx x/z + cx) and depth."""
        cam = points @ self.R.T.to(points.dtype) + self.t.to(points.dtype)
        z = cam[..., 2:3]
        K = self.K.to(points.dtype)
        uv = cam[..., :2] / z * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
        return torch.cat([uv, z], dim=-1)
