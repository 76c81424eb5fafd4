"""Image I/O, the one place for it: read RGB and grey images as float in [0, 1], write 8-bit PNGs.

Reads go through Pillow and fail with an :class:`ImageReadError` that names the file; writes round
to the nearest 8-bit value (not truncate, docs/maths.md section 10) and are atomic (temp file +
``os.replace``) so a crash never leaves a half-written PNG that a later run would trust.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.atomic import atomic_open
from utils.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageReadError(InputError):
    """An image file that is missing, truncated or not an image."""


def find_image(folder: str | Path, stem: str) -> Path | None:
    """``folder/<stem>.png|jpg|jpeg`` where one exists (in that order), else None."""
    for suffix in IMAGE_SUFFIXES:
        path = Path(folder) / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found; check the path or regenerate the file")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(
            f"{path}: cannot decode the image ({exc}); the file is corrupt or not a PNG/JPG - "
            "re-export or regenerate it") from exc
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image, from its header only (cheap)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: image file not found; check the path or regenerate the file") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(
            f"{path}: cannot read the image header ({exc}); the file is corrupt or not a PNG/JPG - "
            "re-export or regenerate it") from exc
    return int(h), int(w)


def check_image(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image whose whole file was checked (chunk CRCs, truncation) without decoding
    its pixels: the cheap full check of a frame that will only be read later."""
    path = Path(path)
    h, w = image_size(path)
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: the image file is damaged ({exc}); re-export or regenerate it"
                             ) from exc
    return h, w


def read_image_uint8(path: str | Path) -> np.ndarray:
    """RGB image as uint8 (H, W, 3); grey or RGBA inputs are converted (alpha dropped)."""
    img = _open(path)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def read_mask_uint8(path: str | Path) -> np.ndarray:
    """Grey mask as uint8 (H, W); colour inputs are converted to luminance (L)."""
    img = _open(path)
    if img.mode != "L":
        img = img.convert("L")
    return np.array(img, dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """RGB image as float32 (H, W, 3) in [0, 1] (value / 255)."""
    return read_image_uint8(path).astype(np.float32) / 255.0


def read_mask(path: str | Path) -> np.ndarray:
    """Grey mask as float32 (H, W) in [0, 1] (value / 255)."""
    return read_mask_uint8(path).astype(np.float32) / 255.0


def to_uint8(array: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float image in [0, 1] -> uint8 by rounding to nearest; (3,H,W) / (1,H,W) tensors are moved
    to (H,W,C); uint8 input passes through. NaN becomes 0. A float tensor is quantised where it lives (on
    the GPU for renders) in its own precision and only the 8-bit result is copied to the host."""
    if isinstance(array, torch.Tensor):
        t = array.detach()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        if t.is_floating_point():
            t = torch.nan_to_num(t, nan=0.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
        array = t.contiguous().cpu().numpy()
    a = np.asarray(array)
    if a.dtype == np.uint8:
        out = a
    else:
        a = np.nan_to_num(a.astype(np.float64), nan=0.0)
        out = np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    if out.ndim == 3 and out.shape[-1] == 1:
        out = out[..., 0]
    if out.ndim not in (2, 3) or (out.ndim == 3 and out.shape[-1] not in (3, 4)):
        raise ValueError(f"write_image: expected (H,W), (H,W,3) or (3,H,W) data, got shape "
                         f"{tuple(out.shape)}")
    return out


PNG_COMPRESS_LEVEL = 1  # zlib level: lossless either way; 1 encodes several times faster than PIL's 6


def write_image(path: str | Path, array: np.ndarray | torch.Tensor) -> Path:
    """Write a float [0, 1] (or uint8) image as PNG, rounding to the nearest 8-bit value, atomically.
    Accepts (H,W), (H,W,3), (3,H,W) or (1,H,W), numpy or torch. Creates parent folders."""
    path = Path(path)
    data = to_uint8(array)
    with atomic_open(path, "wb") as fh:
        Image.fromarray(data).save(fh, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return path


def _write_then(path: Path, data: np.ndarray, then: Callable[[np.ndarray], None] | None) -> None:
    write_image(path, data)
    if then is not None:
        then(data)


def finish(pending: Iterable[Future], pool: ThreadPoolExecutor) -> None:
    """Wait for every one of ``pending`` (raising the first failure) and shut ``pool`` down either way."""
    try:
        for fut in pending:
            fut.result()
    finally:
        pool.shutdown(wait=True)


class ImageWriter:
    """Writes PNGs on a small thread pool, so that encoding (zlib, which releases the GIL) overlaps the
    next frame's rendering. ``submit(path, array)`` converts to 8 bit at once on the calling thread (so a
    GPU tensor or a buffer that will be overwritten is read now) and queues the atomic write; at most
    ``max_pending`` writes wait at a time. Leaving the ``with`` block waits for every write and raises
    the first error, naming the file. Same bytes as :func:`write_image`. ``then``, when given, runs on the
    worker after the write, with the 8-bit image (another encoding of it: tensorboard's)."""

    def __init__(self, workers: int | None = None, max_pending: int | None = None) -> None:
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.max_pending = max_pending or 4 * self.workers
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="png")
        self._pending: deque[Future] = deque()

    def submit(self, path: str | Path, array: np.ndarray | torch.Tensor,
               then: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """Queue the write of ``array`` (then ``then(data)``); returns its 8-bit form (for a video of the
        same frames)."""
        data = to_uint8(array)
        if data is array or not data.flags.owndata:  # a view of the caller's memory: snapshot it now
            data = data.copy()
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(_write_then, Path(path), data, then))
        return data

    def close(self) -> None:
        """Wait for all writes; raise the first failure."""
        pending, self._pending = self._pending, deque()
        finish(pending, self._pool)

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # an error is already on its way: drop the queued writes, let running ones finish
            self._pool.shutdown(wait=True, cancel_futures=True)
