"""A frame's Gaussians straight from FLAME's unskinned mesh, for inference (issue 13's frame budget).

``Avatar.deform`` skins every FLAME vertex, gathers each Gaussian's triangle corners, interpolates them and
composes the heads' outputs in ~25 small kernels. Without gradients only the Gaussians are needed, so the
skinning of the ~3 x N corners, the interpolation and the composition can be one pass:
:func:`frame_gaussians_torch` is that pass in torch (the reference, and the path wherever the kernel is not
used), ``fused_ops.frame_gaussians`` the same in one CUDA kernel (fast path ``frame_kernel``).
"""

from __future__ import annotations

from torch import Tensor

from scene.model.gaussians import compose_geometry


def frame_gaussians_torch(v_posed: Tensor, transforms: Tensor, lbs_weights: Tensor, eyelid_dirs: Tensor,
                          eyelids: Tensor, vertex_ids: Tensor, bary: Tensor, d_xyz: Tensor, d_rot: Tensor,
                          d_scale: Tensor, rotation: Tensor, log_scale: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """(means (N,3), rotations (N,4), scales (N,3)) of one frame. ``v_posed`` (V,3) unskinned vertices,
    ``transforms`` (5,3,4) the joints' skinning transforms, ``lbs_weights`` (V,5), ``eyelid_dirs`` (2,3V),
    ``eyelids`` (2,), ``vertex_ids`` / ``bary`` (N,3) each Gaussian's triangle and barycentrics, the heads'
    ``d_xyz`` (N,3), ``d_rot`` (N,4), ``d_scale`` (N,3) (after their tanh), the ``rotation`` (N,4) and
    ``log_scale`` (N,3) parameters. The maths of FLAME.skinned + Embedding.interpolate + GaussianModel.compose
    (docs/maths.md sections 3-5), restricted to the corners the Gaussians sit on."""
    ids = vertex_ids.reshape(-1)
    T = (lbs_weights[ids] @ transforms.reshape(5, 12)).view(-1, 3, 4)  # (3N, 3, 4) per corner
    lids = (eyelids.reshape(1, 2) @ eyelid_dirs).view(-1, 3)[ids]  # (3N, 3)
    corners = (T[..., :3] @ v_posed[ids].unsqueeze(-1)).squeeze(-1) + T[..., 3] + lids
    base = (corners.view(-1, 3, 3) * bary.unsqueeze(-1)).sum(dim=1)
    return compose_geometry(base, d_xyz, d_rot, d_scale, rotation, log_scale)


__all__ = ["frame_gaussians_torch"]
