"""Shared test fixtures.

``synthetic_subject`` (session scope) generates one small synthetic subject (docs/maths.md section 12) into a
temporary folder the first time a test asks for it and returns a ``SyntheticSubjectInfo``
``(data_root, tracking_root, idname)`` - a NamedTuple, so ``data_root, tracking_root, idname =
synthetic_subject`` works. Other tests rely on this name and return value: keep them stable. The
subject has ``SYNTHETIC_FRAMES`` frames of ``SYNTHETIC_SIZE`` x ``SYNTHETIC_SIZE`` pixels, a synthetic
FLAME model of resolution ``SYNTHETIC_RESOLUTION`` in ``<data_root>/<idname>/flame/`` (found by
``flame.assets.resolve_flame_dir(None, data_root / idname)``), and tracker-format ``.frame`` files in
``<tracking_root>/<idname>/checkpoint/``. Treat it as read-only (it is shared by the session).
"""

from __future__ import annotations

import os

# Never download model weights during the tests (LPIPS' VGG16 would be 528 MB per empty TORCH_HOME); the
# download path itself is tested with a stand-in downloader.
os.environ.setdefault("GAUSSIAN_NO_DOWNLOAD", "1")
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

SYNTHETIC_FRAMES = 32
SYNTHETIC_SIZE = 64
SYNTHETIC_RESOLUTION = 32
SYNTHETIC_SEED = 0


class SyntheticSubjectInfo(NamedTuple):
    data_root: Path
    tracking_root: Path
    idname: str


@pytest.fixture(scope="session")
def synthetic_subject(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSubjectInfo:
    """A small synthetic subject shared by the whole test session (see module docstring)."""
    from preprocessing.synthetic_subject import make_synthetic_subject

    root = tmp_path_factory.mktemp("synthetic_subject")
    data_root, tracking_root = root / "dataset", root / "tracking"
    make_synthetic_subject(data_root, tracking_root, "synth", n_frames=SYNTHETIC_FRAMES,
                           image_size=SYNTHETIC_SIZE, seed=SYNTHETIC_SEED, resolution=SYNTHETIC_RESOLUTION)
    return SyntheticSubjectInfo(data_root, tracking_root, "synth")


@pytest.fixture(scope="session")
def raster_oracle() -> dict:
    """The raster oracle (a trained head scene and the original rasterizer's image of it), loaded from
    ``$RASTER_ORACLE_DIR/head_scene.pt``, by default ``shared/data/raster_oracle/`` beside the checkout;
    the test skips when it is absent."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "raster_oracle"
    path = Path(os.environ.get("RASTER_ORACLE_DIR") or default) / "head_scene.pt"
    if not path.is_file():
        pytest.skip(f"raster oracle not found at {path} (set RASTER_ORACLE_DIR to its folder)")
    return torch.load(path, weights_only=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` when no GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_precision_switches():
    """--precision sets process-wide TF32 switches (utils/precision.py); a test that trains or sets them
    in-process must not change the arithmetic of the tests after it."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.benchmark) = saved
