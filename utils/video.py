"""MP4 writing through imageio-ffmpeg (which ships its own ffmpeg binary): H.264, yuv420p.

yuv420p needs even sizes, so odd frames are padded by one edge pixel (never rescaled). The video is
written to a temporary file next to the target and moved into place, so a crash leaves no half file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from utils.atomic import atomic_path
from utils.errors import InputError
from utils.image_io import read_image_uint8


def _to_uint8(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(frame, torch.Tensor):
        t = frame.detach().float().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3):
            t = t.permute(1, 2, 0)
        frame = (t.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"write_video: expected (H,W,3) frames, got shape {arr.shape}")
    arr = arr[..., :3]
    pad_h, pad_w = arr.shape[0] % 2, arr.shape[1] % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(arr)


class VideoWriterUnavailableError(InputError):
    """imageio / imageio-ffmpeg (which ships the ffmpeg binary) is not installed."""


def write_video(path: str | Path, frames: Iterable[np.ndarray | torch.Tensor], fps: float = 25.0) -> Path:
    """Write ``frames`` (uint8 (H,W,3), float in [0,1], or (3,H,W) tensors) to ``path`` as H.264 MP4.

    Returns the path. Raises ValueError when there are no frames or their sizes differ, and
    VideoWriterUnavailableError when imageio-ffmpeg is missing."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary imageio's FFMPEG plugin uses)
    except ImportError as exc:
        raise VideoWriterUnavailableError(
            f"cannot write {path}: {exc}; install it with `pip install imageio imageio-ffmpeg` "
            "(render.py: or pass --no_video)") from exc

    path = Path(path)
    count, size = 0, None
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", macro_block_size=1, quality=8,
                                    ffmpeg_log_level="error")
        try:
            for frame in frames:
                arr = _to_uint8(frame)
                if size is None:
                    size = arr.shape
                elif arr.shape != size:
                    raise ValueError(f"write_video {path}: frame {count} is {arr.shape}, expected {size}")
                writer.append_data(arr)
                count += 1
        finally:
            writer.close()
        if count == 0:
            raise ValueError(f"write_video {path}: no frames to write")
    return path


def write_video_from_pngs(path: str | Path, png_paths: Iterable[str | Path], fps: float = 25.0) -> Path:
    """An MP4 of saved PNG frames, read one at a time (no whole sequence in memory)."""

    return write_video(path, (read_image_uint8(p) for p in png_paths), fps=fps)


def read_video_frame_count(path: str | Path) -> int:
    """Number of frames in a video (decodes it; for tests and checks)."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return sum(1 for _ in reader)
    finally:
        reader.close()
