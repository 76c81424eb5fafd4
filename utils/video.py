"""MP4 writing through imageio-ffmpeg (which ships its own ffmpeg binary): H.264, yuv420p.

yuv420p needs even sizes, so odd frames are padded by one edge pixel (never rescaled). The video is
written to a temporary file next to the target and moved into place, so a crash leaves no half file.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from utils.atomic import atomic_path
from utils.errors import InputError
from utils.image_io import to_uint8


def _video_frame(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H,W,3) uint8 with even sides (edge-padded), from any image :func:`to_uint8` takes."""
    arr = to_uint8(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    arr = arr[..., :3]
    pad_h, pad_w = arr.shape[0] % 2, arr.shape[1] % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(arr)


class VideoWriterUnavailableError(InputError):
    """imageio / imageio-ffmpeg (which ships the ffmpeg binary) is not installed."""


class VideoStream:
    """An H.264 MP4 written while its frames are produced: ``append`` converts a frame to 8 bit and queues
    it, a worker thread pipes it to ffmpeg (which encodes on its own threads), so encoding overlaps the
    caller's work. At most ``max_pending`` frames wait. Leaving the ``with`` block finishes the file and
    moves it into place (raising the first error); on an error in the block nothing is left behind."""

    def __init__(self, path: str | Path, fps: float = 25.0, max_pending: int = 32) -> None:
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary imageio's FFMPEG plugin uses)
        except ImportError as exc:
            raise VideoWriterUnavailableError(
                f"cannot write {path}: {exc}; install it with `pip install imageio imageio-ffmpeg` "
                "(render.py: or pass --no_video)") from exc
        self.path = Path(path)
        self.fps = fps
        self._imageio = imageio
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self.count = 0
        self._size: tuple | None = None
        self._staging = atomic_path(self.path, suffix=".mp4")
        self._tmp = self._staging.__enter__()
        self._thread = threading.Thread(target=self._encode, name="mp4", daemon=True)
        self._thread.start()

    def _encode(self) -> None:
        writer = None
        try:
            while (arr := self._queue.get()) is not None:
                if writer is None:
                    writer = self._imageio.get_writer(
                        str(self._tmp), format="FFMPEG", mode="I", fps=self.fps, codec="libx264",
                        pixelformat="yuv420p", macro_block_size=1, quality=8, ffmpeg_log_level="error")
                writer.append_data(arr)
        except BaseException as exc:  # reported by the caller's next append / close
            self._error = exc
            while self._queue.get() is not None:  # drain, so the producer never blocks
                pass
        finally:
            if writer is not None:
                writer.close()

    def append(self, frame: np.ndarray | torch.Tensor) -> np.ndarray:
        """Queue one frame (uint8 (H,W,3), float in [0,1], or a (3,H,W) tensor); returns its 8-bit form."""
        if self._error is not None:
            raise self._error
        arr = _video_frame(frame)
        if self._size is None:
            self._size = arr.shape
        elif arr.shape != self._size:
            raise ValueError(f"write_video {self.path}: frame {self.count} is {arr.shape}, "
                             f"expected {self._size}")
        self._queue.put(arr)
        self.count += 1
        return arr

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def close(self) -> Path:
        """Finish the file and move it into place."""
        self._finish()
        try:
            if self._error is not None:
                raise self._error
            if self.count == 0:
                raise ValueError(f"write_video {self.path}: no frames to write")
        except BaseException as exc:
            self._staging.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._staging.__exit__(None, None, None)
        return self.path

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._finish()
            self._staging.__exit__(exc_type, exc, tb)


def write_video(path: str | Path, frames: Iterable[np.ndarray | torch.Tensor], fps: float = 25.0) -> Path:
    """Write ``frames`` (uint8 (H,W,3), float in [0,1], or (3,H,W) tensors) to ``path`` as H.264 MP4.

    Returns the path. Raises ValueError when there are no frames or their sizes differ, and
    VideoWriterUnavailableError when imageio-ffmpeg is missing."""
    with VideoStream(path, fps) as stream:
        for frame in frames:
            stream.append(frame)
    return Path(path)


def read_video_frame_count(path: str | Path) -> int:
    """Number of frames in a video (decodes it; for tests and checks)."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return sum(1 for _ in reader)
    finally:
        reader.close()
