"""The avatar of one subject: shaped FLAME + Gaussians on its surface + deformation model + parameters.

Everything that depends only on the subject (the identity part of FLAME, the canonical mesh, the UV
embedding, the positional encoding) is computed once in the constructor. The per-frame path
:meth:`Avatar.deform` is a straight chain of tensor ops on the avatar's device: no host syncs, no
``.item()``, nothing per subject recomputed.

Per frame (SPEC sections 3-6): condition (120) -> FLAME(expression, jaw, eyes, eyelids) -> posed mesh
-> base positions (embedding barycentrics) -> deformation heads on (encoding, condition) ->
:meth:`GaussianModel.compose` -> :class:`GaussianSet`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from gaussian_renderer.types import GaussianSet
from scene.deformation import CONDITION_DIM, DeformationModel, DeformationOutput, unit_view_directions
from scene.embedding import Embedding
from scene.gaussians import GaussianModel

if TYPE_CHECKING:  # pragma: no cover
    from flame.assets import FlameAssets
    from scene.cameras import Camera

# condition layout (SPEC section 4): expression 100, jaw 6, eyes 12, eyelids 2
_EXPR, _JAW, _EYES, _LIDS = slice(0, 100), slice(100, 106), slice(106, 118), slice(118, 120)

MODEL_OPTION_FIELDS = ("ours", "latent_dim", "hidden_dim", "hidden_layers", "uv_size",
                       "conditional_appearance", "camera_conditioning")


@dataclass(frozen=True)
class AvatarConfig:
    """What fixes the avatar's architecture and parameter sizes (recorded in checkpoints).

    The first seven fields mirror ``utils.options.ModelOptions``; ``max_sh_degree`` is the SH degree of
    the colour parameters (3)."""

    ours: bool = False
    latent_dim: int = 32
    hidden_dim: int = 256
    hidden_layers: int = 6
    uv_size: int = 128
    conditional_appearance: bool = False
    camera_conditioning: bool = False
    max_sh_degree: int = 3

    @classmethod
    def from_options(cls, options: Any) -> AvatarConfig:
        """From ``utils.options.ModelOptions`` (or any object / dict with the same fields)."""
        if isinstance(options, AvatarConfig):
            return options
        get = options.get if isinstance(options, dict) else (lambda k, d=None: getattr(options, k, d))
        kw = {f.name: get(f.name) for f in fields(cls) if get(f.name) is not None}
        return cls(**kw)

    @property
    def method(self) -> str:
        return "ours" if self.ours else "baseline"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DeformExtras:
    """What ``Avatar.deform`` returns beside the Gaussians: ``base_positions`` (N,3) on the posed mesh,
    ``uncertainty`` (N,) (HyperGaussians; None for the baseline), the raw ``deformation`` outputs and
    the posed FLAME ``vertices`` (V,3). Also readable as a mapping (``extras["uncertainty"]``)."""

    base_positions: Tensor
    uncertainty: Tensor | None
    deformation: DeformationOutput
    vertices: Tensor

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


@dataclass
class _CameraCentre:
    """Stands in for a Camera inside graph captures: only ``camera_center`` is read by ``deform``."""

    camera_center: Tensor


class _DeformAsTensors(nn.Module):
    """``Avatar.deform`` as a module over tensors (condition[, camera centre]) -> (means, scales,
    rotations, opacities, SH or colours): the form ``torch.cuda.make_graphed_callables`` captures; its
    parameters are the avatar's."""

    def __init__(self, avatar: Avatar) -> None:
        super().__init__()
        self.avatar = avatar

    def forward(self, condition: Tensor, centre: Tensor | None = None) -> tuple[Tensor, ...]:
        gs, _ = self.avatar.deform(condition, None if centre is None else _CameraCentre(centre))
        colour = gs.colors if gs.colors is not None else gs.shs
        return gs.means, gs.scales, gs.rotations, gs.opacities, colour


class Avatar(nn.Module):
    """One subject's avatar. Build once with :meth:`Avatar.build` (or the constructor), then per frame
    ``gaussians, extras = avatar.deform(condition, camera)``.

    Submodules: ``flame`` (``ShapedFLAME``, no persistent state), ``deformation``
    (:class:`DeformationModel`), ``gaussians`` (:class:`GaussianModel`); ``embedding`` (the per-subject
    :class:`Embedding`, moved along with the module) and the ``encoding`` buffer (N,51).
    """

    def __init__(self, assets: FlameAssets, shape: Tensor, options: Any = None, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> None:
        super().__init__()
        from flame.model import FLAME  # here, so that the scene package imports without flame/ built

        self.config = AvatarConfig.from_options(options if options is not None else AvatarConfig())
        cfg = self.config
        device = torch.device(device)
        shape = torch.as_tensor(shape, dtype=torch.float64).reshape(-1)
        flame = FLAME(assets, dtype=dtype).to(device)
        self.flame = flame.for_shape(shape.to(device=device, dtype=dtype))
        with torch.no_grad():
            canonical = self.flame(torch.zeros(1, 100, dtype=dtype, device=device))[0]
        self.register_buffer("canonical_vertices", canonical, persistent=False)
        # Global rotation and neck stay identity (tracking bakes them into the camera); passing them as
        # device tensors made once avoids FLAME building them from host data every frame (a host sync).
        self.register_buffer("_identity6d", torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]], dtype=dtype,
                                                         device=device), persistent=False)
        if "boundary" not in assets.masks:
            raise ValueError(f"FLAME masks in {assets.flame_dir} have no 'boundary' key (the neck ring): "
                             "the FLAME_masks.pkl file is incomplete")
        self.embedding = Embedding.build(assets.uv_mesh, canonical.detach().cpu(), assets.masks["boundary"],
                                         uv_size=cfg.uv_size, seed=seed, faces=assets.faces).to(device)
        n = self.embedding.count
        if n == 0:
            raise ValueError(f"no Gaussians on the mesh at uv_size={cfg.uv_size}: the UV mesh covers no "
                             "texel away from the neck boundary; use a larger --uv_size or check the UV mesh")
        self.register_buffer("encoding", self.embedding.encoding.to(device=device, dtype=dtype),
                             persistent=False)
        self.deformation = DeformationModel(
            n, ours=cfg.ours, hidden_dim=cfg.hidden_dim, hidden_layers=cfg.hidden_layers,
            latent_dim=cfg.latent_dim, conditional_appearance=cfg.conditional_appearance,
            camera_conditioning=cfg.camera_conditioning).to(device=device, dtype=dtype)
        self.gaussians = GaussianModel(n, cfg.max_sh_degree).to(device=device, dtype=dtype)

    @classmethod
    def build(cls, assets: FlameAssets, shape: Tensor, options: Any = None, *,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              seed: int = 0) -> Avatar:
        """Same as the constructor (reads better at call sites)."""
        return cls(assets, shape, options, device=device, dtype=dtype, seed=seed)

    # -- properties ------------------------------------------------------------------------------
    @property
    def n_gaussians(self) -> int:
        return self.gaussians.n_gaussians

    @property
    def method(self) -> str:
        """"ours" (HyperGaussians) or "baseline" (FlashAvatar)."""
        return self.config.method

    @property
    def device(self) -> torch.device:
        return self.encoding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoding.dtype

    def _apply(self, fn, *args, **kwargs):  # keep the embedding on the module's device
        super()._apply(fn, *args, **kwargs)
        self.embedding = self.embedding.to(self.encoding.device)
        return self

    # -- per frame -------------------------------------------------------------------------------
    def posed_vertices(self, condition: Tensor) -> Tensor:
        """FLAME vertices (V,3) for one frame's condition (120,) (global pose stays identity)."""
        return self._posed(self._condition(condition))

    def _posed(self, c: Tensor) -> Tensor:
        eye = self._identity6d
        return self.flame(c[None, _EXPR], c[None, _JAW], c[None, _EYES], c[None, _LIDS],
                          neck=eye, rotation=eye)[0]

    def base_positions(self, condition: Tensor) -> Tensor:
        """Gaussian base positions (N,3) on the posed mesh."""
        return self.embedding.interpolate(self.posed_vertices(condition))

    def deform(self, condition: Tensor, camera: Camera | None = None) -> tuple[GaussianSet, DeformExtras]:
        """The frame's activated Gaussians and :class:`DeformExtras`. ``camera`` is needed only with
        camera conditioning (view direction from its centre to each Gaussian's base position)."""
        c = self._condition(condition)
        vertices = self._posed(c)
        base = self.embedding.interpolate(vertices)
        view_dirs = None
        if self.config.camera_conditioning:
            if camera is None:
                raise ValueError("this avatar is camera-conditioned (--camera_conditioning): pass the camera")
            view_dirs = unit_view_directions(base.detach(), camera.camera_center)
        out = self.deformation(self.encoding, c, view_dirs)
        gaussians = self.gaussians.compose(base, out)
        return gaussians, DeformExtras(base, out.uncertainty, out, vertices)

    def gaussians_for(self, condition: Tensor,
                      camera: Camera | None = None) -> tuple[GaussianSet, DeformExtras]:
        """Alias of :meth:`deform` (the name in docs/CONTRACTS.md)."""
        return self.deform(condition, camera)

    forward = deform

    def inference_graph(self) -> Callable[..., tuple[GaussianSet, DeformExtras]]:
        """A CUDA-graph replay of :meth:`deform` without gradients, for rendering and evaluation.

        The per-frame chain is a few hundred tiny kernels, so eager execution is bound by launch
        overhead; replaying one captured graph removes it. Returns ``fn(condition, camera=None) ->
        (GaussianSet, DeformExtras)`` with the same values as ``deform`` under ``torch.no_grad()``.
        The returned tensors are static buffers overwritten by the next call: use (render) them before
        calling again, or clone. Parameters are read in place, so later training updates are seen;
        re-capture after changing the model's structure. CUDA only.
        """
        self._require_cuda("inference_graph")
        static_cond = torch.zeros(CONDITION_DIM, device=self.device, dtype=self.dtype)
        static_centre = _CameraCentre(torch.zeros(3, device=self.device, dtype=torch.float32))
        camera_arg = static_centre if self.config.camera_conditioning else None
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(2):  # warm up allocations and lazy initialisation outside the capture
                self.deform(static_cond, camera_arg)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_gs, static_extras = self.deform(static_cond, camera_arg)

        def run(condition: Tensor, camera: Camera | None = None) -> tuple[GaussianSet, DeformExtras]:
            static_cond.copy_(condition.reshape(-1), non_blocking=True)
            if camera_arg is not None:
                static_centre.camera_center.copy_(self._camera_centre(camera), non_blocking=True)
            graph.replay()
            gs = GaussianSet(static_gs.means, static_gs.scales, static_gs.rotations, static_gs.opacities,
                             shs=static_gs.shs, colors=static_gs.colors,
                             sh_degree=self.gaussians.active_sh_degree)
            return gs, static_extras

        run.graph = graph  # keep the graph (and its memory pool) alive with the function
        return run

    def training_graph(self, sample_condition: Tensor,
                       sample_camera: Camera | None = None) -> Callable[..., GaussianSet]:
        """:meth:`deform` for training, with its forward and its backward each one CUDA-graph replay.

        Eager, one training step's deformation is ~350 small kernels forward and as many backward, so
        the step waits on kernel launches; ``torch.cuda.make_graphed_callables`` captures both
        directions once, and autograd runs the captured backward when the loss is back-propagated,
        accumulating the parameters' gradients as usual. Returns ``fn(condition, camera=None) ->
        GaussianSet``. Its tensors are static buffers overwritten by the next call, so finish each
        step's backward before the next call (as a training loop does). Parameters must keep their
        storage (in-place optimiser updates and ``load_state_dict`` do). ``sample_*``: a real frame's
        values for the warm-up runs. CUDA only."""
        self._require_cuda("training_graph")
        colours = self.config.conditional_appearance
        with_centre = self.config.camera_conditioning
        module = _DeformAsTensors(self)
        args: tuple[Tensor, ...] = (self._condition(sample_condition).clone(),)
        if with_centre:
            args += (self._camera_centre(sample_camera).clone(),)
        # The warm-up and capture run on torch's side streams and create the parameters' AccumulateGrad
        # nodes there; the captured outputs keep them alive, so backward passes on another stream add a
        # GPU-side stream wait and torch warns about the mismatch. Harmless (no host sync; the step
        # times in bench/NOTES.md include it): keep the warning out of users' logs.
        warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
        graphed = torch.cuda.make_graphed_callables(module, args, allow_unused_input=True)

        def run(condition: Tensor, camera: Camera | None = None) -> GaussianSet:
            inputs: tuple[Tensor, ...] = (self._condition(condition),)
            if with_centre:
                inputs += (self._camera_centre(camera),)
            means, scales, rotations, opacities, colour = graphed(*inputs)
            return GaussianSet(means, scales, rotations, opacities, shs=None if colours else colour,
                               colors=colour if colours else None, sh_degree=self.gaussians.active_sh_degree)

        run.module = graphed  # keep the graphs (and their memory pools) alive with the function
        return run

    def inference_deformer(self, use_graph: bool = True) -> Callable[..., tuple[GaussianSet, DeformExtras]]:
        """The fastest gradient-free per-frame deformation here: :meth:`inference_graph` on CUDA (unless
        ``use_graph`` is False), else :meth:`deform`. Call under ``torch.no_grad()``; the graph's outputs
        are overwritten by its next call."""
        return self.inference_graph() if use_graph and self.device.type == "cuda" else self.deform

    def _require_cuda(self, what: str) -> None:
        if self.device.type != "cuda":
            raise RuntimeError(f"Avatar.{what} needs the avatar on a CUDA device; on CPU use deform")

    def _camera_centre(self, camera: Camera | None) -> Tensor:
        if camera is None:
            raise ValueError("this avatar is camera-conditioned (--camera_conditioning): pass the camera")
        return camera.camera_center.to(device=self.device, dtype=torch.float32).reshape(3)

    @torch.no_grad()
    def initialize_gaussians(self, condition: Tensor, camera: Camera | None = None) -> None:
        """SPEC section 6 init from the positions the untrained heads give for this frame."""
        gaussians, _ = self.deform(condition, camera)
        self.gaussians.initialize(gaussians.means)

    def _condition(self, condition: Tensor) -> Tensor:
        c = condition.to(device=self.encoding.device, dtype=self.encoding.dtype).reshape(-1)
        if c.shape[0] != CONDITION_DIM:
            raise ValueError(f"condition must have {CONDITION_DIM} values (expression 100, jaw 6, eyes 12, "
                             f"eyelids 2), got {c.shape[0]}")
        return c

    # -- training helpers ------------------------------------------------------------------------
    def make_optimizers(self) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        """(Gaussian-parameter Adam with the five SPEC groups, deformation Adam at lr 1e-4)."""
        return self.gaussians.make_optimizer(), self.deformation.make_optimizer()

    def update_sh_degree(self, iteration: int) -> int:
        """Active SH degree for ``iteration`` (0, then +1 every 500 up to 3)."""
        return self.gaussians.update_sh_degree(iteration)

    @torch.no_grad()
    def export_ply(self, path: str | Path, condition: Tensor, camera: Camera | None = None) -> Path:
        """Write this frame's Gaussians as a 3DGS PLY file (atomic)."""
        from scene.ply import write_ply

        gaussians, _ = self.deform(condition, camera)
        return write_ply(path, gaussians)

