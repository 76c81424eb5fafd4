"""The avatar of one subject: shaped FLAME + Gaussians on its surface + deformation model + parameters.

Everything that depends only on the subject (the identity part of FLAME, the canonical mesh, the UV
embedding, the positional encoding) is computed once in the constructor. The per-frame path
:meth:`Avatar.deform` is a straight chain of tensor ops on the avatar's device: no host syncs, no
``.item()``, nothing per subject recomputed.

Per frame (docs/maths.md sections 3-6): condition (120) -> FLAME(expression, jaw, eyes, eyelids) -> posed mesh
-> base positions (embedding barycentrics) -> deformation heads on (encoding, condition) ->
:meth:`GaussianModel.compose` -> :class:`GaussianSet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from flame.assets import FlameAssets
from flame.condition import EXPRESSION, EYELIDS, EYES, JAW, check_condition
from flame.model import FLAME
from gaussian_renderer.types import GaussianSet
from scene.model.deformation import DeformationModel, DeformationOutput, unit_view_directions
from scene.model.embedding import Embedding
from scene.model.frame_gaussians import frame_gaussians_torch
from scene.model.gaussians import GaussianModel
from scene.model.hypergaussians import HyperGaussian
from scene.model.ply import write_ply
from utils import fast_paths
from utils.device import fused_kernels
from utils.options import ModelOptions
from utils.rotations import identity_rot6d


class ViewPoint(Protocol):
    """What the avatar reads of a camera (only with camera conditioning): its centre in world space."""

    camera_center: Tensor


@dataclass
class DeformExtras:
    """What ``Avatar.deform`` returns beside the Gaussians: ``base_positions`` (N,3) on the posed mesh,
    ``uncertainty`` (N,) (HyperGaussians; None for the baseline), the raw ``deformation`` outputs and
    the posed FLAME ``vertices`` (V,3)."""

    base_positions: Tensor
    uncertainty: Tensor | None
    deformation: DeformationOutput
    vertices: Tensor


class Avatar(nn.Module):
    """One subject's avatar. Build once (``scene.assemble.build_avatar`` resolves the assets from the
    options), then per frame ``gaussians, extras = avatar.deform(condition, camera)``; the CUDA-graph
    forms of ``deform`` are in :mod:`scene.model.cuda_graphs`.

    Submodules: ``flame`` (``ShapedFLAME``, no persistent state), ``deformation``
    (:class:`DeformationModel`), ``gaussians`` (:class:`GaussianModel`); ``embedding`` (the per-subject
    :class:`Embedding`, moved along with the module) and the ``encoding`` buffer (N,51).
    """

    def __init__(self, assets: FlameAssets, shape: Tensor, options: ModelOptions | None = None, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> None:
        super().__init__()
        self.config = options if options is not None else ModelOptions()
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
        self.register_buffer("_identity6d", identity_rot6d(1, dtype=dtype, device=device), persistent=False)
        # what fused_ops.flame_joints reads (frame_gaussians): joints 0-1's identity rotations, the parents
        # (it walks the chain in index order: FLAME lists every parent before its children)
        self.register_buffer("_identity_head", identity_rot6d(2, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("_parents", torch.tensor(flame.parents, dtype=torch.long, device=device),
                             persistent=False)
        self._parents_first = all(p < j for j, p in enumerate(flame.parents))
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
    def _posed(self, c: Tensor) -> Tensor:
        eye = self._identity6d
        return self.flame(c[None, EXPRESSION], c[None, JAW], c[None, EYES], c[None, EYELIDS],
                          neck=eye, rotation=eye)[0]

    @torch.no_grad()
    def surface_of(self, extras: DeformExtras) -> tuple[Tensor, Tensor]:
        """(base positions (N,3), unit triangle normals (N,3)) on the posed mesh of the frame ``deform``
        gave ``extras`` for, without gradients: what training's surface priors measure against."""
        return extras.base_positions.detach(), self.embedding.normals(extras.vertices.detach())

    def deform(self, condition: Tensor, camera: ViewPoint | None = None) -> tuple[GaussianSet, DeformExtras]:
        """The frame's activated Gaussians and :class:`DeformExtras`. ``camera`` is needed only with
        camera conditioning (view direction from its centre to each Gaussian's base position)."""
        c = self.condition_on_device(condition)
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

    @torch.no_grad()
    def frame_gaussians(self, condition: Tensor, camera: ViewPoint | None = None) -> GaussianSet:
        """The frame's activated Gaussians without gradients or extras (render.py, evaluation, the viewer's
        frames): ``deform(condition, camera)[0]``, or, with fast path ``frame_kernel`` and no camera
        conditioning, FLAME up to its skinning transforms and then skinning, interpolation and composition on
        the Gaussians' own triangle corners in one pass (:mod:`scene.model.frame_gaussians`). On CUDA that is
        fused_ops' two kernels around one GEMV: ``flame_joints`` (rotations, pose feature, joints, chain) and
        ``frame_gaussians``."""
        if not fast_paths.enabled("frame_kernel") or self.config.camera_conditioning:
            return self.deform(condition, camera)[0]
        c = self.condition_on_device(condition)
        flame, emb, gs = self.flame.flame, self.embedding, self.gaussians
        ops = fused_kernels() if self.device.type == "cuda" and self.dtype == torch.float32 else None
        if ops is not None and self._parents_first:  # the joints in one launch, the blendshapes in one GEMV
            coeffs, A = ops.flame_joints(self._identity_head, c[JAW.start:EYES.stop], c[EXPRESSION],
                                         self.flame.J_rest, flame.J_shapedirs_expr, self._parents)
            v_posed = torch.addmm(self.flame.v_rest.reshape(1, -1), coeffs.reshape(1, -1),
                                  flame.expr_pose_dirs).view(-1, 3)
            compose = ops.frame_gaussians
        else:
            eye = self._identity6d
            compose = ops.frame_gaussians if ops is not None else frame_gaussians_torch
            v_posed, A = self.flame.unskinned(c[None, EXPRESSION], c[None, JAW], c[None, EYES], neck=eye,
                                              rotation=eye)
            v_posed, A = v_posed[0], A[0]
        out = self.deformation(self.encoding, c, uncertainty=False)
        means, rotations, scales = compose(v_posed, A, flame.lbs_weights, flame.eyelid_dirs, c[EYELIDS],
                                           emb.vertex_ids, emb.bary.to(self.dtype), out.d_xyz, out.d_rot,
                                           out.d_scale, gs.rotation, gs.log_scale)
        return gs.activated(means, rotations, scales, out)

    def freeze_for_inference(self) -> None:
        """Precompute what fixed weights allow (HyperGaussians' regression matrices, see
        :meth:`HyperGaussian.freeze`); for render.py and the viewer, never for training."""
        for module in self.modules():
            if isinstance(module, HyperGaussian):
                module.freeze()

    @torch.no_grad()
    def initialize_gaussians(self, condition: Tensor, camera: ViewPoint | None = None) -> None:
        """docs/maths.md section 6 init from the positions the untrained heads give for this frame."""
        gaussians, _ = self.deform(condition, camera)
        self.gaussians.initialize(gaussians.means)

    def condition_on_device(self, condition: Tensor) -> Tensor:
        """``condition`` as a (120,) tensor on the avatar's device and dtype (size checked)."""
        return check_condition(condition.to(device=self.encoding.device, dtype=self.encoding.dtype))

    # -- training helpers ------------------------------------------------------------------------
    def make_optimizers(self) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        """(Gaussian-parameter Adam with the five groups of docs/maths.md section 6, deformation Adam at
        lr 1e-4)."""
        return self.gaussians.make_optimizer(), self.deformation.make_optimizer()

    def update_sh_degree(self, iteration: int) -> int:
        """Active SH degree for ``iteration`` (0, then +1 every 500 up to 3)."""
        return self.gaussians.update_sh_degree(iteration)

    @torch.no_grad()
    def export_ply(self, path: str | Path, condition: Tensor, camera: ViewPoint | None = None) -> Path:
        """Write this frame's Gaussians as a 3DGS PLY file (atomic)."""
        gaussians, _ = self.deform(condition, camera)
        return write_ply(path, gaussians)

