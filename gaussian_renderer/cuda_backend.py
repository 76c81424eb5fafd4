"""Adapter from ``scene.data.cameras.Camera`` + ``GaussianSet`` to our CUDA rasterizer extension.

``diff_gaussian_rasterization`` (``submodules/diff-gaussian-rasterization``) takes the original's API:
view and full-projection matrices transposed (its kernels read them column-major), the principal point
carried by the projection matrix. This module does that mapping once per call and wraps the result in a
:class:`RenderOutput`, the same as the torch reference backend returns.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from types import ModuleType

import torch
from torch import Tensor

from gaussian_renderer.types import GaussianSet, RenderOutput

_SUBMODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "submodules",
                              "diff-gaussian-rasterization")


def _load_from_tree() -> ModuleType:
    """Import the package from its in-tree folder (where ``build_ext --inplace`` leaves ``_C``)."""
    pkg_dir = os.path.join(_SUBMODULE_DIR, "diff_gaussian_rasterization")
    init = os.path.join(pkg_dir, "__init__.py")
    if not os.path.isfile(init):
        raise ImportError(f"diff_gaussian_rasterization: {init} is missing")
    spec = importlib.util.spec_from_file_location("diff_gaussian_rasterization", init,
                                                  submodule_search_locations=[pkg_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules["diff_gaussian_rasterization"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("diff_gaussian_rasterization", None)
        raise
    return module


@functools.lru_cache(maxsize=1)
def _load_extension() -> tuple[ModuleType | None, str]:
    """The imported package (or None) and, when missing, why. An installed package is preferred; else
    (or when only a stale namespace package is found) the in-tree one is loaded."""
    try:
        module = importlib.import_module("diff_gaussian_rasterization")
        if hasattr(module, "GaussianRasterizer"):
            return module, ""
        sys.modules.pop("diff_gaussian_rasterization", None)
    except ModuleNotFoundError:
        pass
    except ImportError as exc:
        return None, str(exc)
    try:
        return _load_from_tree(), ""
    except ImportError as exc:
        return None, str(exc)


def cuda_backend_available() -> bool:
    """True when the extension is importable (built) and a CUDA device is present."""
    module, _ = _load_extension()
    return module is not None and torch.cuda.is_available()


def _require_extension() -> ModuleType:
    module, why = _load_extension()
    if module is None:
        raise RuntimeError(f"render: the CUDA backend is not available: {why}")
    if not torch.cuda.is_available():
        raise RuntimeError("render: the CUDA backend needs a CUDA GPU; none is visible (use backend='torch')")
    return module


def render_cuda(camera, gaussians: GaussianSet, background: Tensor, scaling_modifier: float = 1.0,
                return_depth: bool = False, return_alpha: bool = False, pair_capacity: int = 0,
                pair_count: Tensor | None = None) -> RenderOutput:
    """Rasterize ``gaussians`` seen by ``camera`` over ``background`` (3,) with the CUDA extension.

    Colour comes from ``gaussians.colors`` (P, 3) when set, else from ``gaussians.shs`` evaluated up to
    ``gaussians.sh_degree``. Inputs must be on a CUDA device (the camera's tensors are moved there).
    ``pair_capacity`` N > 0: a pair list of N slots and no host sync (pairs past N dropped; the count the
    frame needed is written to the int32 device tensor ``pair_count``); 0: exact, one sync.
    """
    dgr = _require_extension()
    means = gaussians.means
    if not means.is_cuda:
        raise ValueError(f"render_cuda: Gaussians must be on a CUDA device, got {means.device}; "
                         "move them with .to('cuda') or use backend='torch'")
    device = means.device
    if gaussians.colors is None and gaussians.shs is None:
        raise ValueError("render_cuda: gaussians need shs or colors")
    view = camera.world_view_transform.to(device=device, dtype=torch.float32)
    full = camera.full_proj_transform.to(device=device, dtype=torch.float32)
    settings = dgr.GaussianRasterizationSettings(
        image_height=int(camera.image_height),
        image_width=int(camera.image_width),
        tanfovx=float(camera.tanfovx),
        tanfovy=float(camera.tanfovy),
        bg=background.reshape(3).to(device=device, dtype=torch.float32),
        scale_modifier=float(scaling_modifier),
        viewmatrix=view.T.contiguous(),
        projmatrix=full.T.contiguous(),
        sh_degree=int(gaussians.sh_degree),
        campos=camera.camera_center.to(device=device, dtype=torch.float32),
        prefiltered=False,
        debug=False,
        return_depth=return_depth,
        return_alpha=return_alpha,
        pair_capacity=int(pair_capacity),
        pair_count=pair_count,
    )
    means2d = torch.zeros(means.shape[0], 3, dtype=torch.float32, device=device,
                          requires_grad=torch.is_grad_enabled())
    use_colors = gaussians.colors is not None
    cov = gaussians.covariances
    shape = (gaussians.scales, gaussians.rotations, None) if cov is None else (None, None, cov)
    out = dgr.rasterize_gaussians(means, means2d, None if use_colors else gaussians.shs,
                                  gaussians.colors if use_colors else None,
                                  gaussians.opacities.reshape(-1, 1), *shape, settings)
    image, radii = out[0], out[1]
    depth = out[2] if return_depth else None
    alpha = out[3] if return_alpha else None
    return RenderOutput(image=image, radii=radii, visibility_filter=radii > 0, viewspace_points=means2d,
                        depth=depth, alpha=alpha)
