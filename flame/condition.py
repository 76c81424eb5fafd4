"""The per-frame condition vector: the one owner of its layout and of the maths done on it.

A frame's condition is concat(expression 100, jaw 6, eyes 12, eyelids 2) = 120 numbers (docs/maths.md
section 4): the FLAME parameters that move the mesh once tracking has baked the global pose into the
camera. Rotations are 6D (first two rows of the matrix, docs/maths.md section 3); the eyes are two 6D
rotations, left eyeball first. Everything that slices, builds or edits a condition goes through the names
and functions here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flame.assets import N_EXPR
from utils.rotations import identity_rot6d, matrix_to_rot6d, rot6d_to_matrix

EXPRESSION = slice(0, N_EXPR)
JAW = slice(100, 106)
EYES = slice(106, 118)
LEFT_EYE = slice(106, 112)
RIGHT_EYE = slice(112, 118)
EYELIDS = slice(118, 120)
CONDITION_DIM = 120

ROTATIONS = (JAW, LEFT_EYE, RIGHT_EYE)  # the 6D rotations inside a condition


def build_condition(expression: Tensor, jaw: Tensor, eyes: Tensor, eyelids: Tensor) -> Tensor:
    """concat(expression 100, jaw 6, eyes 12, eyelids 2) along the last axis -> (..., 120)."""
    out = torch.cat([expression, jaw, eyes, eyelids], dim=-1)
    if out.shape[-1] != CONDITION_DIM:
        raise ValueError(f"build_condition: got {out.shape[-1]} values, expected 100 + 6 + 12 + 2 = 120")
    return out


def check_condition(condition: Tensor) -> Tensor:
    """``condition`` flattened to (120,); a clear error naming the layout when the size is wrong."""
    c = condition.reshape(-1)
    if c.shape[0] != CONDITION_DIM:
        raise ValueError(f"condition must have {CONDITION_DIM} values (expression 100, jaw 6, eyes 12, "
                         f"eyelids 2), got {c.shape[0]}")
    return c


def canonical_condition(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """The rest pose (120,): zero expression and eyelids, jaw and both eyes at the identity rotation."""
    c = torch.zeros(CONDITION_DIM, device=device, dtype=dtype)
    for rot in ROTATIONS:
        c[rot] = identity_rot6d(device=device, dtype=dtype)
    return c


def neutral_index(conditions: Tensor) -> int:
    """Index of the most neutral of (N, 120) conditions: smallest ||expression||^2 + ||jaw - identity||^2
    (6D)."""
    eye = identity_rot6d(device=conditions.device, dtype=conditions.dtype)
    score = conditions[:, EXPRESSION].pow(2).sum(-1) + (conditions[:, JAW] - eye).pow(2).sum(-1)
    return int(torch.argmin(score))


def _compose_relative(src: Tensor, src_neutral: Tensor, tgt_neutral: Tensor) -> Tensor:
    """6D rotations (..., 6): the source's rotation relative to its neutral, applied to the target's
    neutral: R = R_src R_src_neutral^T R_tgt_neutral."""
    r_s, r_sn, r_tn = rot6d_to_matrix(src), rot6d_to_matrix(src_neutral), rot6d_to_matrix(tgt_neutral)
    return matrix_to_rot6d(r_s @ r_sn.transpose(-1, -2) @ r_tn)


def relative_condition(src: Tensor, src_neutral: Tensor, tgt_neutral: Tensor) -> Tensor:
    """Target neutral + (source - source neutral) for (..., 120) conditions: expression and eyelids add,
    jaw and eye rotations compose (cross-reenactment's relative mode)."""
    out = tgt_neutral + (src - src_neutral)
    for rot in ROTATIONS:
        out[..., rot] = _compose_relative(src[..., rot], src_neutral[..., rot], tgt_neutral[..., rot])
    return out


def edited_condition(condition: Tensor, *, jaw_open_rad: float = 0.0, eye_yaw_rad: float = 0.0,
                     eye_pitch_rad: float = 0.0, eyelids: float = 0.0,
                     expression: list[float] | tuple[float, ...] = ()) -> Tensor:
    """A (120,) condition with interactive edits on top (the viewer's sliders): the jaw turned further by
    ``jaw_open_rad`` about FLAME's x axis (R -> Rx R), both eyes by ``eye_yaw_rad`` about y and
    ``eye_pitch_rad`` about x (R -> Ry Rx R), ``eyelids`` added to both eyelid values and ``expression``
    added to the first len(expression) expression components. All zero gives the condition back."""
    from utils.rotations import rotation_about_x, rotation_about_y

    c = check_condition(condition).clone()
    kw = {"dtype": c.dtype, "device": c.device}
    if jaw_open_rad:
        c[JAW] = matrix_to_rot6d(rotation_about_x(jaw_open_rad, **kw) @ rot6d_to_matrix(c[JAW]))
    if eye_yaw_rad or eye_pitch_rad:
        turn = rotation_about_y(eye_yaw_rad, **kw) @ rotation_about_x(eye_pitch_rad, **kw)
        for eye in (LEFT_EYE, RIGHT_EYE):
            c[eye] = matrix_to_rot6d(turn @ rot6d_to_matrix(c[eye]))
    c[EYELIDS] = c[EYELIDS] + eyelids
    if len(expression):
        k = len(expression)
        if k > N_EXPR:
            raise ValueError(f"edited_condition: {k} expression edits, at most {N_EXPR}")
        c[:k] = c[:k] + torch.as_tensor(list(expression), **kw)
    return c
