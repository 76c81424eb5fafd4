"""LPIPS-VGG from the ``lpips`` package, loaded offline from torch's hub cache (docs/maths.md sections 9, 10).

``lpips`` ships its own linear calibration layers; the VGG16 trunk is torchvision's ImageNet
checkpoint in the hub cache (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``). When the file is
missing it is downloaded there once, as torchvision would (with its progress bar; set
``GAUSSIAN_NO_DOWNLOAD=1`` to never try); when that fails (no network) or the file is unreadable,
:class:`LPIPSUnavailableError` says where to put it and which flag turns the perceptual term off.
Only the ``features.*`` tensors of the checkpoint are read (memory-mapped), so the classifier part may be
absent.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from utils.atomic import atomic_path
from utils.errors import InputError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"


class LPIPSUnavailableError(InputError):
    """The VGG backbone weights for LPIPS cannot be loaded; the message says how to fix it."""


def vgg16_weights_path() -> Path:
    """Where torchvision's hub cache keeps the VGG16 checkpoint (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def _unavailable(reason: str, off_hint: str) -> LPIPSUnavailableError:
    path = vgg16_weights_path()
    return LPIPSUnavailableError(
        f"LPIPS-VGG is unavailable: {reason}. Download {VGG16_URL} on a machine with internet and put it at "
        f"{path} (torch's hub cache; set TORCH_HOME to use another cache folder, the file then goes to "
        f"$TORCH_HOME/hub/checkpoints/{VGG16_FILENAME}). {off_hint}")


class LPIPSVGG(nn.Module):
    """Frozen LPIPS-VGG. ``forward(x, y)`` takes images in [0, 1], (3,H,W) or (B,3,H,W), scales them
    to [-1, 1] and returns the per-image distance (B,) (a scalar for unbatched input)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        single = x.dim() == 3
        if single:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        out = self.net(x * 2.0 - 1.0, y * 2.0 - 1.0).flatten()
        return out[0] if single else out

    def train(self, mode: bool = True) -> LPIPSVGG:  # stays in eval mode: no dropout in the metric
        return super().train(False)


_DOWNLOAD_FAILED: dict[Path, str] = {}  # one attempt per file and process: evaluations ask repeatedly


def download_vgg16(path: Path, timeout_s: float = 30.0) -> str | None:
    """Fetch torchvision's VGG16 checkpoint to ``path`` (atomically, with a progress bar); None when it is
    there, else why not. ``GAUSSIAN_NO_DOWNLOAD=1`` skips the attempt (offline machines, the tests)."""
    if os.environ.get("GAUSSIAN_NO_DOWNLOAD"):
        return "downloads are off: GAUSSIAN_NO_DOWNLOAD is set"
    if path in _DOWNLOAD_FAILED:
        return _DOWNLOAD_FAILED[path]
    print(f"LPIPS: downloading {VGG16_URL} to {path} (528 MB, once)", file=sys.stderr)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.hub.download_url_to_file(VGG16_URL, str(tmp), progress=True)
    except (OSError, ValueError, RuntimeError) as exc:  # URLError is an OSError
        _DOWNLOAD_FAILED[path] = f"the download failed: {type(exc).__name__}: {exc}"
        return _DOWNLOAD_FAILED[path]
    finally:
        socket.setdefaulttimeout(previous)
    return None


def load_lpips_vgg(device: torch.device | str = "cpu",
                   off_hint: str = "Pass --lambda_lpips 0 to train without the perceptual term.") -> LPIPSVGG:
    """Build LPIPS-VGG on ``device`` with the trunk from the hub cache, or raise LPIPSUnavailableError."""
    path = vgg16_weights_path()
    if not path.is_file():
        failure = download_vgg16(path)
        if failure is not None:
            raise _unavailable(f"{path} does not exist ({failure})", off_hint)
    try:
        import lpips
    except ImportError as exc:
        raise LPIPSUnavailableError(f"LPIPS is unavailable: the 'lpips' package is not installed ({exc}); "
                                    f"pip install lpips. {off_hint}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated / not a checkpoint
        reason = f"{path} cannot be read ({type(exc).__name__}: {exc}); it may be truncated"
        raise _unavailable(reason, off_hint) from exc
    if not isinstance(state, dict):
        raise _unavailable(f"{path} does not hold a state dict", off_hint)
    # pnet_rand=True: lpips builds an untrained trunk without touching the network; we fill it below.
    with warnings.catch_warnings():  # torchvision's deprecation notes about lpips' 'pretrained' argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    trunk = {}
    for name, param in model.net.named_parameters():
        _slice, idx, kind = name.split(".")  # e.g. slice1.0.weight -> features.0.weight
        key = f"features.{idx}.{kind}"
        if key not in state:
            raise _unavailable(f"{path} has no tensor {key!r} (not a torchvision VGG16 checkpoint)", off_hint)
        if tuple(state[key].shape) != tuple(param.shape):
            raise _unavailable(f"{path}: {key} has shape {tuple(state[key].shape)}, expected "
                               f"{tuple(param.shape)}", off_hint)
        trunk[name] = state[key]
    model.net.load_state_dict(trunk, strict=True)
    return LPIPSVGG(model).to(device)


def try_load_lpips_vgg(device: torch.device | str = "cpu") -> tuple[LPIPSVGG | None, str | None]:
    """(model, None) or (None, reason): for evaluation, which reports LPIPS as null with the reason."""
    try:
        hint = "LPIPS is reported as null; PSNR and SSIM are unaffected."
        return load_lpips_vgg(device, off_hint=hint), None
    except LPIPSUnavailableError as exc:
        return None, str(exc)

