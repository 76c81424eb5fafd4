"""CUDA-graph captures of an avatar's per-frame deformation, for rendering and for training.

The per-frame chain (FLAME, embedding, MLP, heads, compose) is a few hundred tiny kernels each way, so
eager execution waits on kernel launches; replaying one captured graph removes that. Two forms:

- :func:`inference_graph`: the deformation without gradients (rendering, evaluation);
- :func:`training_graph`: forward and backward each one replay (``torch.cuda.make_graphed_callables``);
  autograd runs the captured backward and accumulates the parameters' gradients as usual.

Both return functions whose outputs are static buffers overwritten by the next call. Parameters are
read in place, so optimiser updates and ``load_state_dict`` are seen; re-capture after changing the
model's structure. CUDA only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from flame.condition import CONDITION_DIM
from gaussian_renderer.types import GaussianSet

if TYPE_CHECKING:  # pragma: no cover
    from scene.model.avatar import Avatar, DeformExtras


@dataclass
class _CameraCentre:
    """Stands in for a camera inside graph captures: only ``camera_center`` is read by ``deform``."""

    camera_center: Tensor


class _DeformAsTensors(nn.Module):
    """``Avatar.deform`` as a module over tensors (condition[, camera centre]) -> (means, scales,
    rotations, opacities, SH or colours[, base positions, normals]): the form ``make_graphed_callables``
    captures; its parameters are the avatar's. ``with_surface`` adds :meth:`Avatar.surface_of` (no
    gradients) for the surface priors, computed inside the capture."""

    def __init__(self, avatar: Avatar, with_surface: bool = False) -> None:
        super().__init__()
        self.avatar = avatar
        self.with_surface = with_surface

    def forward(self, condition: Tensor, centre: Tensor | None = None) -> tuple[Tensor, ...]:
        gs, extras = self.avatar.deform(condition, None if centre is None else _CameraCentre(centre))
        colour = gs.colors if gs.colors is not None else gs.shs
        surface = self.avatar.surface_of(extras) if self.with_surface else ()
        return (gs.means, gs.scales, gs.rotations, gs.opacities, colour, *surface)


def _require_cuda(avatar: Avatar, what: str) -> None:
    if avatar.device.type != "cuda":
        raise RuntimeError(f"{what} needs the avatar on a CUDA device; on CPU use Avatar.deform")


def _camera_centre(avatar: Avatar, camera) -> Tensor:
    if camera is None:
        raise ValueError("this avatar is camera-conditioned (--camera_conditioning): pass the camera")
    return camera.camera_center.to(device=avatar.device, dtype=torch.float32).reshape(3)


def inference_graph(avatar: Avatar) -> Callable[..., tuple[GaussianSet, DeformExtras]]:
    """A CUDA-graph replay of ``avatar.deform`` without gradients -> ``fn(condition, camera=None) ->
    (GaussianSet, DeformExtras)``, the same values as ``deform`` under ``torch.no_grad()``. Use (render)
    the outputs before the next call, or clone them."""
    _require_cuda(avatar, "inference_graph")
    static_cond = torch.zeros(CONDITION_DIM, device=avatar.device, dtype=avatar.dtype)
    static_centre = _CameraCentre(torch.zeros(3, device=avatar.device, dtype=torch.float32))
    camera_arg = static_centre if avatar.config.camera_conditioning else None
    side = torch.cuda.Stream(avatar.device)
    side.wait_stream(torch.cuda.current_stream(avatar.device))
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):  # warm up allocations and lazy initialisation outside the capture
            avatar.deform(static_cond, camera_arg)
    torch.cuda.current_stream(avatar.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_gs, static_extras = avatar.deform(static_cond, camera_arg)

    def run(condition: Tensor, camera=None) -> tuple[GaussianSet, DeformExtras]:
        static_cond.copy_(condition.reshape(-1), non_blocking=True)
        if camera_arg is not None:
            static_centre.camera_center.copy_(_camera_centre(avatar, camera), non_blocking=True)
        graph.replay()
        gs = GaussianSet(static_gs.means, static_gs.scales, static_gs.rotations, static_gs.opacities,
                         shs=static_gs.shs, colors=static_gs.colors,
                         sh_degree=avatar.gaussians.active_sh_degree)
        return gs, static_extras

    run.graph = graph  # keep the graph (and its memory pool) alive with the function
    return run


Surface = tuple[Tensor, Tensor]  # (base positions (N,3), unit triangle normals (N,3)), no gradients


def training_graph(avatar: Avatar, sample_condition: Tensor, sample_camera=None,
                   with_surface: bool = False) -> Callable[..., tuple[GaussianSet, Surface | None]]:
    """``avatar.deform`` for training with its forward and its backward each one CUDA-graph replay ->
    ``fn(condition, camera=None) -> (GaussianSet, surface)``, the surface (:meth:`Avatar.surface_of`)
    computed in the same replay when ``with_surface``, else None. Finish each step's backward before the
    next call (as a training loop does); parameters must keep their storage (in-place optimiser updates
    and ``load_state_dict`` do). ``sample_*``: a real frame's values for the warm-up runs."""
    _require_cuda(avatar, "training_graph")
    colours = avatar.config.conditional_appearance
    with_centre = avatar.config.camera_conditioning
    module = _DeformAsTensors(avatar, with_surface)
    args: tuple[Tensor, ...] = (avatar.condition_on_device(sample_condition).clone(),)
    if with_centre:
        args += (_camera_centre(avatar, sample_camera).clone(),)
    # The warm-up and capture run on torch's side streams and create the parameters' AccumulateGrad
    # nodes there; the captured outputs keep them alive, so backward passes on another stream add a
    # GPU-side stream wait, and torch warns about the mismatch where it first sees it (here, at the
    # capture). Harmless (no host sync; the step times in bench/NOTES.md include it): keep it out of
    # users' logs, for this capture only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
        graphed = torch.cuda.make_graphed_callables(module, args, allow_unused_input=True)

    def run(condition: Tensor, camera=None) -> tuple[GaussianSet, Surface | None]:
        inputs: tuple[Tensor, ...] = (avatar.condition_on_device(condition),)
        if with_centre:
            inputs += (_camera_centre(avatar, camera),)
        means, scales, rotations, opacities, colour, *surface = graphed(*inputs)
        gs = GaussianSet(means, scales, rotations, opacities, shs=None if colours else colour,
                         colors=colour if colours else None, sh_degree=avatar.gaussians.active_sh_degree)
        # the graphed function marks every output as differentiable; the surface carries no gradient
        return gs, (surface[0].detach(), surface[1].detach()) if with_surface else None

    run.module = graphed  # keep the graphs (and their memory pools) alive with the function
    return run


def inference_deformer(avatar: Avatar, use_graph: bool = True) -> Callable[..., tuple[GaussianSet,
                                                                                     DeformExtras]]:
    """The fastest gradient-free per-frame deformation here: :func:`inference_graph` on CUDA (unless
    ``use_graph`` is False), else ``avatar.deform``. Call under ``torch.no_grad()``."""
    return inference_graph(avatar) if use_graph and avatar.device.type == "cuda" else avatar.deform
