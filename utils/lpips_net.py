"""LPIPS-VGG's network (lpips v0.1, ``net="vgg"``), built here instead of by the ``lpips`` package.

Importing ``lpips`` imports torchvision, and importing torchvision imports ``torch._dynamo``: seconds of
every train.py start-up on a machine without cached bytecode (the H200's set-up took 5.2 s with the LPIPS
term, 1.2 s without; bench/NOTES.md, session 19). The modules here have lpips.LPIPS's attribute names, so
its state dict keys (``scaling_layer.*``, ``net.slice1.0.weight`` ..., ``lin0.model.1.weight`` ...) and
the loaders that read torchvision's VGG16 checkpoint and the package's calibrated heads work unchanged
(tests/test_metrics.py loads one model's state into the other and compares the distances). The heads'
file is found inside the installed package without importing it (:func:`lpips_heads_path`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

# torchvision's vgg16 ``features`` (configuration "D") up to relu5_3, and lpips' five slices of it
VGG16_FEATURES: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
HEAD_CHANNELS = (64, 128, 256, 512, 512)  # the features' widths at the five slices' ends
SHIFT = (-0.030, -0.088, -0.188)  # lpips' ScalingLayer: ([-1, 1] input - shift) / scale
SCALE = (0.458, 0.448, 0.450)


def _vgg16_layers() -> list[nn.Module]:
    """torchvision's VGG16 feature layers 0..29: 3x3 convolutions (padding 1), in-place ReLUs, 2x2 pools."""
    layers: list[nn.Module] = []
    channels = 3
    for v in VGG16_FEATURES:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return layers


class VGG16Slices(nn.Module):
    """lpips' ``pretrained_networks.vgg16``: ``slice1`` .. ``slice5`` (layers keep torchvision's indices as
    names); ``forward`` gives the five feature maps."""

    def __init__(self) -> None:
        super().__init__()
        layers = _vgg16_layers()
        self.N_slices = len(VGG16_SLICES)
        for k, (start, stop) in enumerate(VGG16_SLICES, start=1):
            part = nn.Sequential()
            for x in range(start, stop):
                part.add_module(str(x), layers[x])
            setattr(self, f"slice{k}", part)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = []
        for k in range(1, self.N_slices + 1):
            x = getattr(self, f"slice{k}")(x)
            feats.append(x)
        return tuple(feats)


class ScalingLayer(nn.Module):
    """lpips' input normalisation of [-1, 1] images: ``(x - shift) / scale`` per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """lpips' per-layer head: dropout (identity in eval mode), then a 1x1 convolution to one channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPSNetwork(nn.Module):
    """The modules of ``lpips.LPIPS(net="vgg")``: ``scaling_layer``, ``net`` (the VGG16 slices), the heads
    ``lin0`` .. ``lin4`` and ``lins`` listing them. The distance itself is computed by
    :class:`utils.lpips_loader.LPIPSVGG`."""

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Slices()
        for k, channels in enumerate(HEAD_CHANNELS):
            setattr(self, f"lin{k}", NetLinLayer(channels))
        self.lins = nn.ModuleList([getattr(self, f"lin{k}") for k in range(len(HEAD_CHANNELS))])


def lpips_heads_path() -> Path | None:
    """The installed lpips package's calibrated VGG heads (``weights/v0.1/vgg.pth``), found without
    importing the package; None when it is not installed."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "vgg.pth"
