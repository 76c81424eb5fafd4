"""The torch backend reproduces the ORIGINAL rasterizer's image of a trained head scene (docs/maths.md
section 7).

The scene and image come from the ``raster_oracle`` fixture (``tests/conftest.py``: ``RASTER_ORACLE_DIR``,
by default ``shared/data/raster_oracle/`` beside the checkout); the tests skip cleanly when it is absent.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gaussian_renderer import render
from gaussian_renderer.types import GaussianSet
from scene.data.cameras import Camera


@pytest.fixture(scope="module")
def oracle(raster_oracle) -> dict:
    return raster_oracle


def gaussians_of(d: dict, device: str = "cpu") -> GaussianSet:
    return GaussianSet(d["means3D"].to(device), d["scales"].to(device), d["rotations"].to(device),
                       d["opacities"].to(device), shs=d["shs"].to(device), sh_degree=int(d["sh_degree"]))


def original_camera(d: dict, device: str = "cpu") -> SimpleNamespace:
    """The matrices exactly as the original received them (transposed back to row-major)."""
    return SimpleNamespace(image_width=int(d["W"]), image_height=int(d["H"]), tanfovx=float(d["tanfovx"]),
                           tanfovy=float(d["tanfovy"]), world_view_transform=d["viewmatrix"].T.to(device),
                           full_proj_transform=d["projmatrix"].T.to(device),
                           camera_center=d["campos"].to(device))


def assert_parity(image: torch.Tensor, reference: torch.Tensor) -> None:
    diff = (image.detach().cpu() - reference).abs()
    assert image.shape == reference.shape
    assert torch.isfinite(image).all()
    assert diff.mean().item() < 1e-6, f"mean abs difference {diff.mean().item():.3g}"
    assert int((diff > 1e-4).sum()) <= 10, f"{int((diff > 1e-4).sum())} values differ by more than 1e-4"


def test_torch_backend_reproduces_original_image(oracle):
    with torch.no_grad():
        out = render(original_camera(oracle), gaussians_of(oracle), oracle["background"], backend="torch")
    assert_parity(out.image, oracle["image"])
    assert out.radii.dtype == torch.int32 and out.radii.shape == (oracle["means3D"].shape[0],)
    assert 0.95 < out.visibility_filter.float().mean().item() <= 1.0


def test_project_camera_reproduces_original_image(oracle):
    """The same through scene.data.cameras.Camera built from the plain [R t] matrix and K."""
    w2c = oracle["viewmat_w2c"]
    cam = Camera(w2c[:3, :3], w2c[:3, 3], oracle["K"], int(oracle["W"]), int(oracle["H"]))
    assert torch.allclose(cam.full_proj_transform, oracle["projmatrix"].T, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        out = render(cam, gaussians_of(oracle), oracle["background"], backend="torch")
    assert_parity(out.image, oracle["image"])


@pytest.mark.cuda
def test_torch_backend_on_gpu_reproduces_original_image(oracle):
    with torch.no_grad():
        out = render(original_camera(oracle, "cuda"), gaussians_of(oracle, "cuda"),
                     oracle["background"].cuda(), backend="torch")
    assert_parity(out.image, oracle["image"])


@pytest.mark.cuda
def test_cuda_backend_reproduces_original_image(oracle):
    from gaussian_renderer.cuda_backend import cuda_backend_available

    if not cuda_backend_available():
        pytest.skip("the CUDA extension is not built")
    with torch.no_grad():
        out = render(original_camera(oracle, "cuda"), gaussians_of(oracle, "cuda"),
                     oracle["background"].cuda(), backend="cuda")
    assert_parity(out.image, oracle["image"])
