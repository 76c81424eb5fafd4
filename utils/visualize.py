"""Visualisation: the viridis colour map on tensors, error maps, uncertainty colours, image grids.

The viridis table is matplotlib's 256-entry LUT, read once and interpolated linearly, so colouring a
whole image or all Gaussians is one vectorised lookup on any device.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

ERROR_GAIN = 10.0  # docs/maths.md section 10: viridis(sigmoid(10 * mean abs error))
UNCERTAINTY_GAIN = 2.5  # docs/maths.md section 10: viridis(sigmoid(2.5 * uncertainty))


@functools.lru_cache(maxsize=1)
def _viridis_lut() -> Tensor:
    from matplotlib import colormaps

    cmap = colormaps["viridis"].resampled(256)
    return torch.tensor(cmap(list(range(256)))[:, :3], dtype=torch.float32)


def viridis(values: Tensor) -> Tensor:
    """Values in [0, 1] (any shape, clamped) -> RGB (..., 3) in [0, 1]."""
    lut = _viridis_lut().to(values.device)
    x = values.detach().float().clamp(0, 1) * (lut.shape[0] - 1)
    lo = x.floor().long().clamp(max=lut.shape[0] - 2)
    w = (x - lo.float()).unsqueeze(-1)
    return lut[lo] * (1 - w) + lut[lo + 1] * w


def uncertainty_colors(uncertainty: Tensor) -> Tensor:
    """Per-Gaussian colours (N, 3) = viridis(sigmoid(2.5 * uncertainty))."""
    return viridis(torch.sigmoid(UNCERTAINTY_GAIN * uncertainty.reshape(-1)))


def error_map(render: Tensor, gt: Tensor, mask: Tensor | None = None,
              background: Tensor | None = None) -> Tensor:
    """(3,H,W) viridis(sigmoid(10 * per-pixel mean abs error)) inside ``mask`` (1,H,W) or (H,W);
    outside it the ``background`` colour (3,) (white by default)."""
    err = (render - gt).abs().mean(0)
    col = viridis(torch.sigmoid(ERROR_GAIN * err)).permute(2, 0, 1)
    if mask is None:
        return col
    m = mask.reshape(1, *err.shape).to(col.dtype)
    bg = torch.ones(3, device=col.device) if background is None else background.to(col.device, col.dtype)
    return col * m + bg.view(3, 1, 1) * (1 - m)


def caption_strip(text: str, width: int, height: int | None = None) -> Tensor:
    """A white (3, h, width) strip with ``text`` in black, centred (Pillow's built-in font, scaled to the
    strip: about a ninth of the panel width, at least 10 pixels)."""
    from PIL import Image, ImageDraw, ImageFont

    h = height or max(10, min(24, width // 9))
    strip = Image.new("L", (width, h), 255)
    draw = ImageDraw.Draw(strip)
    try:
        font = ImageFont.load_default(size=max(8, h - 4))
    except TypeError:  # Pillow < 10.1: the fixed bitmap font only
        font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((width - (right - left)) / 2 - left, (h - (bottom - top)) / 2 - top), text, fill=0, font=font)
    grey = torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255.0)
    return grey.expand(3, -1, -1).clone()


def image_grid(images: list[Tensor], ncols: int | None = None, pad: int = 2,
               pad_value: float = 1.0, labels: list[str] | None = None) -> Tensor:
    """Tile equally sized (3,H,W) images row-major into one (3, H', W') image with ``pad`` pixels between;
    ``labels`` (one per image) are written in a strip above each panel."""
    if labels is not None:
        if len(labels) != len(images):
            raise ValueError(f"image_grid: {len(labels)} labels for {len(images)} images")
        images = [torch.cat([caption_strip(t, im.shape[-1]).to(im), im], 1) for t, im in zip(labels, images)]
    if not images:
        raise ValueError("image_grid: no images")
    c, h, w = images[0].shape
    for im in images:
        if im.shape != (c, h, w):
            raise ValueError(f"image_grid: sizes differ, {tuple(im.shape)} vs {(c, h, w)}")
    n = len(images)
    ncols = n if ncols is None else max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    out = torch.full((c, nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad), pad_value,
                     dtype=images[0].dtype, device=images[0].device)
    for k, im in enumerate(images):
        r, q = divmod(k, ncols)
        out[:, r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = im.detach()
    return out
