"""Differentiable Gaussian rendering (docs/maths.md section 7) behind one call, with a choice of backend.

``render()`` dispatches to the project's CUDA extension (``gaussian_renderer.cuda_backend``) or to
the pure-PyTorch reference (``gaussian_renderer.torch_backend``). Both implement the same rules;
the torch one runs anywhere (CPU training, tests) and is the ground truth for the CUDA one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import Tensor

from gaussian_renderer.torch_backend import render_torch
from gaussian_renderer.types import GaussianSet, RenderOutput, validate_gaussians

__all__ = ["BACKENDS", "BACKEND_ENV", "GaussianSet", "RenderOutput", "render", "resolve_backend"]

BACKEND_ENV = "GAUSSIAN_RENDERER_BACKEND"
BACKENDS = ("auto", "torch", "cuda")


def _cuda_status() -> tuple[bool, str]:
    """(available, reason) for the CUDA backend, importing its adapter lazily."""
    try:
        from gaussian_renderer import cuda_backend
    except ImportError as exc:  # adapter missing or its imports fail
        return False, f"gaussian_renderer.cuda_backend cannot be imported ({exc})"
    try:
        ok = bool(cuda_backend.cuda_backend_available())
    except Exception as exc:  # noqa: BLE001 - any failure to probe means "not available"
        return False, f"probing the CUDA extension failed ({exc})"
    why = "" if ok else "the diff_gaussian_rasterization CUDA extension is not built or no GPU is visible"
    return ok, why


def resolve_backend(backend: str | None, on_cuda: bool) -> str:
    """The concrete backend ("torch" or "cuda") for a request, ``None`` meaning the environment
    variable ``GAUSSIAN_RENDERER_BACKEND`` (default "auto"). "auto" picks CUDA only when the
    extension is available and the tensors are on a CUDA device; "cuda" that cannot run is an error."""
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")
    choice = (choice or "auto").strip().lower()
    if choice not in BACKENDS:
        source = "backend argument" if backend is not None else f"environment variable {BACKEND_ENV}"
        raise ValueError(f"render: unknown backend {choice!r} from the {source}; "
                         f"use one of {', '.join(BACKENDS)}")
    if choice == "torch":
        return "torch"
    if choice == "auto" and not on_cuda:
        return "torch"
    available, reason = _cuda_status()
    if choice == "auto":
        return "cuda" if available else "torch"
    if not available:
        raise RuntimeError(f"render: backend 'cuda' was requested but {reason}. Build it with "
                           "`pip install --no-build-isolation -e .` on a machine with a CUDA toolkit, "
                           f"or use backend='torch' ({BACKEND_ENV}=torch).")
    if not on_cuda:
        raise RuntimeError("render: backend 'cuda' needs the Gaussians on a CUDA device; move them with "
                           ".to('cuda') or use backend='torch'.")
    return "cuda"


def render(camera: Any, gaussians: GaussianSet, background: Tensor, scaling_modifier: float = 1.0,
           override_color: Tensor | None = None, backend: str | None = None, return_depth: bool = False,
           return_alpha: bool = False, pair_capacity: int = 0,
           pair_count: Tensor | None = None) -> RenderOutput:
    """Render ``gaussians`` seen by ``camera`` (a ``scene.data.cameras.Camera``) over ``background`` (3,).

    ``override_color`` (P, 3) replaces the SH / given colours (used as is: no +0.5, no clamp).
    ``backend``: "auto" | "torch" | "cuda" (None: ``GAUSSIAN_RENDERER_BACKEND``, default "auto").
    Returns a ``RenderOutput``: image (3, H, W), int radii, visibility filter, viewspace points whose
    gradient is the screen-space gradient in NDC units, and depth / alpha (1, H, W) when asked for.
    ``pair_capacity`` / ``pair_count`` (CUDA backend; the torch one is always exact and ignores them): a
    fixed-size (tile, Gaussian) pair list with no host sync, for CUDA-graph captures (see
    ``diff_gaussian_rasterization.GaussianRasterizationSettings``).
    """
    if override_color is not None:
        gaussians = dataclasses.replace(gaussians, colors=override_color)
    validate_gaussians(gaussians, background)
    which = resolve_backend(backend, gaussians.means.is_cuda)
    if which == "cuda":
        from gaussian_renderer.cuda_backend import render_cuda

        return render_cuda(camera, gaussians, background, scaling_modifier, return_depth, return_alpha,
                           pair_capacity, pair_count)
    return render_torch(camera, gaussians, background, scaling_modifier, return_depth, return_alpha)
