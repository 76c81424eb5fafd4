"""One subject's data: frames paired with tracking, ground-truth compositing, split and caching
(docs/maths.md section 8).

Image ``imgs/NNNNN`` pairs with tracking frame ``NNNNN - frame_delta`` by number, never by listing
position; unpaired frames are reported by number. Ground truth is ``img * alpha + bg * (1 - alpha)``,
then ``* head + bg * (1 - head)``. The last ``test_num`` frames are the test split, the last
``eval_num`` of those the eval split, the first ``min(max_train, N - test_num)`` the training split.
Per-subject work (reading all ``.frame`` files, cameras, the (N, 120) condition matrix) is done once
in the constructor; images are read per access or preloaded as uint8 (``preload="cpu"|"device"``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flame.condition import build_condition
from scene.data.cameras import Camera
from scene.data.tracking import TrackedFrame, TrackingFileError
from scene.data.tracking_cache import CACHE_NAME, load_tracked_frames
from utils.errors import InputError
from utils.image_io import IMAGE_SUFFIXES, check_image, image_size, read_image_uint8, read_mask_uint8

BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "white": (1.0, 1.0, 1.0),
    "green": (0.0, 1.0, 0.0),
    "black": (0.0, 0.0, 0.0),
}


class SubjectDataError(InputError):
    """A subject folder that is missing, incomplete or inconsistent with its tracking."""


def background_color(background: str | Sequence[float] | Tensor) -> Tensor:
    """``"white"`` (default in the CLI), ``"green"`` (the original FlashAvatar's), ``"black"`` or an
    explicit RGB triple in [0, 1] -> float32 (3,)."""
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ValueError(f"background {background!r}: choose one of {sorted(BACKGROUNDS)} "
                             "or give an RGB triple")
        return torch.tensor(BACKGROUNDS[background], dtype=torch.float32)
    bg = torch.as_tensor(background, dtype=torch.float32).reshape(-1)
    if bg.numel() != 3:
        raise ValueError(f"background: expected 3 values, got {bg.numel()}")
    return bg


@dataclass
class FrameData:
    """One frame ready for training / evaluation. ``image`` is the composited ground truth (3,H,W)
    in [0,1]; masks are (1,H,W) in [0,1] as stored (not binarised); all on the subject's device.
    Image and masks are None for a tracked-only frame (``require_images=False``)."""

    index: int
    frame_id: int
    image: Tensor | None
    head_mask: Tensor | None
    mouth_mask: Tensor | None
    camera: Camera
    condition: Tensor
    coverage: Tensor | None = None  # alpha * head (1,H,W): where ``image`` is the head, not background


def _ranges(numbers: Sequence[int], limit: int = 12) -> str:
    """Compact list of frame numbers: 3-7, 9, 12 (first ``limit`` runs)."""
    nums = sorted(numbers)
    runs: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        runs.append(f"{nums[i]:05d}" if i == j else f"{nums[i]:05d}-{nums[j]:05d}")
        i = j + 1
    more = f" and {len(runs) - limit} more runs" if len(runs) > limit else ""
    return ", ".join(runs[:limit]) + more


def _numbered(folder: Path, suffixes: Sequence[str], stem_suffix: str = "") -> dict[int, Path]:
    """{frame number: path} for files ``NNNNN<stem_suffix><suffix>`` in ``folder`` (PNG preferred
    when a number exists twice)."""
    found: dict[int, Path] = {}
    if not folder.is_dir():
        return found
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if e.is_file())
    for name in names:
        stem, dot, ext = name.rpartition(".")
        if not dot or f".{ext.lower()}" not in suffixes:
            continue
        if stem_suffix:
            if not stem.endswith(stem_suffix):
                continue
            stem = stem[: -len(stem_suffix)]
        if not stem.isdigit():
            continue
        n = int(stem)
        if n in found and found[n].suffix.lower() == ".png":
            continue
        found[n] = folder / name
    return found


class Subject:
    """Frames of one subject, paired with their tracking (see module docstring).

    ``frame_ids`` are the image numbers (NNNNN of ``imgs/``); index ``i`` everywhere means the i-th
    paired frame in increasing number. ``preload``: ``"none"`` reads images per access, ``"cpu"``
    or ``"device"`` keeps uint8 copies there. ``allow_missing`` keeps only the paired frames (with a
    warning) instead of refusing; ``require_images=False`` accepts tracking without images (for
    driving an avatar from another subject's tracking: ``frame(i)`` then has no image or masks).
    """

    def __init__(self, data_root: str | Path, tracking_root: str | Path, idname: str, *,
                 frame_delta: int = 0, background: str | Sequence[float] | Tensor = "white",
                 test_num: int = 500, eval_num: int = 50, max_train: int = 10000,
                 preload: str = "none", device: str | torch.device = "cpu",
                 allow_missing: bool = False, require_images: bool = True) -> None:
        if preload not in ("none", "cpu", "device"):
            raise ValueError(f"preload={preload!r}: choose 'none', 'cpu' or 'device'")
        if test_num < 0 or eval_num < 0 or max_train < 1:
            raise ValueError(f"split sizes must be test_num >= 0, eval_num >= 0, max_train >= 1 "
                             f"(got {test_num}, {eval_num}, {max_train})")
        self.idname = idname
        self.device = torch.device(device)
        self.frame_delta = int(frame_delta)
        self.background = background_color(background).to(self.device)
        self.subject_dir = Path(data_root) / idname
        self.tracking_dir = Path(tracking_root) / idname / "checkpoint"
        self.require_images = require_images

        if require_images:
            self._check_subject_dir()
        frames = self._find_tracking()
        self._image_paths, self._alpha_paths, self._head_paths, self._mouth_paths = {}, {}, {}, {}
        if require_images or (self.subject_dir / "imgs").is_dir():
            images = self._find_images(require_images)
        else:
            images = {}
        pairs = self._pair(images, frames, allow_missing or not require_images)
        self.frame_ids: list[int] = [n for n, _ in pairs]
        self._frame_paths = [frames[m] for _, m in pairs]
        self._find_masks(images)

        n = len(pairs)
        self._split(n, test_num, eval_num, max_train)
        self._tracked: list[TrackedFrame] = load_tracked_frames(self._frame_paths,
                                                                self.tracking_dir.parent / CACHE_NAME)
        self._check_sizes()
        first = self._tracked[0]
        self.shape: Tensor = first.shape.to(self.device)
        self.img_size: tuple[int, int] = first.img_size
        self.conditions: Tensor = build_condition(
            torch.stack([f.expression for f in self._tracked]), torch.stack([f.jaw for f in self._tracked]),
            torch.stack([f.eyes for f in self._tracked]), torch.stack([f.eyelids for f in self._tracked]),
        ).to(self.device)
        self._cameras = [self._make_camera(f, n_) for f, n_ in zip(self._tracked, self.frame_ids)]
        self._cache: dict[str, Tensor] | None = None
        if preload != "none":
            self._preload(self.device if preload == "device" else torch.device("cpu"))
        else:
            self._check_files()  # read per use later: find a damaged or odd-sized file now, not mid-run

    # ----------------------------------------------------------------------------------- discovery
    def _find_tracking(self) -> dict[int, Path]:
        if not self.tracking_dir.is_dir():
            raise SubjectDataError(
                f"{self.tracking_dir}: tracking folder not found for subject '{self.idname}'; run "
                "metrical-tracker on it (output/<id>/checkpoint/NNNNN.frame) or pass the right "
                "--tracking_root")
        frames = _numbered(self.tracking_dir, (".frame",))
        if not frames:
            raise SubjectDataError(f"{self.tracking_dir}: no NNNNN.frame files; run metrical-tracker for "
                                   f"subject '{self.idname}' or pass the right --tracking_root")
        return frames

    def _check_subject_dir(self) -> None:
        if not self.subject_dir.is_dir():
            raise SubjectDataError(
                f"{self.subject_dir}: subject folder not found; preprocess the video into it "
                "(imgs/, alpha/, parsing/), generate the demo with `python -m "
                "preprocessing.synthetic_subject --idname demo`, or pass the right --data_root/--idname")

    def _find_images(self, required: bool) -> dict[int, Path]:
        self._check_subject_dir()
        imgs_dir = self.subject_dir / "imgs"
        images = _numbered(imgs_dir, IMAGE_SUFFIXES)
        if not images and required:
            raise SubjectDataError(f"{imgs_dir}: no NNNNN.png/.jpg frames found; preprocess the video "
                                   "(see README, custom video) or pass the right --data_root/--idname")
        return images

    def _pair(self, images: dict[int, Path], frames: dict[int, Path], allow_missing: bool
              ) -> list[tuple[int, int]]:
        d = self.frame_delta
        if not self.require_images:  # every tracked frame; images attached where present
            return [(m + d, m) for m in sorted(frames)]
        no_frame = [n for n in images if n - d not in frames]
        no_image = [m for m in frames if m + d not in images]
        pairs = [(n, n - d) for n in sorted(images) if n - d in frames]
        if no_frame or no_image:
            msg = []
            if no_frame:
                msg.append(f"{len(no_frame)} image(s) in {self.subject_dir / 'imgs'} have no tracking frame "
                           f"(image number - frame_delta {d}): images {_ranges(no_frame)}")
            if no_image:
                msg.append(f"{len(no_image)} tracking frame(s) in {self.tracking_dir} have no image "
                           f"(frame number + frame_delta {d}): frames {_ranges(no_image)}")
            text = "; ".join(msg)
            if not allow_missing or not pairs:
                raise SubjectDataError(
                    f"subject '{self.idname}': {text}. Fix: check --frame_delta (FlashAvatar's ffmpeg "
                    "numbering from 00001 needs 1), re-track the missing frames, or pass --allow_missing "
                    "to use only the paired frames")
            warnings.warn(f"subject '{self.idname}': {text}; using the {len(pairs)} paired frames",
                          stacklevel=3)
        return pairs

    def _find_masks(self, images: dict[int, Path]) -> None:
        if not images:
            return
        alpha = _numbered(self.subject_dir / "alpha", IMAGE_SUFFIXES)
        head = _numbered(self.subject_dir / "parsing", IMAGE_SUFFIXES, "_neckhead")
        mouth = _numbered(self.subject_dir / "parsing", IMAGE_SUFFIXES, "_mouth")
        for label, table, pattern in (("alpha matte", alpha, "alpha/NNNNN.png"),
                                      ("neck-head mask", head, "parsing/NNNNN_neckhead.png"),
                                      ("mouth mask", mouth, "parsing/NNNNN_mouth.png")):
            missing = [n for n in self.frame_ids if n in images and n not in table]
            if missing and not self.require_images:
                images = {n: p for n, p in images.items() if n in table}
            elif missing:
                raise SubjectDataError(
                    f"{self.subject_dir}: {len(missing)} frame(s) lack their {label} ({pattern}): "
                    f"{_ranges(missing)}; run the preprocessing (matting / face parsing) for them")
        for n in self.frame_ids:
            if n in images:
                self._image_paths[n] = images[n]
                self._alpha_paths[n] = alpha[n]
                self._head_paths[n] = head[n]
                self._mouth_paths[n] = mouth[n]

    def _split(self, n: int, test_num: int, eval_num: int, max_train: int) -> None:
        if n <= test_num:
            raise SubjectDataError(
                f"subject '{self.idname}' has {n} paired frame(s), too few for test_num={test_num} "
                f"(the last test_num frames are held out and at least one must train); pass a smaller "
                f"--test_num (and --eval_num), e.g. --test_num {max(0, n // 5)}")
        self.train_indices: list[int] = list(range(min(max_train, n - test_num)))
        self.test_indices: list[int] = list(range(n - test_num, n))
        n_eval = min(eval_num, test_num)
        self.eval_indices: list[int] = list(range(n - n_eval, n))

    def _check_sizes(self) -> None:
        sizes = {f.img_size for f in self._tracked}
        if len(sizes) > 1:
            raise SubjectDataError(f"{self.tracking_dir}: frames disagree on img_size {sorted(sizes)}; the "
                                   "subject must be tracked at one crop size - re-run the tracker")
        (h, w) = next(iter(sizes))
        if self._image_paths:
            first = self._image_paths[self.frame_ids[0]]
            hw = image_size(first)
            if hw != (h, w):
                raise SubjectDataError(
                    f"{first}: image is {hw[0]}x{hw[1]} (h x w) but the tracking says img_size "
                    f"[{h}, {w}] ({self._frame_paths[0]}); resize/crop the frames to the tracked size or "
                    "re-run the tracker on these images")

    def _check_files(self) -> None:
        """Every image and mask of the paired frames is intact and of the tracked size."""
        h, w = self.img_size
        paths = [table[n] for n in self.frame_ids if n in self._image_paths
                 for table in (self._image_paths, self._alpha_paths, self._head_paths, self._mouth_paths)]
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            for path, hw in zip(paths, pool.map(check_image, paths)):
                if hw != (h, w):
                    raise SubjectDataError(f"{path}: size {hw[0]}x{hw[1]} (h x w) differs from the "
                                           f"tracked img_size [{h}, {w}]; resize/crop it to the tracked size "
                                           "or re-track")

    def _make_camera(self, f: TrackedFrame, number: int) -> Camera:
        return Camera(f.R, f.t, f.K, image_width=f.width, image_height=f.height,
                      name=f"{number:05d}").to(self.device)

    # ----------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.frame_ids)

    def tracked(self, i: int) -> TrackedFrame:
        """The tracking of paired frame ``i`` (CPU float32 tensors)."""
        return self._tracked[i]

    def camera(self, i: int) -> Camera:
        """Camera of frame ``i`` on the subject's device (principal point kept)."""
        return self._cameras[i]

    def condition(self, i: int) -> Tensor:
        """The (120,) condition vector of frame ``i`` on the device (a row of ``conditions``)."""
        return self.conditions[i]

    def image_path(self, i: int) -> Path | None:
        return self._image_paths.get(self.frame_ids[i])

    def has_image(self, i: int) -> bool:
        return self.frame_ids[i] in self._image_paths

    def _read_raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """uint8 image (H,W,3), alpha, head, mouth (H,W) of frame i, sizes checked."""
        n = self.frame_ids[i]
        h, w = self.img_size
        img = read_image_uint8(self._image_paths[n])
        out = [img]
        for table in (self._alpha_paths, self._head_paths, self._mouth_paths):
            out.append(read_mask_uint8(table[n]))
        for arr, path in zip(out, (self._image_paths[n], self._alpha_paths[n], self._head_paths[n],
                                   self._mouth_paths[n])):
            if arr.shape[:2] != (h, w):
                raise SubjectDataError(
                    f"{path}: size {arr.shape[0]}x{arr.shape[1]} (h x w) differs from the tracked img_size "
                    f"[{h}, {w}] ({self._frame_paths[i]}); resize/crop it to the tracked size or re-track")
        return out[0], out[1], out[2], out[3]

    def _preload(self, where: torch.device) -> None:
        idx = [i for i in range(len(self)) if self.has_image(i)]
        if not idx:
            return
        h, w = self.img_size
        images = torch.empty((len(self), 3, h, w), dtype=torch.uint8)
        masks = torch.empty((len(self), 3, h, w), dtype=torch.uint8)  # alpha, head, mouth
        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, (img, a, hd, mo) in zip(idx, pool.map(self._read_raw, idx)):
                images[i] = torch.from_numpy(img).permute(2, 0, 1)
                masks[i, 0] = torch.from_numpy(a)
                masks[i, 1] = torch.from_numpy(hd)
                masks[i, 2] = torch.from_numpy(mo)
        self._cache = {"images": images.to(where), "masks": masks.to(where)}

    def _raw_tensors(self, i: int) -> tuple[Tensor, Tensor]:
        if self._cache is not None:
            return self._cache["images"][i], self._cache["masks"][i]
        img, a, hd, mo = self._read_raw(i)
        return torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(np.stack([a, hd, mo]))

    def composite(self, image: Tensor, alpha: Tensor, head: Tensor) -> Tensor:
        """Ground truth: image * alpha + bg * (1 - alpha), then * head + bg * (1 - head)."""
        bg = self.background.to(image.device).view(3, 1, 1)
        gt = image * alpha + bg * (1.0 - alpha)
        return gt * head + bg * (1.0 - head)

    def frame(self, i: int) -> FrameData:
        """Frame ``i``: composited ground truth, masks, camera and condition, on the device."""
        return self.frame_from(i, self.frame_images(i))

    def frame_images(self, i: int) -> tuple[Tensor, Tensor] | None:
        """Frame ``i``'s uint8 image (3,H,W) and masks (alpha, head, mouth) as stored -- decoded into host
        memory, or views of the device cache -- or None for a tracked-only frame. No CUDA work: for reader
        threads (render.py reads ahead while its main thread may be capturing a CUDA graph, which refuses
        other threads' allocations and copies meanwhile)."""
        if not 0 <= i < len(self):
            raise IndexError(f"frame index {i} out of range for subject '{self.idname}' ({len(self)} frames)")
        return self._raw_tensors(i) if self.has_image(i) else None

    def frame_from(self, i: int, images: tuple[Tensor, Tensor] | None) -> FrameData:
        """:meth:`frame` ``i`` from what :meth:`frame_images` returned for it (read ahead elsewhere)."""
        if images is None:
            return FrameData(i, self.frame_ids[i], None, None, None, self._cameras[i], self.conditions[i])
        img_u8, masks_u8 = images
        gt, head, mouth, coverage = self._prepare(img_u8.to(self.device, non_blocking=True),
                                                  masks_u8.to(self.device, non_blocking=True))
        return FrameData(i, self.frame_ids[i], gt, head, mouth, self._cameras[i], self.conditions[i],
                         coverage=coverage)

    def _prepare(self, img_u8: Tensor, masks_u8: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(ground truth, head, mouth, coverage) of a frame's uint8 image (3,H,W) and masks (alpha, head,
        mouth)."""
        img = img_u8.float() / 255.0
        masks = masks_u8.float() / 255.0
        alpha, head, mouth = masks[0:1], masks[1:2], masks[2:3]
        return self.composite(img, alpha, head), head, mouth, alpha * head

    def frames_on_device(self) -> bool:
        """Whether every frame's image and masks are cached on the (CUDA) device, so that
        :meth:`gather_frame` can pick one by a device index."""
        return self._cache is not None and self.device.type == "cuda" and self._cache["images"].is_cuda

    def gather_frame(self, index: Tensor, template: FrameData) -> FrameData:
        """The frame whose index is the device value ``index`` (1,) int64 -- ground truth, masks and
        condition from the device cache, no host value read (capturable: a CUDA graph replays it for
        whatever index the buffer holds). ``template``: a frame of the same size, whose host fields (index,
        camera) the result keeps; the caller supplies the camera's per-frame values."""
        img_u8 = self._cache["images"].index_select(0, index)[0]
        masks_u8 = self._cache["masks"].index_select(0, index)[0]
        gt, head, mouth, coverage = self._prepare(img_u8, masks_u8)
        condition = self.conditions.index_select(0, index)[0]
        return FrameData(template.index, template.frame_id, gt, head, mouth, template.camera, condition,
                         coverage=coverage)

    def __repr__(self) -> str:
        return (f"Subject({self.idname!r}, frames={len(self)}, train={len(self.train_indices)}, "
                f"test={len(self.test_indices)}, eval={len(self.eval_indices)}, img_size={self.img_size})")


__all__ = ["Subject", "FrameData", "background_color", "SubjectDataError", "TrackingFileError",
           "BACKGROUNDS"]
