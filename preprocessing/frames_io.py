"""Frame sources for preprocessing: a folder of images or a video file, listed in temporal order.

Every preprocessing step reads frames through here so that the checks a user trips over (empty folder,
stray non-image files, mixed sizes, a video that cannot be decoded) fail the same way everywhere, with
a message that names the path and the fix. Image pixels go through :mod:`utils.image_io`.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import InputError
from utils.image_io import IMAGE_SUFFIXES, ImageReadError, image_size, read_image_uint8

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
FRAME_NAME = "{:05d}"
PREPROCESS_SETTINGS = "preprocess.json"  # video_to_subject.py's record of a subject's frames (crop, size)
# Files an OS or editor drops into folders; never frames, never worth an error.
IGNORED_NAMES = {"Thumbs.db", "desktop.ini"}


class PreprocessError(InputError):
    """Bad preprocessing input: the message names the file or folder and what to do about it."""


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``f2.png`` < ``f10.png`` (temporal order)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p != "")


def is_video_file(path: str | Path) -> bool:
    """True for a regular file whose suffix is a known video container."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def scan_folder(folder: str | Path) -> tuple[list[Path], list[str]]:
    """(image files in natural order, names of other files) of an existing folder; hidden files, OS
    clutter and subfolders are ignored."""
    images, strays = [], []
    for entry in Path(folder).iterdir():
        if entry.name.startswith(".") or entry.name in IGNORED_NAMES or entry.is_dir():
            continue
        if entry.suffix.lower() in IMAGE_SUFFIXES:
            images.append(entry)
        else:
            strays.append(entry.name)
    return sorted(images, key=lambda p: natural_key(p.name)), sorted(strays, key=natural_key)


def stray_files_message(folder: Path, strays: list[str], what: str) -> str:
    shown = ", ".join(strays[:10]) + (" ..." if len(strays) > 10 else "")
    return (f"{folder}: {len(strays)} file(s) in the {what} are not images ({', '.join(IMAGE_SUFFIXES)}): "
            f"{shown}; move them out of the folder")


def list_images(folder: str | Path, *, what: str = "frame folder", allow_empty: bool = False) -> list[Path]:
    """Image files of ``folder`` in natural (temporal) order.

    Refuses a missing folder, a folder with no images (unless ``allow_empty``) and any non-image file
    (hidden files and OS clutter excepted), listing the offenders so the user can move them away."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PreprocessError(f"{folder}: {what} not found (not a directory); check the path")
    images, strays = scan_folder(folder)
    if strays:
        raise PreprocessError(stray_files_message(folder, strays, what))
    if not images and not allow_empty:
        raise PreprocessError(f"{folder}: the {what} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                              "point to the folder with the frames, or extract them from the video first")
    return images


def check_same_size(paths: list[Path], *, what: str = "frames") -> tuple[int, int]:
    """(h, w) shared by all ``paths`` (headers only); refuses mixed sizes, naming examples of each."""
    if not paths:
        raise PreprocessError(f"no {what} to check")
    sizes: dict[tuple[int, int], list[Path]] = {}
    for p in paths:
        try:
            sizes.setdefault(image_size(p), []).append(p)
        except ImageReadError as exc:
            raise PreprocessError(str(exc)) from exc
    if len(sizes) > 1:
        desc = "; ".join(f"{h}x{w} (h x w): {len(ps)} file(s), e.g. {ps[0].name}"
                         for (h, w), ps in sorted(sizes.items(), key=lambda kv: -len(kv[1])))
        raise PreprocessError(f"{paths[0].parent}: {what} have mixed sizes ({desc}); all frames of a "
                              "sequence must share one size - re-export them or crop/resize them alike")
    return next(iter(sizes))


@dataclass
class FrameSource:
    """A sequence of RGB frames from an image folder or a video file, in temporal order."""

    path: Path
    names: list[str]        # output stem of every frame ("00000", ... for video; the file stem for images)
    size: tuple[int, int]   # (h, w)
    files: list[Path] | None = None  # the image files, None for a video
    fps: float | None = None

    @property
    def is_video(self) -> bool:
        return self.files is None

    def __len__(self) -> int:
        return len(self.names)

    def frames(self, start: int = 0) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, uint8 (H,W,3)) from frame index ``start`` on."""
        if self.files is not None:
            for name, f in zip(self.names[start:], self.files[start:]):
                try:
                    img = read_image_uint8(f)
                except ImageReadError as exc:
                    raise PreprocessError(str(exc)) from exc
                if img.shape[:2] != self.size:
                    raise PreprocessError(f"{f}: size {img.shape[:2]} differs from the sequence's "
                                          f"{self.size}; all frames must share one size")
                yield name, img
            return
        for i, frame in enumerate(iter_video(self.path)):
            if i < start:
                continue
            if i >= len(self.names):
                break
            yield self.names[i], frame


def _ffmpeg_reason(exc: BaseException) -> str:
    """The telling last lines of an imageio-ffmpeg error (its message carries ffmpeg's whole banner)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "rror" in ln or "nvalid" in ln or "not found" in ln]
    return " / ".join((errors or lines)[-2:]) or type(exc).__name__


def _video_reader(path: Path):
    import imageio.v2 as imageio

    try:
        return imageio.get_reader(str(path), format="FFMPEG")
    except Exception as exc:  # imageio raises several types for undecodable input
        raise PreprocessError(f"{path}: cannot open the video ({_ffmpeg_reason(exc)}); the file is "
                              "corrupt or not a video ffmpeg can decode - re-encode it (e.g. to H.264 MP4) "
                              "or extract its frames as PNGs") from exc


def iter_video(path: str | Path) -> Iterator[np.ndarray]:
    """Decode a video to uint8 (H,W,3) frames with imageio-ffmpeg; clear error when it cannot decode."""
    path = Path(path)
    reader = _video_reader(path)
    count = 0
    try:
        while True:
            try:
                frame = reader.get_next_data()
            except (IndexError, StopIteration):
                break
            except Exception as exc:
                raise PreprocessError(f"{path}: decoding failed after {count} frame(s) "
                                      f"({_ffmpeg_reason(exc)}); re-encode the video (e.g. to H.264 MP4) "
                                      "or extract its frames as PNGs") from exc
            count += 1
            yield np.ascontiguousarray(np.asarray(frame)[..., :3])
    finally:
        reader.close()
    if count == 0:
        raise PreprocessError(f"{path}: the video has no decodable frames; check the file")


def decode_errors(path: str | Path) -> list[str]:
    """The errors ffmpeg reports while decoding the whole video (``-v error``, output discarded). A video
    damaged in the middle still decodes to the full frame count (ffmpeg conceals the damage), so these
    lines are the only sign of it."""
    import subprocess

    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"ffmpeg could not be run to check the stream ({exc})"]
    return [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]


def probe_video(path: str | Path) -> tuple[int, tuple[int, int], float | None]:
    """(frame count, (h, w), fps) of a video, counting by decoding (containers often lie); warns when
    ffmpeg reports decoding errors (damaged frames are concealed, not dropped)."""
    path = Path(path)
    count, size = 0, None
    for frame in iter_video(path):
        size = size or frame.shape[:2]
        count += 1
    errors = decode_errors(path)
    if errors:
        warnings.warn(f"{path}: ffmpeg reported {len(errors)} decoding error(s) (first: {errors[0]}); the "
                      "frames near the damage may be grey or smeared - look at them, or re-encode or "
                      "re-record the clip", stacklevel=2)
    reader = _video_reader(path)
    try:
        fps = reader.get_meta_data().get("fps")
    finally:
        reader.close()
    return count, size, fps


def open_frames(path: str | Path) -> FrameSource:
    """A :class:`FrameSource` for an image folder or a video file, with every input check done."""
    path = Path(path)
    if not path.exists():
        raise PreprocessError(f"{path}: not found; give a folder of frames (PNG/JPG) or a video file")
    if path.is_dir():
        files = list_images(path)
        size = check_same_size(files)
        return FrameSource(path=path, names=[f.stem for f in files], size=size, files=files)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise PreprocessError(f"{path}: a single image; give the folder that holds the frame sequence")
    count, size, fps = probe_video(path)
    return FrameSource(path=path, names=[FRAME_NAME.format(i) for i in range(count)], size=size, fps=fps)


def progress(iterable, total: int | None = None, desc: str = "", disable: bool = False):
    """One tqdm bar per preprocessing step, on stderr."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="frame", dynamic_ncols=True, disable=disable,
                file=sys.stderr)
