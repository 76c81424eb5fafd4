"""Stage 2 of the tracker: refine the landmark fit against the pixels, through our Gaussian rasterizer.

The head is drawn as Gaussians embedded on the FLAME mesh (the avatar's own UV embedding, small
isotropic splats, nearly opaque) with one learnt colour each, the same for every frame. Per step a
mini-batch of frames is rendered at ``size`` pixels on white and compared (L1) with the frame matted on
white, inside the head mask and outside the matte: the background, where a head drawn too wide or
turned too far shows, counts as much as the head (a two-sided silhouette), and only what the matte holds
beyond the head (clothes, shoulders: nothing FLAME draws) is left out, as are the rows below each frame's
chin. The landmark reprojection and the stage-1 priors and smoothness keep the fit anchored. The colours,
the identity shape and the per-frame parameters are optimised together. Where a frame has no images
(landmarks only), only its landmark terms act.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from simple_knn import distCUDA2
from torch import Tensor

from flame.assets import FlameAssets
from flame.model import FLAME
from gaussian_renderer import render
from gaussian_renderer.types import GaussianSet
from preprocessing.track.fit import FitConfig, frame_gaps, regularisers, reprojection_loss
from preprocessing.track.model import LandmarkModel, Observations, TrackParams
from scene.data.cameras import Camera
from scene.model.embedding import Embedding


@dataclass
class PhotometricConfig:
    colour_steps: int = 150   # colours alone first, with the landmark fit frozen
    steps: int = 600          # then everything, ``batch`` frames a step
    batch: int = 8
    size: int = 256           # render and compare at this many pixels (the longer side)
    uv_size: int = 64
    lr: float = 1e-3
    lr_shape: float = 1e-2    # the identity moves in units of its prior's spread: a larger step
    lr_colour: float = 0.05
    w_photo: float = 1e-3
    w_landmarks: float = 1.0
    neck_margin: float = 0.02  # the comparison stops this far (a fraction of the height) below the chin
    nonrigid: bool = False     # also refine expression, jaw, eyes and eyelids; off, the landmark fit's stay
    # (at 512 px its splat head turned the jaw 2.6 -> 4.7 degrees off and the gaze 3.2 -> 9.9; keeping them
    # gave the avatar 33.39 dB against 33.25, bench/NOTES.md session 14); the CPU preset keeps them on


def photometric_config(device: torch.device | str) -> PhotometricConfig:
    """The stage's settings for a device: the full ones on a GPU (256 px, 600 steps of 8 frames: about 30 s
    on an H200 for any clip length), a light preset on the CPU (128 px, 300 steps of 4 frames, uv 48: about
    75-85 s on 2 cores instead of ten minutes). Measured in bench/NOTES.md (session 7): at 512 px the full
    settings gave the avatar 0.9 dB more than the light ones; at 128 px the light ones already matched the
    true tracking. At 128 px refining the non-rigid parameters too did better (33.03 against 32.46 dB,
    session 13), at 512 px worse (session 14): the CPU preset keeps ``nonrigid``."""
    if torch.device(device).type == "cpu":
        return PhotometricConfig(steps=300, batch=4, size=128, uv_size=48, nonrigid=True)
    return PhotometricConfig()


class FrameImages:
    """The clip's target images (N, 3, s, s) in [0, 1], matted on white, and where they are compared
    (N, 1, s, s): the head inside the matte plus the background outside it (see the module doc),
    resized to the photometric size; uint8 on the device to keep a thousand frames small."""

    def __init__(self, images: Tensor, weights: Tensor) -> None:
        self.images, self.weights = images, weights

    def batch(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        return self.images[frames].float() / 255.0, self.weights[frames].float() / 255.0


def resize_uint8(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) uint8 -> (B, C, h, w) uint8, area-averaged."""
    return F.interpolate(x.float(), size=size, mode="area").round().clamp(0, 255).to(torch.uint8)


def resized_intrinsics(K: Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Tensor:
    """Intrinsics (3,3) for frames area-resized from ``src_hw`` to ``dst_hw``: pixel centres sit on integers
    at both sizes, so a point at u lands at u' = (u + 1/2) s - 1/2 (not u s: 1.5 px off at 512 -> 128)."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    resize = K.new_tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return resize @ K


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals (B, V, 3) of meshes (B, V, 3) with faces (F, 3)."""
    tri = verts[:, faces]  # (B, F, 3, 3)
    fn = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    corners = fn[:, :, None, :].expand(-1, -1, 3, -1).reshape(verts.shape[0], -1, 3)
    vn = torch.zeros_like(verts).index_add_(1, faces.reshape(-1), corners)
    return F.normalize(vn, dim=-1)


class SplatHead(torch.nn.Module):
    """Gaussians on the FLAME mesh with a learnt albedo each, lit by one first-order spherical-harmonics
    light for the clip on the mesh normals in camera space (a static camera and room: shading that
    changes as the head turns is explained by the light, not by moving the geometry): colour = albedo *
    (l0 + l1 . n). Each splat's sigma is ``splat_scale`` times its neighbour spacing (0.5: sharp; at 1 the
    head came out blurred and a splat wider). ``n_frames`` is kept for the caller's bookkeeping."""

    def __init__(self, assets: FlameAssets, shape: Tensor, uv_size: int, n_frames: int,
                 splat_scale: float = 0.5) -> None:
        super().__init__()
        self.flame = FLAME(assets).to(shape.device)
        self.register_buffer("faces", torch.as_tensor(assets.faces, dtype=torch.long, device=shape.device))
        light = torch.zeros(3, 4, device=shape.device)
        light[:, 0] = 1.0
        self.light = torch.nn.Parameter(light)
        with torch.no_grad():
            canonical = self.flame(shape.detach()[None], torch.zeros(1, 100, device=shape.device))[0]
        self.embedding = Embedding.build(assets.uv_mesh, canonical.cpu(), assets.masks["boundary"],
                                         uv_size=uv_size, faces=assets.faces).to(shape.device)
        pos = self.embedding.interpolate(canonical)
        scale = splat_scale * torch.sqrt(distCUDA2(pos).clamp(min=1e-10))
        self.register_buffer("log_scale", torch.log(scale)[:, None].expand(-1, 3).contiguous())
        n = pos.shape[0]
        self.colour_logit = torch.nn.Parameter(torch.zeros(n, 3, device=shape.device))
        self.register_buffer("rotation", torch.tensor([1.0, 0.0, 0.0, 0.0], device=shape.device).expand(n, 4))
        self.register_buffer("opacity", torch.full((n, 1), 0.95, device=shape.device))

    def gaussians(self, frames: Tensor, shape: Tensor, expression: Tensor, jaw: Tensor, eyes: Tensor,
                  eyelids: Tensor, R: Tensor, t: Tensor) -> list[GaussianSet]:
        """The batch's Gaussians in camera space (the world-to-camera R (B,3,3), t (B,3) applied to the
        means, so that the pose gets gradients from either rasterizer backend; the splats are round, so
        their rotations need no turning), lit by the frames' light."""
        verts = self.flame(shape[None], expression, jaw=jaw, eyes=eyes, eyelids=eyelids)
        means = self.embedding.interpolate(verts) @ R.transpose(1, 2) + t[:, None, :]  # (B, N, 3)
        normals = F.normalize(self.embedding.interpolate(vertex_normals(verts, self.faces)), dim=-1)
        n_cam = torch.cat([torch.ones_like(normals[..., :1]), normals @ R.transpose(1, 2)], -1)  # (B,N,4)
        shade = torch.einsum("bnk,bck->bnc", n_cam, self.light.expand(len(frames), -1, -1)).clamp(min=0.0)
        colours = torch.sigmoid(self.colour_logit) * shade
        return [GaussianSet(m, torch.exp(self.log_scale), self.rotation, self.opacity, colors=c)
                for m, c in zip(means, colours)]


def refine_photometric(params: TrackParams, landmarks: LandmarkModel, obs: Observations,
                       images: FrameImages, assets: FlameAssets, fit_cfg: FitConfig, cfg: PhotometricConfig,
                       *, generator: torch.Generator | None = None, progress=None) -> dict[str, float]:
    """Refine ``params`` in place; returns the last photometric loss and the reprojection error."""
    device = params.translation.device
    head = SplatHead(assets, params.full_shape(), cfg.uv_size, params.n_frames)
    gaps = frame_gaps(obs.frame_numbers, device)
    h, w = obs.img_size
    s = images.images.shape[-2:]
    background = torch.ones(3, device=device)
    eye3, zero3 = torch.eye(3, device=device), torch.zeros(3, device=device)
    n = params.n_frames
    order_gen = generator or torch.Generator().manual_seed(0)

    rows = torch.arange(int(s[0]), device=device, dtype=torch.float32)
    chin = obs.landmarks[:, 8, 1] * (s[0] / h) + cfg.neck_margin * s[0]  # (N,) in photometric rows
    chin = torch.where(obs.valid, chin, torch.full_like(chin, float(s[0])))

    def above_chin(frames: Tensor) -> Tensor:
        """(B, 1, s, 1): 1 on the rows above each frame's chin (plus a margin), 0 below: the neck is left
        out, since the tracker turns it with the head (its pose is baked into the camera) and real necks
        do not follow."""
        return (rows[None, :] <= chin[frames, None]).to(rows)[:, None, :, None]

    def photo_loss(frames: Tensor) -> Tensor:
        R, t, K = params.cameras(obs.img_size)
        camera = Camera(eye3, zero3, resized_intrinsics(K, (h, w), (int(s[0]), int(s[1]))).detach(),
                        int(s[1]), int(s[0]))
        gs = head.gaussians(frames, params.full_shape(), params.full_expression()[frames], params.jaw[frames],
                            params.eyes[frames], params.eyelids[frames], R[frames], t[frames])
        target, weight = images.batch(frames)
        weight = weight * above_chin(frames)
        renders = torch.stack([render(camera, g, background).image for g in gs])
        return ((renders - target).abs() * weight).sum() / weight.sum().clamp(min=1.0) / 3.0

    # colours first: a grey head gives the geometry no useful gradient
    opt = torch.optim.Adam([head.colour_logit, head.light], lr=cfg.lr_colour)
    l1_start = None
    for _ in range(cfg.colour_steps):
        frames = torch.randint(n, (min(cfg.batch, n),), generator=order_gen).to(device)
        opt.zero_grad(set_to_none=True)
        loss = photo_loss(frames)
        loss.backward()
        opt.step()
        l1_start = loss.detach() if l1_start is None else l1_start
    # then everything; the landmark terms cover all frames every step, so every frame's parameters get
    # a real gradient (Adam's momentum never drifts frames outside the batch)
    kept = {"shape"} | (set() if cfg.nonrigid else {"expression", "jaw", "eyes", "eyelids"})
    per_frame = [p for name, p in params.named_parameters() if name not in kept]
    opt = torch.optim.Adam([{"params": per_frame, "lr": cfg.lr},
                            {"params": [params.shape], "lr": cfg.lr_shape},
                            {"params": [head.colour_logit, head.light], "lr": cfg.lr_colour}])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(cfg.steps * 0.6), int(cfg.steps * 0.85)], 0.3)
    photo = torch.zeros((), device=device)
    order = torch.randperm(n, generator=order_gen).to(device)
    at = 0
    for _ in range(cfg.steps):
        if at >= n:  # every frame once per pass, in a new order each pass
            order, at = torch.randperm(n, generator=order_gen).to(device), 0
        frames = order[at:at + cfg.batch]
        at += cfg.batch
        opt.zero_grad(set_to_none=True)
        photo = photo_loss(frames)
        lmk = reprojection_loss(landmarks(params, obs.img_size), obs, None, fit_cfg.robust_px)
        loss = (cfg.w_photo * photo + cfg.w_landmarks * lmk + regularisers(params, fit_cfg, gaps, h))
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(1)
    with torch.no_grad():
        pred = landmarks(params, obs.img_size)
        err = (pred[:, :68] - obs.landmarks).norm(dim=-1)
        seen = (obs.confidence[:, :68] > 0) & obs.valid[:, None]
    return {"photometric_l1_start": float(l1_start) if l1_start is not None else float("nan"),
            "photometric_l1": float(photo.detach()), "landmark_error_px": float(err[seen].mean())}
