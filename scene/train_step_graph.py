"""One training iteration -- loss, backward and both Adam steps -- as one CUDA-graph replay (issue 13).

Captured pieces (the deformation, LPIPS) still left the host launching the rasterizer, the loss, the
optimisers and the glue between them, a few hundred launches a step, and the rasterizer's pair-count read
made the host wait for the GPU once a step. With the rasterizer's fixed pair capacity
(:class:`scene.frame_graph.PairBudget`) the whole iteration is captured: each step copies the frame into
the capture's buffers and replays, and the host runs ahead of the GPU. When the subject's frames are cached
on the device the capture starts from the frame's index instead (a device scalar): picking the frame's
uint8 image, masks, condition and camera and compositing the ground truth are part of the replay, so a step
is one fill and one replay, with no frame built on the host (:meth:`TrainStepGraph.replay_index`).

What a capture bakes in -- the SH degree, whether the LPIPS term is on, the camera's size and field of view,
the image shape -- is its key; a step with another key runs eagerly (exactly as the uncaptured loop, with an
exact pair list that measures the frame's pairs) for :data:`WARMUP_STEPS` iterations and then captures
anew. A 30k-iteration run captures five times (SH degrees 0-3, then LPIPS). The pair counts the replays
needed are tracked on the device; :meth:`TrainStepGraph.check_pairs` (at the loop's logging steps, a host
sync anyway) grows the capacity when a frame needed more than it, and says how many steps ran short.
"""

from __future__ import annotations

import warnings

import torch

from scene.data.subject import FrameData
from scene.frame_graph import PairBudget, StaticCamera
from utils.losses import LossTerms

WARMUP_STEPS = 2  # eager iterations (on a side stream) before each capture: allocator, cuBLAS, Adam state
MAX_CAPTURES = 50  # more than this many keys means the frames differ in what a capture bakes in: go eager


class TrainStepGraph:
    """``fn(it, frame) -> (LossTerms, render)``: training iteration ``it`` on ``frame`` (loss, backward,
    both optimiser steps), replayed from a capture when its key matches. The returned tensors are the
    capture's outputs, overwritten by the next step. The optimisers are made capturable (their step
    counts live on the device: same updates)."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.device = trainer.device
        self.budget = PairBudget(self.device)
        self.optimizers = trainer.optimizers
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["capturable"] = True
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.frame: FrameData | None = None  # the capture's input buffers
        self.outputs: tuple[LossTerms, torch.Tensor] | None = None
        self.warm = 0
        self.needed = 0  # the most pairs a warm-up step needed since the last capture
        self.captures = 0
        self.disabled: str | None = None
        self.side = torch.cuda.Stream(self.device)
        subject = trainer.subject
        self.gathers = subject.frames_on_device()  # the capture picks its frame by a device index
        if self.gathers:
            self.index = torch.zeros(1, dtype=torch.long, device=self.device)
            self.camera_table = torch.stack([  # every frame's camera values, in StaticCamera's order
                torch.cat(StaticCamera.values(subject.camera(i))).to(self.device, torch.float32)
                for i in range(len(subject))])

    def key_of(self, it: int, frame: FrameData) -> tuple:
        return self._key(it, frame.camera, tuple(frame.image.shape))

    def _key(self, it: int, camera, image_shape: tuple) -> tuple:
        lpips_on = self.trainer.perceptual_active(it)
        return StaticCamera.key(camera) + (image_shape, self.trainer.avatar.gaussians.active_sh_degree,
                                           lpips_on)

    def replay_index(self, it: int, index: int) -> tuple[LossTerms, torch.Tensor] | None:
        """Iteration ``it`` on frame ``index`` as one fill and one replay, when the current capture picks
        its frame by index and ``it``'s key matches it; else None (the caller builds the frame and calls
        this object). No frame is built on the host."""
        if self.disabled is not None or not self.gathers or self.graph is None:
            return None
        subject = self.trainer.subject
        if self._key(it, subject.camera(index), (3, *subject.img_size)) != self.key:
            return None
        self.index.fill_(index)
        self.graph.replay()
        return self.outputs

    def __call__(self, it: int, frame: FrameData) -> tuple[LossTerms, torch.Tensor]:
        key = self.key_of(it, frame)
        if self.disabled is not None:
            return self.trainer.eager_step(it, frame)
        if key != self.key:
            if self.warm < WARMUP_STEPS:
                return self._warm_up(it, frame)
            if self.captures >= MAX_CAPTURES:
                self.disabled = (f"{self.captures} captures: the frames differ in camera size or field of "
                                 "view, which each capture fixes")
                warnings.warn(f"whole-step CUDA graphs turned off ({self.disabled}); training eagerly",
                              stacklevel=2)
                return self.trainer.eager_step(it, frame)
            try:
                self._capture(key, it, frame)
            except RuntimeError as exc:  # a capture this torch/driver refuses: train eagerly, slower
                self.disabled = f"the capture failed: {exc}"
                self.graph = self.outputs = self.frame = None
                self._zero_grad()
                warnings.warn(f"whole-step CUDA graph: {self.disabled}; training eagerly (slower). "
                              "--graph_scope parts captures only the deformation and LPIPS", stacklevel=2)
                return self.trainer.eager_step(it, frame)
        self._load(frame)
        self.graph.replay()
        return self.outputs

    def _zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def _warm_up(self, it: int, frame: FrameData) -> tuple[LossTerms, torch.Tensor]:
        """A real, eager iteration on the side stream (an exact pair list; its count is measured)."""
        self.graph = self.outputs = self.frame = None  # the old capture's pool goes back
        self._zero_grad()  # gradients that a capture left in place would be accumulated into
        self.warm += 1
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            out = self.trainer.eager_step(it, frame, pairs=self.budget, exact=True)
            self.budget.track_peak()
        current.wait_stream(self.side)
        return out

    def _capture(self, key: tuple, it: int, frame: FrameData) -> None:
        needed = max(int(self.budget.peak), int(self.budget.count))  # one sync, once per capture
        self.budget.size_for(needed)
        self.budget.reset_peak()
        if self.gathers:
            self.frame = None
            self.index.fill_(frame.index)
        else:
            self.frame = FrameData(frame.index, frame.frame_id, frame.image.clone(), frame.head_mask.clone(),
                                   frame.mouth_mask.clone(), StaticCamera(frame.camera, self.device),
                                   self.trainer.avatar.condition_on_device(frame.condition).clone(),
                                   coverage=frame.coverage.clone())
        self._zero_grad()  # the capture's backward assigns the gradients (graph memory), never accumulates
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = self.frame if self.frame is not None else self._gathered(frame)
            terms, img = self.trainer.loss(it, static, pairs=self.budget)
            terms.total.backward()
            for opt in self.optimizers:
                opt.step()
            self.budget.track_peak()
        # detached: the captured autograd graph (and its gradient accumulators, made on the capture's
        # stream) is not kept alive by the outputs, so later eager steps make their own
        self.graph, self.key, self.outputs = graph, key, (terms.detached(), img.detach())
        self.warm = 0
        self.captures += 1

    def _gathered(self, frame: FrameData) -> FrameData:
        """(In the capture) the frame :attr:`index` names, picked and composited on the device."""
        row = self.camera_table.index_select(0, self.index)[0]
        camera = StaticCamera(frame.camera, self.device, storage=row, load=False)
        template = FrameData(frame.index, frame.frame_id, None, None, None, camera, frame.condition)
        return self.trainer.subject.gather_frame(self.index, template)

    def _load(self, frame: FrameData) -> None:
        if self.gathers:
            self.index.fill_(frame.index)
            return
        f = self.frame
        for dst, src in ((f.image, frame.image), (f.head_mask, frame.head_mask),
                         (f.mouth_mask, frame.mouth_mask), (f.coverage, frame.coverage)):
            dst.copy_(src, non_blocking=True)
        f.condition.copy_(self.trainer.avatar.condition_on_device(frame.condition).reshape(-1),
                          non_blocking=True)
        f.camera.load(frame.camera)

    def check_pairs(self) -> int:
        """At a host sync: 0 when every replay since the last check had room for its pairs; else the most
        pairs one needed, and the next step captures anew with room for it (after its warm-up)."""
        if self.graph is None:
            return 0
        peak = int(self.budget.peak)
        if peak <= self.budget.capacity:
            return 0
        self.key = None  # re-capture, sized by the peak
        return peak
