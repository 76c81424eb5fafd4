"""The FLAME layer of docs/maths.md section 3 in torch: parameters (6D rotations) -> posed vertices.

Blendshapes, joint regression, pose correctives, the 5-joint rigid chain, linear blend skinning,
eyelids after skinning, translation; batched, any device, any float dtype. ``for_shape`` computes
the identity part once so that per-frame calls only pay for expression, poses and skinning.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from flame.assets import N_EXPR, N_JOINTS, N_SHAPE, FlameAssets
from utils.rotations import identity_rot6d, rot6d_to_matrix

__all__ = ["FLAME", "ShapedFLAME"]


class FLAME(nn.Module):
    """FLAME as a module whose buffers follow ``.to(device)``; ``dtype`` is the float type used."""

    def __init__(self, assets: FlameAssets, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not dtype.is_floating_point:
            raise TypeError(f"FLAME: dtype must be a float type, got {dtype}")
        V = assets.n_vertices
        as_t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
        # Precomputed in float64, then cast: blendshapes flattened and transposed for row-vector
        # matmuls (K, V*3), their joint regressions (K, 5*3).
        sd = np.asarray(assets.shapedirs, dtype=np.float64)
        J_reg = np.asarray(assets.J_regressor, dtype=np.float64)
        J_sd = np.einsum("jv,vck->jck", J_reg, sd).reshape(N_JOINTS * 3, N_SHAPE + N_EXPR)
        sd = sd.reshape(V * 3, N_SHAPE + N_EXPR)
        self._buffer("v_template", as_t(assets.v_template))
        self._buffer("shapedirs_id", as_t(sd[:, :N_SHAPE].T).contiguous())
        self._buffer("J_regressor", as_t(J_reg))
        self._buffer("J_template", as_t(J_reg @ np.asarray(assets.v_template, dtype=np.float64)))
        self._buffer("J_shapedirs_id", as_t(J_sd[:, :N_SHAPE].T).contiguous())
        self._buffer("J_shapedirs_expr", as_t(J_sd[:, N_SHAPE:].T).contiguous())
        # Expression blendshapes (100, V*3) and posedirs (V,3,36) -> (36, V*3) stacked, so that a frame's
        # pre-skinning offsets are one matmul: [expression, pose feature] @ expr_pose_dirs.
        posedirs = np.asarray(assets.posedirs, dtype=np.float64).reshape(V * 3, -1).T
        self._buffer("expr_pose_dirs", as_t(np.concatenate([sd[:, N_SHAPE:].T, posedirs])).contiguous())
        self._buffer("lbs_weights", as_t(assets.weights))
        self._buffer("faces", torch.as_tensor(assets.faces, dtype=torch.long))
        # Identity pose and matrix kept as buffers: defaults never copy host data to the device.
        self._buffer("identity6d", identity_rot6d(dtype=dtype))
        self._buffer("eye3", torch.eye(3, dtype=dtype))
        # Eyelid shapes as (2, V*3) so both apply with one matmul; a missing one is zero.
        lids = [np.zeros((V, 3)) if x is None else np.asarray(x, dtype=np.float64)
                for x in (assets.l_eyelid, assets.r_eyelid)]
        self._buffer("eyelid_dirs", as_t(np.stack(lids).reshape(2, V * 3)))
        # The kinematic tree, processed level by level (all joints of one depth at once).
        self.parents: list[int] = assets.parents
        depth = [0] * N_JOINTS
        for j, p in enumerate(self.parents):
            depth[j] = 0 if p < 0 else depth[p] + 1
        self.n_levels = max(depth)
        self._buffer("parent_idx", torch.tensor([max(p, 0) for p in self.parents], dtype=torch.long))
        self._buffer("has_parent", torch.tensor([[float(p >= 0)] for p in self.parents], dtype=dtype))
        levels = [[[[d == k]] for d in depth] for k in range(self.n_levels + 1)]
        self._buffer("level_masks", torch.tensor(levels))  # (levels, 5, 1, 1) bool
        self._buffer("last_col", torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype))
        self.n_vertices = V

    # -- helpers ---------------------------------------------------------------------------------
    def _buffer(self, name: str, value: Tensor) -> None:
        # Not persistent: they come from the assets, so checkpoints of modules holding FLAME stay small.
        self.register_buffer(name, value, persistent=False)

    @property
    def shapedirs_expr(self) -> Tensor:
        """(100, V*3) expression blendshapes (rows of ``expr_pose_dirs``)."""
        return self.expr_pose_dirs[:N_EXPR]

    @property
    def posedirs(self) -> Tensor:
        """(36, V*3) pose correctives (rows of ``expr_pose_dirs``)."""
        return self.expr_pose_dirs[N_EXPR:]

    def _tensor(self, x: Tensor | None, width: int, batch: int, name: str) -> Tensor | None:
        if x is None:
            return None
        x = torch.as_tensor(x, dtype=self.v_template.dtype, device=self.v_template.device)
        if x.ndim == 1:
            x = x.unsqueeze(0)
        if x.ndim != 2 or x.shape[-1] > width:
            raise ValueError(f"FLAME: {name} must be (B, <= {width}), got {tuple(x.shape)}")
        if x.shape[0] != batch:
            if x.shape[0] != 1:
                raise ValueError(f"FLAME: {name} has batch {x.shape[0]}, expected {batch}")
            x = x.expand(batch, -1)
        return x

    def _rot(self, x: Tensor | None, batch: int, name: str, n: int = 1) -> Tensor:
        """(B, 6n) rotations (or None: identity) -> (B, n, 6)."""
        if x is None:
            return self.identity6d.expand(batch, n, 6)
        x = self._tensor(x, 6 * n, batch, name)
        if x.shape[-1] != 6 * n:
            raise ValueError(f"FLAME: {name} must have {6 * n} numbers (6D rotations), got {x.shape[-1]}")
        return x.reshape(batch, n, 6)

    def identity_part(self, shape: Tensor) -> tuple[Tensor, Tensor]:
        """(B, <=300) shape -> rest vertices (B,V,3) and joints (B,5,3) without expression."""
        k = shape.shape[-1]
        v = self.v_template + (shape @ self.shapedirs_id[:k]).view(-1, self.n_vertices, 3)
        J = self.J_template + (shape @ self.J_shapedirs_id[:k]).view(-1, N_JOINTS, 3)
        return v, J

    def posed(self, v_id: Tensor, J_id: Tensor, expression: Tensor, jaw: Tensor | None, eyes: Tensor | None,
              eyelids: Tensor | None, neck: Tensor | None, rotation: Tensor | None,
              translation: Tensor | None) -> Tensor:
        """Steps 1-6 of docs/maths.md section 3 from the identity part (broadcast over the batch)."""
        v_posed, A = self.unskinned(v_id, J_id, expression, jaw, eyes, neck, rotation)
        return self.skinned(v_posed, A, eyelids, translation)

    def unskinned(self, v_id: Tensor, J_id: Tensor, expression: Tensor, jaw: Tensor | None,
                  eyes: Tensor | None, neck: Tensor | None, rotation: Tensor | None) -> tuple[Tensor, Tensor]:
        """Steps 1-4: the rest-pose vertices with expression and pose correctives ``v_posed`` (B,V,3) and the
        joints' skinning transforms ``A`` (B,5,3,4) that act on them (what :meth:`skinned` blends)."""
        B = expression.shape[0]
        V = self.n_vertices
        k = expression.shape[-1]
        J = J_id + (expression @ self.J_shapedirs_expr[:k]).view(B, N_JOINTS, 3)

        pose6d = torch.cat([self._rot(rotation, B, "rotation"), self._rot(neck, B, "neck"),
                            self._rot(jaw, B, "jaw"), self._rot(eyes, B, "eyes", 2)], dim=1)
        R = rot6d_to_matrix(pose6d)  # (B,5,3,3)
        feature = (R[:, 1:] - self.eye3).reshape(B, 9 * (N_JOINTS - 1))
        # expression blendshapes and pose correctives in one matmul (missing expression terms are zero)
        pad = [expression.new_zeros(B, N_EXPR - k)] if k < N_EXPR else []
        coeffs = torch.cat([expression, *pad, feature], dim=1)
        v_posed = v_id + (coeffs @ self.expr_pose_dirs).view(B, V, 3)

        # Rigid chain on 3x4 transforms: local L_i = [R_i | J_i - J_parent(i)] (root: [R_0 | J_0]),
        # world G_i = G_parent(i) L_i, one tree level at a time; then remove the rest joint location:
        # A_i = G_i [I | -J_i], so that A_i acts on rest-pose vertices.
        t_local = J - J[:, self.parent_idx] * self.has_parent
        L = torch.cat([R, t_local.unsqueeze(-1)], dim=-1)  # (B,5,3,4)
        G = L
        for level in range(1, self.n_levels + 1):
            P = G[:, self.parent_idx]
            composed = P[..., :3] @ L + P[..., 3:] * self.last_col
            G = torch.where(self.level_masks[level], composed, G)
        return v_posed, G - (G[..., :3] @ J.unsqueeze(-1)) * self.last_col

    def skinned(self, v_posed: Tensor, A: Tensor, eyelids: Tensor | None = None,
                translation: Tensor | None = None) -> Tensor:
        """Steps 5-6: linear blend skinning of ``v_posed`` (B,V,3) by the transforms ``A`` (B,5,3,4), then the
        eyelid shapes (B,2) and the translation (B,3) when given."""
        B, V = v_posed.shape[0], self.n_vertices
        # Blend the 3x4 transforms per vertex with one 2D (V,5) @ (5,B*12) matmul (a broadcast batched
        # matmul is far slower on CPU), then apply them elementwise.
        A = A.transpose(0, 1).reshape(N_JOINTS, B * 12)
        T = (self.lbs_weights @ A).view(V, B, 3, 4).transpose(0, 1)
        verts = (T[..., :3] * v_posed.unsqueeze(-2)).sum(-1) + T[..., 3]

        if eyelids is not None:
            eyelids = self._tensor(eyelids, 2, B, "eyelids")
            if eyelids.shape[-1] != 2:
                raise ValueError(f"FLAME: eyelids must be (B, 2), got {tuple(eyelids.shape)}")
            verts = verts + (eyelids @ self.eyelid_dirs).view(B, V, 3)
        if translation is not None:
            translation = self._tensor(translation, 3, B, "translation")
            if translation.shape[-1] != 3:
                raise ValueError(f"FLAME: translation must be (B, 3), got {tuple(translation.shape)}")
            verts = verts + translation[:, None, :]
        return verts

    # -- public API ------------------------------------------------------------------------------
    def forward(self, shape: Tensor, expression: Tensor, jaw: Tensor | None = None,
                eyes: Tensor | None = None, eyelids: Tensor | None = None, neck: Tensor | None = None,
                rotation: Tensor | None = None, translation: Tensor | None = None) -> Tensor:
        """Posed vertices (B,V,3). ``shape`` (B|1, <=300), ``expression`` (B, <=100), rotations in 6D:
        ``jaw``/``neck``/``rotation`` (B,6), ``eyes`` (B,12) = [joint 3, joint 4]; ``eyelids`` (B,2);
        ``translation`` (B,3). Missing poses are identity, missing eyelids/translation zero."""
        expression = torch.as_tensor(expression, dtype=self.v_template.dtype, device=self.v_template.device)
        if expression.ndim == 1:
            expression = expression.unsqueeze(0)
        B = expression.shape[0]
        expr = self._tensor(expression, N_EXPR, B, "expression")
        shape = torch.as_tensor(shape)
        one_shape = shape.ndim == 1 or (shape.ndim == 2 and shape.shape[0] == 1)
        shape = self._tensor(shape, N_SHAPE, 1 if one_shape else B, "shape")  # one identity: computed once
        v_id, J_id = self.identity_part(shape)
        return self.posed(v_id, J_id, expr, jaw, eyes, eyelids, neck, rotation, translation)

    def restricted_to(self, vertex_ids: Tensor | np.ndarray) -> FLAME:
        """This model evaluated at ``vertex_ids`` (K,) only: its ``forward`` gives ``(B, K, 3)`` equal to
        the full model's ``forward(...)[:, vertex_ids]``, at the cost of K vertices (landmark fitting
        needs a few hundred of FLAME's 5023). Joints still come from the whole mesh. Shares buffers."""
        ids = torch.as_tensor(np.asarray(vertex_ids), dtype=torch.long, device=self.v_template.device)
        cols = (ids[:, None] * 3 + torch.arange(3, device=ids.device)).reshape(-1)
        sub = copy.copy(self)
        sub._buffers = dict(self._buffers)  # its own table, so the slices below leave this model alone
        for name in ("shapedirs_id", "expr_pose_dirs", "eyelid_dirs"):
            sub._buffers[name] = self._buffers[name][:, cols]
        for name in ("v_template", "lbs_weights"):
            sub._buffers[name] = self._buffers[name][ids]
        sub.n_vertices = int(ids.numel())
        return sub

    def for_shape(self, shape: Tensor) -> ShapedFLAME:
        """FLAME with the identity ``shape`` (300,) fixed: its rest mesh and joints computed once."""
        shape = torch.as_tensor(shape, dtype=self.v_template.dtype, device=self.v_template.device)
        if shape.ndim == 2 and shape.shape[0] == 1:
            shape = shape[0]
        if shape.ndim != 1 or shape.shape[0] > N_SHAPE:
            raise ValueError(f"FLAME.for_shape: shape must be (<= {N_SHAPE},), got {tuple(shape.shape)}")
        return ShapedFLAME(self, shape)


class ShapedFLAME(nn.Module):
    """FLAME for one identity; ``forward`` takes only the per-frame parameters."""

    def __init__(self, flame: FLAME, shape: Tensor) -> None:
        super().__init__()
        self.flame = flame
        v_id, J_id = flame.identity_part(shape.unsqueeze(0))
        self.register_buffer("shape", shape.detach().clone(), persistent=False)
        self.register_buffer("v_rest", v_id[0], persistent=False)
        self.register_buffer("J_rest", J_id[0], persistent=False)

    @property
    def faces(self) -> Tensor:
        return self.flame.faces

    def forward(self, expression: Tensor, jaw: Tensor | None = None, eyes: Tensor | None = None,
                eyelids: Tensor | None = None, neck: Tensor | None = None, rotation: Tensor | None = None,
                translation: Tensor | None = None) -> Tensor:
        """Posed vertices (B,V,3) for ``expression`` (B, <=100) and the optional per-frame poses."""
        f = self.flame
        expression = torch.as_tensor(expression, dtype=f.v_template.dtype, device=f.v_template.device)
        if expression.ndim == 1:
            expression = expression.unsqueeze(0)
        expr = f._tensor(expression, N_EXPR, expression.shape[0], "expression")
        return f.posed(self.v_rest, self.J_rest, expr, jaw, eyes, eyelids, neck, rotation, translation)

    def unskinned(self, expression: Tensor, jaw: Tensor | None = None, eyes: Tensor | None = None,
                  neck: Tensor | None = None, rotation: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`FLAME.unskinned` for this identity: (v_posed (B,V,3), skinning transforms A (B,5,3,4))."""
        f = self.flame
        expression = torch.as_tensor(expression, dtype=f.v_template.dtype, device=f.v_template.device)
        if expression.ndim == 1:
            expression = expression.unsqueeze(0)
        expr = f._tensor(expression, N_EXPR, expression.shape[0], "expression")
        return f.unskinned(self.v_rest, self.J_rest, expr, jaw, eyes, neck, rotation)
