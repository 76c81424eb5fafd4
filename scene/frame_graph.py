"""Whole-frame CUDA-graph captures: deformation *and* rasterizer in one replay (issue 13).

:mod:`scene.model.cuda_graphs` captures the deformation; the rasterizer could not join it while it read the
(tile, Gaussian) pair count back to the host to size its sort. With a fixed pair capacity (no host sync,
``diff_gaussian_rasterization.GaussianRasterizationSettings.pair_capacity``) a frame is one replay. This
module holds what such captures share and the inference one:

- :class:`StaticCamera`: a camera whose matrices live in fixed device buffers that each frame overwrites;
- :class:`PairBudget`: the pair capacity, grown when a frame needs more (its count is written on the device);
- :class:`FrameRenderGraph`: ``avatar.frame_gaussians`` + ``render`` without gradients, as render.py and
  evaluation use them: one replay and one sync a frame, or (``stream``) a sequence with one frame in flight;
  :func:`frame_renderer` picks it where it runs (:class:`FrameRenderer`, launch by launch, elsewhere).

CUDA only; the torch backend and the CPU keep the eager path.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor

from flame.condition import CONDITION_DIM
from gaussian_renderer import RenderOutput, render, resolve_backend
from scene.model.cuda_graphs import inference_deformer

GROWTH = 1.5  # capacity = GROWTH x the pairs the measuring frame needed
MIN_CAPACITY = 1 << 14
MAX_KEYS = 16  # more camera sizes / fields of view than this (per-frame intrinsics): render eagerly
T = TypeVar("T")


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


SLOTS = 2  # captures of the frame: stream() renders into one while the frame before waits in the other


class _Queued(NamedTuple):
    """A frame replayed (or queued) in ``slot``, not yet checked: what it needs to be rendered again."""
    tag: object
    condition: Tensor
    camera: object
    key: tuple
    slot: int


class FrameRenderGraph:
    """``avatar.frame_gaussians(condition, camera)`` + ``render`` (no gradients) as one CUDA-graph replay.

    ``fn(condition, camera) -> RenderOutput`` (its tensors overwritten by the next call) copies the condition
    and camera into the capture's buffers, replays, and waits for the frame: the pair count it needed comes
    back with it, and a frame that needed more than the capacity is rendered again after a capture with
    room for it, so every returned image is exact. :meth:`stream` renders a sequence the same way with one
    frame in flight (the next frame is queued before the last one's count is read), so the GPU does not
    wait on the host between frames. A camera of another size or field of view, or a new SH degree, is
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
        self._host_counts = torch.zeros(SLOTS, dtype=torch.int32, pin_memory=True)
        self._done = [torch.cuda.Event() for _ in range(SLOTS)]
        self.camera: StaticCamera | None = None
        self.graphs: list[torch.cuda.CUDAGraph] = []  # one per slot, each with its own outputs
        self.outs: list[RenderOutput] = []
        self.key: tuple | None = None
        self.captures = 0
        self.key_changes = 0  # captures for a new key (not for more pairs)
        self.eager = False  # too many keys: deformation + render, launched op by op

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        """The first slot's capture (what a single call replays)."""
        return self.graphs[0] if self.graphs else None

    def _frame(self, capacity: int) -> RenderOutput:
        gaussians = self.avatar.frame_gaussians(self.condition, self.camera)
        return render(self.camera, gaussians, self.background, backend=self.backend, pair_capacity=capacity,
                      pair_count=self.budget.count)

    @contextmanager
    def _sh_degree_of(self, key: tuple) -> Iterator[None]:
        """The avatar at ``key``'s SH degree meanwhile: a frame captured again after the caller moved the
        degree on (the next item of a stream is read before the frame in flight is checked) keeps its own."""
        gs = self.avatar.gaussians
        degree, gs.active_sh_degree = gs.active_sh_degree, key[-1]
        try:
            yield
        finally:
            gs.active_sh_degree = degree

    @torch.no_grad()
    def _capture(self, key: tuple, camera, needed: int | None) -> None:
        """Capture every slot for ``key`` with room for ``needed`` pairs (None: measure the loaded frame's).
        Both at once, where the caller set up (render.py captures on its first frame, before its frames are
        read ahead on other threads, whose CUDA calls a capture in progress would refuse)."""
        self.graphs, self.outs = [], []  # free the previous captures' pools first
        self.camera = StaticCamera(camera, self.device, self.packed[CONDITION_DIM:])
        self.key = key
        with self._sh_degree_of(key):
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
            for slot in range(SLOTS):
                self._capture_slot(slot)
        self.captures += 1

    def _capture_slot(self, slot: int) -> None:
        """Capture ``slot`` (the next one) for the current key and capacity, in its own memory pool: a slot's
        outputs must outlive the other slot's replays (a shared pool would hand one slot's outputs to the
        other's intermediates)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._frame(self.budget.capacity)
            self._host_counts[slot:slot + 1].copy_(self.budget.count, non_blocking=True)
        self.graphs.append(graph)
        self.outs.append(out)

    def _key(self, camera) -> tuple:
        """What the captures fix for ``camera``; past MAX_KEYS changes, switches to the eager path."""
        key = StaticCamera.key(camera) + (self.avatar.gaussians.active_sh_degree,)
        if key != self.key and not self.eager:
            self.key_changes += 1
            if self.key_changes > MAX_KEYS:  # a capture per camera would cost more than it saves
                self.eager = True
                warnings.warn(f"FrameRenderGraph: the camera (size, field of view) or SH degree changed more "
                              f"than {MAX_KEYS} times; rendering without a CUDA graph from here on",
                              stacklevel=3)
        return key

    def _eager(self, condition: Tensor, camera) -> RenderOutput:
        self.graphs, self.outs = [], []  # nothing replays from here on (any frame in flight is handed out)
        return render(camera, self.avatar.frame_gaussians(condition, camera), self.background,
                      backend=self.backend)

    def _replay(self, slot: int, key: tuple, condition: Tensor, camera) -> None:
        """Load the frame's inputs and queue its replay in ``slot`` (a capture first for a new key)."""
        torch.cat([self.avatar.condition_on_device(condition).reshape(-1), *StaticCamera.values(camera)],
                  out=self.packed)
        if key != self.key:
            self._capture(key, camera, None)
        self.graphs[slot].replay()
        self._done[slot].record()

    def _needed(self, slot: int) -> int:
        """The pairs the last replay in ``slot`` needed (waits for it)."""
        self._done[slot].synchronize()
        return int(self._host_counts[slot])

    def _checked(self, frame: _Queued, after: _Queued | None = None) -> RenderOutput:
        """``frame``'s output, rendered again with a capture with room where its pairs did not fit; ``after``
        (queued behind it with the same capture) is then queued again too."""
        needed = self._needed(frame.slot)
        if needed > self.budget.capacity:  # pairs were dropped: make room and render the frame again
            if after is not None:
                needed = max(needed, self._needed(after.slot))
            self._capture(frame.key, frame.camera, needed)  # both frames are done: their pools can go
            self._replay(frame.slot, frame.key, frame.condition, frame.camera)
            if after is not None:
                self._replay(after.slot, after.key, after.condition, after.camera)
        return self.outs[frame.slot]

    @torch.no_grad()
    def __call__(self, condition: Tensor, camera) -> RenderOutput:
        key = self._key(camera)
        if self.eager:
            return self._eager(condition, camera)
        self._replay(0, key, condition, camera)
        return self._checked(_Queued(None, condition, camera, key, 0))

    @torch.no_grad()
    def stream(self, frames: Iterable[tuple[T, Tensor, object]]) -> Iterator[tuple[T, RenderOutput]]:
        """``(tag, condition, camera)`` items -> ``(tag, output)`` in order, the same exact images as calls
        give, with the next frame queued before each is handed out. An output stays valid until the
        iterator is advanced (the work the caller queues on the current stream meanwhile is ordered before
        the next replay into its slot). The next item is taken before the frame in flight is checked: a
        change of SH degree there is seen (the frame keeps its own), a change of weights is not (a frame
        rendered again for want of room would take the new ones)."""
        queued: _Queued | None = None
        for tag, condition, camera in frames:
            key = self._key(camera)
            if queued is not None and (self.eager or key != self.key):
                # a new capture (or the eager path) frees the captures' outputs: hand out the one queued first
                yield queued.tag, self._checked(queued)
                queued = None
            if self.eager:
                yield tag, self._eager(condition, camera)
                continue
            frame = _Queued(tag, condition, camera, key, 0 if queued is None else 1 - queued.slot)
            self._replay(frame.slot, key, condition, camera)
            if queued is not None:
                yield queued.tag, self._checked(queued, after=frame)
            queued = frame
        if queued is not None:
            yield queued.tag, self._checked(queued)


class FrameRenderer:
    """``deform(condition, camera)`` then ``render``, op by op (or the deformation CUDA-graphed): the
    interface of :class:`FrameRenderGraph` where a whole-frame capture does not apply."""

    def __init__(self, deform: Callable, background: Tensor, backend: str | None = None) -> None:
        self.deform, self.background, self.backend = deform, background, backend

    def __call__(self, condition: Tensor, camera) -> RenderOutput:
        gaussians, _ = self.deform(condition, camera)
        return render(camera, gaussians, self.background, backend=self.backend)

    def stream(self, frames: Iterable[tuple[T, Tensor, object]]) -> Iterator[tuple[T, RenderOutput]]:
        """``(tag, condition, camera)`` items -> ``(tag, output)``, frame by frame (nothing waits here)."""
        for tag, condition, camera in frames:
            yield tag, self(condition, camera)


def frame_renderer(avatar, background: Tensor, backend: str | None = None,
                   use_graph: bool = True) -> FrameRenderGraph | FrameRenderer:
    """The fastest gradient-free ``fn(condition, camera) -> RenderOutput`` here (with ``fn.stream`` for a
    sequence): :class:`FrameRenderGraph` with CUDA graphs on the CUDA rasterizer, else the deformation
    (CUDA-graphed on CUDA unless ``use_graph`` is False) and ``render``. Outputs may be overwritten by the
    next call."""
    on_cuda = avatar.device.type == "cuda"
    if use_graph and on_cuda and resolve_backend(backend, True) == "cuda":
        return FrameRenderGraph(avatar, background, backend)
    return FrameRenderer(inference_deformer(avatar, use_graph), background, backend)
