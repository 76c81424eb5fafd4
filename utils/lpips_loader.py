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

from utils import fast_paths
from utils.atomic import atomic_path
from utils.device import fused_kernels
from utils.errors import InputError
from utils.lpips_net import LPIPSNetwork, lpips_heads_path
from utils.lpips_trunk import (
    FIRST_CONV_CHANNELS,
    FusedHalfLPIPS,
    HalfTrunkWeights,
    fusable_trunk,
    fused_half_lpips,
    fused_vgg_trunk,
    half_trunk,
)
from utils.precision import check_precision, trunk_autocast, trunk_half_dtype

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
    to [-1, 1] and returns the per-image distance (B,) (a scalar for unbatched input).

    The distance is lpips' own (its scaling layer, VGG16 trunk, unit-normalised features, squared
    differences, linear heads, spatial means, summed over the five layers), computed here so that the
    trunk can run fast: channels-last, under ``precision`` (:mod:`utils.precision`: ``bf16`` runs the
    trunk in bfloat16 autocast on CUDA) while normalisation, differences and heads stay float32; the second
    image's trunk runs without autograd when it needs no gradient, and both in one batch when neither does.

    ``cuda_graph``: the training call (a render with a gradient against a ground truth without one, on
    CUDA) is captured once per input shape as two CUDA graphs, forward and backward
    (``torch.cuda.make_graphed_callables``), and replayed: the same kernels and numbers, without the
    hundreds of launches and the host work around them. Any other call runs eagerly; a capture that fails
    warns once and the call runs eagerly from then on."""

    def __init__(self, net: nn.Module, precision: str = "fp32", cuda_graph: bool = False) -> None:
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.precision = check_precision(precision)
        self.cuda_graph = cuda_graph
        self._channels_last = False
        self._graphed: tuple[tuple, object] | None = None  # (input signature, graphed callable)
        self._half_weights: HalfTrunkWeights | None = None  # the trunk's weights for half_trunk
        self._fused_half: FusedHalfLPIPS | None = None  # the same, for fused_half_lpips (fused_ops built)
        self._fused_warm: set[tuple] = set()  # input shapes fused_half_lpips has run eagerly
        self.graph_failure: str | None = None

    def _to_channels_last(self, device_type: str) -> None:
        """Channels-last trunk weights on CUDA (cuDNN's fast layout for tensor-core convolutions)."""
        if device_type == "cuda" and not self._channels_last:
            self.net.net.to(memory_format=torch.channels_last)
            self._channels_last = True
            dtype = trunk_half_dtype(self.precision)
            if dtype is not None:  # made here, eagerly: never inside a CUDA-graph capture
                self._half_weights = HalfTrunkWeights(self.net.net, dtype)
                if fused_kernels() is not None and dtype == torch.float16:
                    scaling = self.net.scaling_layer
                    heads = [head.model[-1].weight for head in self.net.lins]
                    self._fused_half = FusedHalfLPIPS(self._half_weights, heads, scaling.shift, scaling.scale,
                                                      FIRST_CONV_CHANNELS)

    def _half_trunk_ok(self, x: Tensor, y: Tensor, assume_captured: bool = False) -> bool:
        """Whether the training call (gradient to ``x`` only) runs :func:`half_trunk`: in CUDA-graph
        captures (as the conv_relu fast path, whose cuDNN call it uses), under a precision that has a half
        dtype for the trunk. ``assume_captured``: whether it would if this call were captured."""
        return (self._half_weights is not None and fast_paths.enabled("conv_relu") and not y.requires_grad
                and fusable_trunk(self.net.net, x)
                and (assume_captured or torch.cuda.is_current_stream_capturing()))

    def _fused_half_ok(self, x: Tensor, y: Tensor, assume_captured: bool = False) -> bool:
        """Whether the training call runs :func:`fused_half_lpips` (fast path ``lpips_fused``): where
        :func:`half_trunk` would run, on images it takes (:meth:`FusedHalfLPIPS.fits`)."""
        return (self._fused_half is not None and fast_paths.enabled("lpips_fused") and x.requires_grad
                and self._fused_half.fits(x, y) and self._half_trunk_ok(x, y, assume_captured))

    def _warm_fused_half(self, x: Tensor, y: Tensor) -> None:
        """Run :func:`fused_half_lpips` (forward and backward, results dropped) once per input shape
        outside any capture, before the first capture that will take it: cuDNN builds its convolution plans
        and CUDA loads the kernels here, which a capture would not permit (some plans failed to build in one).
        The eager training calls (the captures' warm-up steps) come here."""
        key = (tuple(x.shape), x.device)
        if key in self._fused_warm or not self._fused_half_ok(x, y, assume_captured=True):
            return
        self._fused_warm.add(key)
        probe = x.detach().clone().requires_grad_(True)
        torch.autograd.grad(fused_half_lpips(self._fused_half, probe, y.detach()).sum(), probe)

    def _trunk(self, x: Tensor) -> list[Tensor]:
        """The five VGG feature maps of scaled input ``x`` in ``x``'s dtype (float32 after bf16)."""
        device_type = x.device.type
        self._to_channels_last(device_type)
        if device_type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if (fast_paths.enabled("conv_relu") and self.precision != "bf16" and fusable_trunk(self.net.net, x)
                and torch.cuda.is_current_stream_capturing()):  # (asks the CUDA runtime: CUDA input only)
            return fused_vgg_trunk(self.net.net, x)
        with trunk_autocast(self.precision, device_type):
            feats = self.net.net(x)
        return [f.to(x.dtype) for f in feats]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if (self.cuda_graph and self.graph_failure is None and x.is_cuda and torch.is_grad_enabled()
                and x.requires_grad and not y.requires_grad):
            return self._graphed_distance(x, y)
        return self.distance(x, y)

    def _graphed_distance(self, x: Tensor, y: Tensor) -> Tensor:
        """:meth:`distance` through captured CUDA graphs (captured at the first call of each shape)."""
        key = (tuple(x.shape), tuple(y.shape), x.dtype, y.dtype, x.device)
        if self._graphed is None or self._graphed[0] != key:
            self._to_channels_last("cuda")
            sample = (x.detach().clone().requires_grad_(True), y.detach().clone())
            try:
                graphed = torch.cuda.make_graphed_callables(self.distance, sample)
            except (RuntimeError, TypeError) as exc:
                self.graph_failure = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"LPIPS: the CUDA graph capture failed ({self.graph_failure}); the perceptual "
                              "term runs eagerly", stacklevel=2)
                return self.distance(x, y)
            self._graphed = (key, graphed)
        return self._graphed[1](x, y)

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        """The LPIPS distance, eagerly."""
        single = x.dim() == 3
        if single:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        if torch.is_grad_enabled() and self._fused_half_ok(x, y):
            out = fused_half_lpips(self._fused_half, x, y)
            return out[0] if single else out
        if torch.is_grad_enabled() and x.is_cuda and not torch.cuda.is_current_stream_capturing():
            self._to_channels_last("cuda")  # (makes the fused path's weights on the first call)
            self._warm_fused_half(x, y)
        scale = self.net.scaling_layer
        a, b = scale(x * 2.0 - 1.0), scale(y * 2.0 - 1.0)
        if torch.is_grad_enabled() and self._half_trunk_ok(a, b):
            fmt = torch.channels_last
            fa, fb = half_trunk(self._half_weights, a.contiguous(memory_format=fmt),
                                b.contiguous(memory_format=fmt))
        elif torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            fa = self._trunk(a)
            with torch.set_grad_enabled(b.requires_grad):
                fb = self._trunk(b)
        else:  # no gradient wanted (metrics, evaluation): one batch through the trunk
            both = self._trunk(torch.cat([a, b]))
            fa, fb = [f[: len(a)] for f in both], [f[len(a):] for f in both]
        total = None
        fused = fused_kernels() if fast_paths.enabled("lpips_distance") else None
        for head, u, v in zip(self.net.lins, fa, fb):
            if fused is not None and _fusable(u, v):  # the same distance in one pass (fused_ops)
                term = fused.lpips_layer_distance(u, v, head.model[-1].weight).mean(dim=(1, 2)).unsqueeze(1)
            else:
                d = (_unit(u) - _unit(v)) ** 2
                term = head(d).mean(dim=(2, 3))  # (B, 1)
            total = term if total is None else total + term
        out = total.flatten()
        return out[0] if single else out

    def train(self, mode: bool = True) -> LPIPSVGG:  # stays in eval mode: no dropout in the metric
        return super().train(False)


def _fusable(u: Tensor, v: Tensor) -> bool:
    cl = torch.channels_last
    return (u.is_cuda and u.dtype == torch.float32 and v.dtype == torch.float32 and not v.requires_grad
            and u.is_contiguous(memory_format=cl) and v.is_contiguous(memory_format=cl))


def _unit(feat: Tensor, eps: float = 1e-10) -> Tensor:
    """Features divided by their norm over channels (lpips' normalisation, same epsilon)."""
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


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
                   off_hint: str = "Pass --lambda_lpips 0 to train without the perceptual term.",
                   precision: str = "fp32", cuda_graph: bool = False) -> LPIPSVGG:
    """Build LPIPS-VGG on ``device`` with the trunk from the hub cache, or raise LPIPSUnavailableError.
    ``precision``: the trunk's arithmetic (:mod:`utils.precision`); ``cuda_graph``: see :class:`LPIPSVGG`."""
    path = vgg16_weights_path()
    if not path.is_file():
        failure = download_vgg16(path)
        if failure is not None:
            raise _unavailable(f"{path} does not exist ({failure})", off_hint)
    heads = lpips_heads_path()
    if heads is None:
        raise LPIPSUnavailableError("LPIPS is unavailable: the 'lpips' package (whose calibrated heads it "
                                    f"reads) is not installed; pip install lpips. {off_hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated / not a checkpoint
        reason = f"{path} cannot be read ({type(exc).__name__}: {exc}); it may be truncated"
        raise _unavailable(reason, off_hint) from exc
    if not isinstance(state, dict):
        raise _unavailable(f"{path} does not hold a state dict", off_hint)
    model = _empty_lpips_vgg(heads, off_hint)
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
    return LPIPSVGG(model, precision, cuda_graph=cuda_graph).to(device)


def _empty_lpips_vgg(heads: Path, off_hint: str) -> LPIPSNetwork:
    """LPIPS-VGG's modules (:mod:`utils.lpips_net`) with the calibrated linear heads from ``heads`` loaded
    (the caller loads the trunk). Built plainly on the CPU: the random initialisation it overwrites costs
    0.08 s, where the meta device's ``to_empty`` imported sympy (0.5 s)."""
    model = LPIPSNetwork()
    try:
        state = torch.load(heads, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unavailable(f"the lpips package's calibrated heads {heads} cannot be read "
                           f"({type(exc).__name__}: {exc}); pip install --force-reinstall lpips",
                           off_hint) from exc
    wanted = {k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.")}
    if not wanted <= set(state):
        raise _unavailable(f"{heads} lacks {sorted(wanted - set(state))[:3]}; reinstall lpips", off_hint)
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return model.eval()


def try_load_lpips_vgg(device: torch.device | str = "cpu",
                       precision: str = "fp32") -> tuple[LPIPSVGG | None, str | None]:
    """(model, None) or (None, reason): for evaluation, which reports LPIPS as null with the reason."""
    try:
        hint = "LPIPS is reported as null; PSNR and SSIM are unaffected."
        return load_lpips_vgg(device, off_hint=hint, precision=precision), None
    except LPIPSUnavailableError as exc:
        return None, str(exc)

