"""BiSeNet face parsing (19 CelebAMask-HQ classes), written from the published architecture.

BiSeNet (Yu et al., ECCV 2018) as used by the widely shared face-parsing network: a ResNet-18 context
path whose 1/8 feature doubles as the spatial path, attention refinement modules on the 1/16 and 1/32
features plus a global-average context, a feature fusion module, and three output heads (the main
one at 1/8, two auxiliary ones used in training). Module names and tensor shapes follow the official
checkpoint ``79999_iter.pth`` so its state dict loads strictly; :func:`expected_state_dict_layout`
writes that layout out from the architecture. No weights ship with the project: the user gives the
file (see :data:`BISENET_HELP`).

Classes: 0 background, 1 skin, 2 l_brow, 3 r_brow, 4 l_eye, 5 r_eye, 6 eye_g, 7 l_ear, 8 r_ear,
9 ear_r, 10 nose, 11 mouth, 12 u_lip, 13 l_lip, 14 neck, 15 neck_l, 16 cloth, 17 hair, 18 hat.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

N_CLASSES = 19
CLASS_NAMES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
               "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")
INPUT_SIZE = 512
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
BISENET_HELP = ("BiSeNet face-parsing weights are not bundled: download 79999_iter.pth from the "
                "face-parsing.PyTorch project (github.com/zllrunning/face-parsing.PyTorch, link in its "
                "README) and pass its path with --bisenet_weights; without weights the offline landmark "
                "backend is used")


class ConvBNReLU(nn.Module):
    """conv (no bias) -> batch norm -> ReLU."""

    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs, 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class Resnet18(nn.Module):
    """ResNet-18 trunk without the classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class AttentionRefinementModule(nn.Module):
    """3x3 ConvBNReLU, then a channel attention from the global average (1x1 conv, BN, sigmoid)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3, 1, 1)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))
        return feat * atten


class ContextPath(nn.Module):
    """ResNet-18 + ARMs on 1/16, 1/32 + global context; returns (1/8 trunk, refined 1/8, refined 1/16)."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        feat32_sum = self.arm32(feat32) + F.interpolate(avg, size=feat32.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, size=feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, size=feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    """Concatenate spatial and context features, 1x1 ConvBNReLU, add a squeeze-excitation reweighting."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp: Tensor, fcp: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean(dim=(2, 3), keepdim=True)))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    """3x3 ConvBNReLU then a 1x1 classifier (no bias)."""

    def __init__(self, cin: int, cmid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cmid, 3, 1, 1)
        self.conv_out = nn.Conv2d(cmid, n_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face-parsing BiSeNet. ``forward`` returns the main logits (B, n_classes, H, W) at input size;
    ``forward_all`` also the two auxiliary heads (training-time outputs, kept for checkpoint parity)."""

    def __init__(self, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        size = x.shape[2:]
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        fuse = self.ffm(feat8, feat_cp8)
        up = [F.interpolate(head, size=size, mode="bilinear", align_corners=True)
              for head in (self.conv_out(fuse), self.conv_out16(feat_cp8), self.conv_out32(feat_cp16))]
        return up[0], up[1], up[2]

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        feat8, feat_cp8, _ = self.cp(x)
        return F.interpolate(self.conv_out(self.ffm(feat8, feat_cp8)), size=size, mode="bilinear",
                             align_corners=True)


def expected_state_dict_layout(n_classes: int = N_CLASSES) -> dict[str, tuple[int, ...]]:
    """Every key of the official checkpoint and its shape, written out from the architecture (not from
    the module), so a test can hold :class:`BiSeNet` to it. Batch norms carry weight, bias,
    running_mean, running_var (C,) and num_batches_tracked ()."""
    layout: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        layout[f"{name}.weight"] = (cout, cin, k, k)

    def bn(name: str, c: int) -> None:
        for field in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{name}.{field}"] = (c,)
        layout[f"{name}.num_batches_tracked"] = ()

    def cbr(name: str, cin: int, cout: int, k: int) -> None:
        conv(f"{name}.conv", cout, cin, k)
        bn(f"{name}.bn", cout)

    conv("cp.resnet.conv1", 64, 3, 7)
    bn("cp.resnet.bn1", 64)
    for li, (cin, cout, stride) in enumerate([(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)], 1):
        for bi in range(2):
            pre = f"cp.resnet.layer{li}.{bi}"
            c_in = cin if bi == 0 else cout
            conv(f"{pre}.conv1", cout, c_in, 3)
            bn(f"{pre}.bn1", cout)
            conv(f"{pre}.conv2", cout, cout, 3)
            bn(f"{pre}.bn2", cout)
            if bi == 0 and (cin != cout or stride != 1):
                conv(f"{pre}.downsample.0", cout, cin, 1)
                bn(f"{pre}.downsample.1", cout)
    for name, cin in (("cp.arm16", 256), ("cp.arm32", 512)):
        cbr(f"{name}.conv", cin, 128, 3)
        conv(f"{name}.conv_atten", 128, 128, 1)
        bn(f"{name}.bn_atten", 128)
    cbr("cp.conv_head32", 128, 128, 3)
    cbr("cp.conv_head16", 128, 128, 3)
    cbr("cp.conv_avg", 512, 128, 1)
    cbr("ffm.convblk", 256, 256, 1)
    conv("ffm.conv1", 64, 256, 1)
    conv("ffm.conv2", 256, 64, 1)
    for name, cin, cmid in (("conv_out", 256, 256), ("conv_out16", 128, 64), ("conv_out32", 128, 64)):
        cbr(f"{name}.conv", cin, cmid, 3)
        conv(f"{name}.conv_out", n_classes, cmid, 1)
    return layout


def _unwrap_checkpoint(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a BiSeNet state dict (a dict of tensors); {BISENET_HELP}")
    # nn.DataParallel saves 'module.'-prefixed keys
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_bisenet(path: str | Path, device: str | torch.device = "cpu") -> BiSeNet:
    """Build BiSeNet and load the official weights strictly (``num_batches_tracked`` may be absent).

    Raises FileNotFoundError naming where to get the file, ValueError on a layout mismatch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BiSeNet weights not found; {BISENET_HELP}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the BiSeNet checkpoint ({exc}); re-download it. "
                         f"{BISENET_HELP}") from exc
    state = _unwrap_checkpoint(state, path)
    layout = expected_state_dict_layout()
    missing = [k for k in layout if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in layout]
    wrong = [f"{k} {tuple(state[k].shape)} != {layout[k]}" for k in layout
             if k in state and tuple(state[k].shape) != layout[k]]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: not the 19-class face-parsing BiSeNet checkpoint: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}; {BISENET_HELP}")
    model = BiSeNet(N_CLASSES)
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent (checked above)
    return model.to(device).eval()


def preprocess(images: np.ndarray, size: int = INPUT_SIZE) -> Tensor:
    """uint8 (B,H,W,3) or (H,W,3) RGB -> normalised float (B,3,size,size) as the network was trained."""
    arr = images[None] if images.ndim == 3 else images
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def parse_labels(model: BiSeNet, images: np.ndarray, batch_size: int = 4,
                 size: int = INPUT_SIZE) -> np.ndarray:
    """Per-pixel class labels (B,H,W) uint8 at the input resolution for uint8 RGB images (B,H,W,3);
    the network sees them at ``size`` x ``size`` (512, its training size)."""
    arr = images[None] if images.ndim == 3 else images
    device = next(model.parameters()).device
    h, w = arr.shape[1:3]
    out = []
    for i in range(0, len(arr), batch_size):
        logits = model(preprocess(arr[i:i + batch_size], size).to(device))
        if logits.shape[2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        out.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)
