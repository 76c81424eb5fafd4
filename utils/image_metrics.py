"""Image quality metrics shared by training evaluation and ``metrics.py`` (docs/maths.md section 10).

PSNR = 20 log10(1 / sqrt(mse)) with mse over all 3*H*W values; SSIM with an 11x11 Gaussian window
(sigma 1.5), C1 = 0.01^2, C2 = 0.03^2, zero padding to the same size, mean over pixels and channels.
Both take (3, H, W) or batched (B, 3, H, W) tensors in [0, 1] and return one value per image.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def _batched(x: Tensor) -> Tensor:
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected an image (C,H,W) or a batch (B,C,H,W), got shape {tuple(x.shape)}")
    return x


def psnr(img: Tensor, gt: Tensor) -> Tensor:
    """Per-image PSNR in dB, (B,) or a scalar for unbatched input. Identical images give +inf."""
    a, b = _batched(img), _batched(gt)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    out = 20.0 * torch.log10(1.0 / torch.sqrt(mse))
    return out[0] if img.dim() == 3 else out


def masked(img: Tensor, mask: Tensor) -> Tensor:
    """img * mask with the mask broadcast over channels: pixels outside count as zero error."""
    if mask.dim() == img.dim() - 1:
        mask = mask.unsqueeze(-3)
    return img * mask


@functools.lru_cache(maxsize=8)
def _gaussian_1d(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """The normalised 2D Gaussian window (size, size), float64, as an outer product."""
    g = _gaussian_1d(size, sigma)
    return torch.outer(g, g)


def _filter(x: Tensor, window: Tensor) -> Tensor:
    c = x.shape[1]
    w = window.to(x.dtype).to(x.device).expand(c, 1, *window.shape)
    return F.conv2d(x, w, padding=window.shape[-1] // 2, groups=c)


def ssim_map(img: Tensor, gt: Tensor, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """The per-pixel, per-channel SSIM map (B, C, H, W) with a zero-padded Gaussian window."""
    a, b = _batched(img), _batched(gt)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    win = gaussian_window(window_size, sigma)
    mu1, mu2 = _filter(a, win), _filter(b, win)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s11 = _filter(a * a, win) - mu1_sq
    s22 = _filter(b * b, win) - mu2_sq
    s12 = _filter(a * b, win) - mu12
    num = (2 * mu12 + SSIM_C1) * (2 * s12 + SSIM_C2)
    den = (mu1_sq + mu2_sq + SSIM_C1) * (s11 + s22 + SSIM_C2)
    return num / den


def ssim(img: Tensor, gt: Tensor, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """Per-image mean SSIM, (B,) or a scalar for unbatched input."""
    out = ssim_map(img, gt, window_size, sigma).flatten(1).mean(1)
    return out[0] if img.dim() == 3 else out
