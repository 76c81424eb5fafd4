"""Arithmetic precision of the GPU fast paths, the one place for it (``--precision``).

- ``fp32``: plain float32 everywhere (TF32 off for matrix products and convolutions): the reference.
- ``tf32``: matrix products (the deformation MLP) and convolutions (LPIPS' VGG) on the tensor cores in
  TF32 (10-bit mantissa products, float32 accumulation and storage); the captured training step runs
  LPIPS' VGG trunk in float16 (the same 10-bit mantissa, float32 accumulation; ``trunk_half_dtype``).
- ``bf16``: as tf32, and the LPIPS VGG trunk runs in bfloat16 autocast, channels-last; its features are
  cast back to float32 before LPIPS' normalisation, differences and linear heads, so the distance itself
  is summed in float32. The value stays within 0.1% of float32, but the image gradient through thirteen
  bfloat16 convolutions is right only in direction (cosine 0.987, 16% relative L2 on a photograph pair;
  tests/test_metrics.py): opt-in, not the default.

The Gaussians, the rasterizer and the losses other than LPIPS stay float32 in every mode. CPU runs ignore
the setting (no tensor cores; autocast on the CPU is slower than float32 there).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    return name


def set_precision(name: str, device: torch.device | str | None = None) -> None:
    """Set the process-wide TF32 switches for ``name``. cuDNN's autotuner (``cudnn.benchmark``) stays
    off: on the H200 it made LPIPS-VGG's first step at 512x512 take 33.8 GiB of GPU memory (it times every
    algorithm, workspaces included, and torch's allocator keeps the peak), for 7.6-10.7 ms a step against
    8.8 ms with cuDNN's heuristics at 0.8 GiB (bench/bench_lpips.py, tf32). ``device`` is accepted for
    the callers' symmetry and not needed."""
    check_precision(name)
    tf32 = name != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = False


def configure_arithmetic(run, device: torch.device | str | None = None) -> None:
    """Apply a run's ``--precision`` and ``--no_fused_kernels`` (``utils.options.RunOptions``)."""
    set_precision(run.precision, device)
    if not run.fused_kernels:
        from utils.fast_paths import plain_paths

        plain_paths()


def trunk_half_dtype(name: str) -> torch.dtype | None:
    """The dtype LPIPS' VGG trunk runs in for the captured training call on CUDA
    (``utils.lpips_trunk.half_trunk``), or None for the float32 trunk: float16 under ``tf32``. Float16 has
    TF32's 10-bit mantissa; VGG's activations on [-1, 1] images stay far inside its range, and the gradient
    is scaled into it. Its image gradient is as far from fp32's as TF32's (tests/test_metrics.py)."""
    return torch.float16 if name == "tf32" else None


def trunk_autocast(name: str, device_type: str):
    """The context the LPIPS VGG trunk runs in: bfloat16 autocast for ``bf16`` on CUDA, else nothing."""
    if name == "bf16" and device_type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)  # CUDA-graph safe
    return contextlib.nullcontext()
