"""Install the avatar packages and, where a CUDA toolkit is present, build our CUDA extensions (the
rasterizer, and fused_ops: HyperGaussians' conditional mean and a one-launch Adam, opt-in).

The Python packages need nothing at build time. The CUDA extensions
(``diff_gaussian_rasterization._C``, ``fused_ops._C``) need torch already installed, so install with
``--no-build-isolation`` (``install.sh`` does): an isolated build would download torch again.
Without a CUDA toolkit the extension is skipped with a message and the torch backend is used.
Set ``GAUSSIAN_SKIP_CUDA_BUILD=1`` to skip it on purpose; ``TORCH_CUDA_ARCH_LIST`` is honoured
(default: the visible GPU's architecture, or ``9.0`` when no GPU is visible).
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
RASTER_DIR = os.path.join("submodules", "diff-gaussian-rasterization")
KNN_DIR = os.path.join("submodules", "simple-knn")
FUSED_DIR = os.path.join("submodules", "fused-ops")


def _say(msg: str) -> None:
    print(f"[setup.py] {msg}", file=sys.stderr)


def cuda_extensions() -> tuple[list, dict]:
    """The CUDA extension and its build command, or nothing (with the reason) when it cannot build."""
    if os.environ.get("GAUSSIAN_SKIP_CUDA_BUILD", "0") == "1":
        _say("GAUSSIAN_SKIP_CUDA_BUILD=1: skipping the CUDA rasterizer; the torch backend will be used.")
        return [], {}
    if not os.environ.get("CUDA_HOME") and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"  # the nvcc wrapper on PATH cannot link on its own
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        _say("torch is not importable at build time (install torch first and use --no-build-isolation): "
             "skipping the CUDA rasterizer; the torch backend will be used.")
        return [], {}
    if CUDA_HOME is None or torch.version.cuda is None:
        _say("no CUDA toolkit found (CUDA_HOME unset, no nvcc) or torch is a CPU build: skipping the CUDA "
             "rasterizer; the torch backend will be used.")
        return [], {}
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        _say("no GPU visible and TORCH_CUDA_ARCH_LIST unset: compiling for sm_90 (H100).")
    sources = sorted(glob.glob(os.path.join(RASTER_DIR, "csrc", "*.cpp"))
                     + glob.glob(os.path.join(RASTER_DIR, "csrc", "*.cu")))
    if not sources:
        _say(f"no sources under {RASTER_DIR}/csrc: skipping the CUDA rasterizer.")
        return [], {}
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "auto")
    _say(f"building the CUDA rasterizer for TORCH_CUDA_ARCH_LIST={arch}")
    flags = {"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]}
    ext = CUDAExtension(
        name="diff_gaussian_rasterization._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, RASTER_DIR, "csrc")],
        extra_compile_args=flags,
    )
    # our other fused kernels (submodules/fused-ops): HyperGaussians' conditional mean, Adam in one launch
    fused_sources = sorted(glob.glob(os.path.join(FUSED_DIR, "csrc", "*.cpp"))
                        + glob.glob(os.path.join(FUSED_DIR, "csrc", "*.cu")))
    fused = CUDAExtension(name="fused_ops._C", sources=fused_sources, extra_compile_args=flags)
    return [ext, fused], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extensions()

setup(
    name="gaussian-head-avatars",
    version="0.1.0",
    description="Monocular-video Gaussian head avatars: FlashAvatar and HyperGaussians",
    python_requires=">=3.10",
    packages=["flame", "scene", "gaussian_renderer", "utils", "preprocessing",
              "simple_knn", "diff_gaussian_rasterization", "fused_ops"],
    package_dir={
        "simple_knn": os.path.join(KNN_DIR, "simple_knn"),
        "fused_ops": os.path.join(FUSED_DIR, "fused_ops"),
        "diff_gaussian_rasterization": os.path.join(RASTER_DIR, "diff_gaussian_rasterization"),
    },
    install_requires=[
        "torch>=2.4,<2.15",
        "torchvision>=0.19,<0.30",
        "numpy>=1.24",
        "scipy>=1.10",
        "pillow>=9.0",
        "tqdm>=4.60",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.4.9",
        "tensorboard>=2.12",
        "lpips>=0.1.4",
        "matplotlib>=3.7",
    ],
    extras_require={
        # preprocessing a custom video: RVM matting (ONNX) and the offline face-landmark models (LiteRT)
        "preprocess": ["onnxruntime>=1.19", "ai-edge-litert>=2.3,<3"],
        # skimage ships the real portrait (astronaut) the preprocessing tests run on; hypothesis fuzzes
        # the file loaders (damaged input must raise the project's own errors)
        # selenium drives headless Chromium in the viewer's browser test (Debian's chromium + chromedriver)
        "test": ["pytest>=7.4", "ruff>=0.5", "scikit-image>=0.24", "hypothesis>=6.0", "selenium>=4.10"],
        # view.py: viser serves the web page (camera, controls, image streaming) the viewer is built on
        "view": ["viser>=1.0,<2"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
