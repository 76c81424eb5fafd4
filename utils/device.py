"""Device handling, the one place for it: scripts resolve ``--device`` here and pass the result on."""

from __future__ import annotations

import torch

from utils.errors import InputError


class DeviceError(InputError):
    """``--device`` names a device this machine does not have."""


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``auto`` (or None) -> CUDA when available, else CPU; otherwise ``torch.device(spec)``, refused with
    :class:`DeviceError` (a domain error: one line in the scripts) when it names CUDA on a machine
    without it."""
    if spec in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {spec}: CUDA is not available on this machine; "
                           "use --device cpu or auto")
    return device


def fused_adam_ok(params) -> bool | None:
    """``fused=`` for ``torch.optim.Adam``: True when every parameter is a CUDA float tensor (one kernel
    launch per step and group; measured on an H100 for the avatar's two optimisers: 1.5-1.8 ms -> 0.45 ms
    per step), else None (torch's default)."""
    params = list(params)
    return True if params and all(p.is_cuda and p.is_floating_point() for p in params) else None


def fused_kernels():
    """The ``fused_ops`` package (submodules/fused-ops) when its CUDA kernels are built, else None."""
    try:
        import fused_ops
    except ImportError:
        return None
    return fused_ops if fused_ops.available() else None
