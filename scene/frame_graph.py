"""Whole-frame CUDA-graph captures: deformation *and* rasterizer in one replay (issue 13).

:mod:`scene.model.cuda_graphs` captures the deformation; the rasterizer could not join it while it read the
(tile, Gaussian) pair count back to the host to size its sort. With a fixed pair capacity (no host sync,
``diff_gaussian_rasterization.GaussianRasterizationSettings.pair_capacity``) a frame is one replay. This
module holds what such captures share and the inference one:

- :class:`StaticCamera`: a camera whose matrices live in fixed device buffers that each frame overwrites;
- :class:`PairBudget`: the pair capacity, grown when a frame needs more (its count is written on the device);
- :class:`FrameRenderGraph`: ``avatar.frame_gaussians`` + ``render`` without gradients, as render.py and
  evaluation use them, one replay and one sync a frame; :func:`frame_renderer` picks it where it runs.

CUDA only; the torch backend and the CPU keep the eager path.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from flame.condition import CONDITION_DIM
from gaussian_renderer import RenderOutput, render, resolve_backend
from scene.model.cuda_graphs import inference_deformer

GROWTH = 1.5  # capacity = GROWTH x the pairs the measuring frame needed
MIN_CAPACITY = 1 << 14
MAX_KEYS = 16  # more camera sizes / fields of view than this (per-frame intrinsics): render eagerly


class StaticCamera:
    """Stands in for a ``Camera`` inside captures: the host constants of the capture (image size, field of
    view) and device buffers for the per-frame matrices and centre, which :meth:`load` overwrites."""

    SIZE = 35  # floats: view (16), full projection (16), centre (3)

    def __init__(self, camera, device: torch.device, storage: Tensor | None = None,
                 load: bool = True) -> None:
        """``storage``: SIZE float32 device values to hold the buffers (a view of a larger packed input,
        so that one copy loads a frame), else their own. ``load=False``: ``storage`` already holds the
        values (a row gathered inside a capture)."""
        self.image_width, self.image_height = int(camera.image_width), int(camera.image_height)
        self.tanfovx, self.tanfovy = float(camera.tanfovx), float(camera.tanfovy)
        self.storage = torch.zeros(self.SIZE, device=device) if storage is None else storage
        self.world_view_transform = self.storage[:16].view(4, 4)
        self.full_proj_transform = self.storage[16:32].view(4, 4)
        self.camera_center = self.storage[32:]
        if load:
            self.load(camera)

    @staticmethod
    def key(camera) -> tuple:
        """What a capture bakes in: a camera with another key needs another capture."""
        return int(camera.image_width), int(camera.image_height), float(camera.tanfovx), float(camera.tanfovy)

    @staticmethod
    def values(camera) -> list[Tensor]:
        """``camera``'s per-frame values, flat, in the buffers' order."""
        return [camera.world_view_transform.reshape(-1), camera.full_proj_transform.reshape(-1),
                camera.camera_center.reshape(-1)]

    def load(self, camera) -> None:
        """Copy ``camera``'s matrices and centre into the buffers (one device copy, no sync)."""
        torch.cat(self.values(camera), out=self.storage)


class PairBudget:
    """The pair list's capacity for captured rasterizer calls, and the device counters they write:
    ``count`` (the last frame's pairs) and ``peak`` (the most since :meth:`reset_peak`)."""

    def __init__(self, device: torch.device) -> None:
        self.capacity = 0
        self.count = torch.zeros(1, dtype=torch.int32, device=device)
        self.peak = torch.zeros(1, dtype=torch.int32, device=device)

    def size_for(self, needed: int) -> int:
        """Set (and return) the capacity for frames needing about ``needed`` pairs."""
        self.capacity = max(MIN_CAPACITY, math.ceil(GROWTH * needed))
        return self.capacity

    def track_peak(self) -> None:
        """peak = max(peak, count), on the device (inside a capture: every replay)."""
        torch.maximum(self.peak, self.count, out=self.peak)

    def reset_peak(self) -> None:
        self.peak.zero_()


class FrameRenderGraph:
    """``avatar.frame_gaussians(condition, camera)`` + ``render`` (no gradients) as one CUDA-graph replay ->
    ``fn(condition, camera) -> RenderOutput`` whose tensors are overwritten by the next call.

    Each call copies the condition and camera into the capture's buffers, replays, and waits for the frame
    (the caller reads it anyway; inference is timed synced): the pair count it needed comes back with it,
    and a frame that needed more than the capacity is rendered again after a capture with room for it, so
    every returned image is exact. A camera of another size or field of view, or a new SH degree, is
    captured anew. Parameters are read in place (weight swaps and ``load_state_dict`` are seen)."""

    def __init__(self, avatar, background: Tensor, backend: str | None = None) -> None:
        if avatar.device.type != "cuda":
            raise RuntimeError("FrameRenderGraph needs the avatar on a CUDA device; on CPU use avatar.deform "
                               "and render")
        self.avatar = avatar
        self.device = avatar.device
        self.backend = backend
        self.background = background.reshape(3).to(self.device, torch.float32).clone()
        # the frame's inputs, packed so that one copy loads them: condition, then the camera's values
        self.packed = torch.zeros(CONDITION_DIM + StaticCamera.SIZE, device=self.device)
        self.condition = self.packed[:CONDITION_DIM]
        self.budget = PairBudget(self.device)
        self._host_count = torch.zeros(1, dtype=torch.int32, pin_memory=True)
        self.camera: StaticCamera | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.out: RenderOutput | None = None
        self.captures = 0
        self.key_changes = 0  # captures for a new key (not for more pairs)
        self.eager = False  # too many keys: deformation + render, launched op by op

    def _frame(self, capacity: int) -> RenderOutput:
        gaussians = self.avatar.frame_gaussians(self.condition, self.camera)
        return render(self.camera, gaussians, self.background, backend=self.backend, pair_capacity=capacity,
                      pair_count=self.budget.count)

    @torch.no_grad()
    def _capture(self, key: tuple, camera, needed: int | None) -> None:
        self.graph = self.out = None  # free the previous capture's pool first
        self.camera = StaticCamera(camera, self.device, self.packed[CONDITION_DIM:])
        self.key = key
        if needed is None:  # measure this frame's pairs with a fixed-capacity call (no exact-list sync)
            self._frame(1)
            needed = int(self.budget.count)
        capacity = self.budget.size_for(needed)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm up allocations and lazy initialisation outside the capture
                self._frame(capacity)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self._frame(capacity)
            self._host_count.copy_(self.budget.count, non_blocking=True)
        self.graph = graph
        self.captures += 1

    @torch.no_grad()
    def __call__(self, condition: Tensor, camera) -> RenderOutput:
        key = StaticCamera.key(camera) + (self.avatar.gaussians.active_sh_degree,)
        if key != self.key and not self.eager:
            self.key_changes += 1
            if self.key_changes > MAX_KEYS:  # a capture per camera would cost more than it saves
                self.eager, self.graph, self.out = True, None, None
                warnings.warn(f"FrameRenderGraph: the camera (size, field of view) or SH degree changed more "
                              f"than {MAX_KEYS} times; rendering without a CUDA graph from here on",
                              stacklevel=2)
        if self.eager:
            gaussians = self.avatar.frame_gaussians(condition, camera)
            return render(camera, gaussians, self.background, backend=self.backend)
        inputs = [self.avatar.condition_on_device(condition).reshape(-1), *StaticCamera.values(camera)]
        torch.cat(inputs, out=self.packed)
        if key != self.key:
            self._capture(key, camera, None)
        self.graph.replay()
        torch.cuda.current_stream(self.device).synchronize()
        needed = int(self._host_count[0])
        if needed > self.budget.capacity:  # pairs were dropped: make room and render the frame again
            self._capture(key, camera, needed)
            self.graph.replay()
            torch.cuda.current_stream(self.device).synchronize()
        return self.out


def frame_renderer(avatar, background: Tensor, backend: str | None = None,
                   use_graph: bool = True) -> Callable[[Tensor, object], RenderOutput]:
    """The fastest gradient-free ``fn(condition, camera) -> RenderOutput`` here: :class:`FrameRenderGraph`
    with CUDA graphs on the CUDA rasterizer, else the deformation (CUDA-graphed on CUDA unless
    ``use_graph`` is False) and ``render``. Outputs may be overwritten by the next call."""
    on_cuda = avatar.device.type == "cuda"
    if use_graph and on_cuda and resolve_backend(backend, True) == "cuda":
        return FrameRenderGraph(avatar, background, backend)
    deform = inference_deformer(avatar, use_graph)

    def run(condition: Tensor, camera) -> RenderOutput:
        gaussians, _ = deform(condition, camera)
        return render(camera, gaussians, background, backend=backend)

    return run
