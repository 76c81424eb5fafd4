"""Read and write metrical-tracker ``.frame`` files safely (docs/maths.md section 8).

A ``.frame`` file is the tracker's ``torch.save`` of a dict of numpy arrays. Loading uses
``torch.load(weights_only=True)`` with just the numpy globals such files need allow-listed (array
reconstruction, ``ndarray``, ``dtype`` and its classes, scalars), under both numpy 1 (``numpy.core``)
and numpy 2 (``numpy._core``) module names, so no pickled code runs. Every value is checked for
presence, shape and finiteness; problems raise :class:`TrackingFileError` naming the file, the key
and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from utils.atomic import atomic_open
from utils.errors import InputError
from utils.rotations import IDENTITY_6D, matrix_to_rot6d

# key path -> (expected size after dropping the leading batch dim, required?)
_FLAME_KEYS: dict[str, tuple[tuple[int, ...], bool]] = {
    "shape": ((300,), True),
    "exp": ((100,), True),
    "jaw": ((6,), False),
    "eyes": ((12,), False),
    "eyelids": ((2,), False),
}
_OPENCV_KEYS: dict[str, tuple[int, ...]] = {"R": (3, 3), "t": (3,), "K": (3, 3)}


class TrackingFileError(InputError):
    """A ``.frame`` file that is unreadable, incomplete or holds invalid numbers."""


def _numpy_safe_globals() -> list[Any]:
    """The numpy globals a tracker ``.frame`` pickle references, under numpy 1 and 2 names."""
    try:
        from numpy._core import multiarray as ma  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray as ma
    items: list[Any] = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        items.append((ma._reconstruct, f"{mod}._reconstruct"))
        items.append((ma.scalar, f"{mod}.scalar"))
    # numpy >= 1.25 builds dtype instances of these classes; torch checks the instance's type, so each
    # class is listed once (aliases such as LongDType / Int64DType are the same class).
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        seen: set[type] = set()
        for name in sorted(dir(dtypes)):
            cls = getattr(dtypes, name)
            if name.endswith("DType") and isinstance(cls, type) and cls not in seen:
                seen.add(cls)
                items.append(cls)
    return items


_SAFE_GLOBALS = _numpy_safe_globals()


def load_frame_dict(path: str | Path) -> dict:
    """The raw dict of a ``.frame`` file, loaded weights-only (no arbitrary code runs)."""
    path = Path(path)
    if not path.is_file():
        raise TrackingFileError(f"{path}: tracking file not found; run metrical-tracker for this subject "
                                "or pass the right --tracking_root")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / unsafe pickles
        raise TrackingFileError(
            f"{path}: cannot load the tracking file ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:300]}); "
            "it is corrupt or not a metrical-tracker .frame file - re-run the tracker for this frame "
            "or delete it") from exc
    if not isinstance(data, Mapping):
        raise TrackingFileError(f"{path}: expected a dict in the tracking file, got {type(data).__name__}; "
                                "re-run metrical-tracker for this frame")
    return dict(data)


def _as_array(value: Any, path: Path, key: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TrackingFileError(f"{path}: key '{key}' is not numeric ({type(value).__name__}); "
                                "re-run metrical-tracker for this frame") from exc
    return arr


def _get(data: Mapping, path: Path, block: str, key: str) -> Any:
    sub = data.get(block)
    if not isinstance(sub, Mapping):
        raise TrackingFileError(f"{path}: missing block '{block}' (has {sorted(map(str, data))}); "
                                "this is not a complete metrical-tracker .frame file - re-run the tracker")
    if key not in sub:
        raise TrackingFileError(f"{path}: missing key '{block}.{key}' (block has {sorted(map(str, sub))}); "
                                "re-run metrical-tracker for this frame")
    return sub[key]


FLAME_PARAMETER_BOUND = 100.0  # |coefficient| above this is a diverged fit, not a face


def _checked(value: Any, path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = _as_array(value, path, key)
    size = int(np.prod(shape))
    if arr.size != size or (arr.ndim > len(shape) and arr.shape[0] != 1):
        raise TrackingFileError(f"{path}: key '{key}' has shape {tuple(arr.shape)}, expected (1, "
                                f"{', '.join(map(str, shape))}); re-run metrical-tracker with the standard "
                                "FLAME settings (300 shape, 100 expression)")
    arr = arr.reshape(shape)
    if not np.all(np.isfinite(arr)):
        bad = int((~np.isfinite(arr)).sum())
        raise TrackingFileError(f"{path}: key '{key}' holds {bad} non-finite value(s) (NaN/Inf); the "
                                "tracker diverged on this frame - re-track it or remove the frame")
    return arr


@dataclass
class TrackedFrame:
    """One tracked frame. Tensors are float32 on the CPU; ``R``, ``t`` map FLAME world to the OpenCV
    camera (head pose baked in), ``K`` is in pixels of an ``img_size = (h, w)`` image."""

    frame_id: int
    shape: Tensor
    expression: Tensor
    jaw: Tensor
    eyes: Tensor
    eyelids: Tensor
    R: Tensor
    t: Tensor
    K: Tensor
    img_size: tuple[int, int]
    path: Path | None = None

    @property
    def height(self) -> int:
        return self.img_size[0]

    @property
    def width(self) -> int:
        return self.img_size[1]


def _frame_number(path: Path, stored: Any) -> int:
    if path.stem.isdigit():
        return int(path.stem)
    try:
        return int(np.asarray(stored.detach().cpu() if isinstance(stored, Tensor) else stored).reshape(-1)[0])
    except (TypeError, ValueError, IndexError) as exc:
        raise TrackingFileError(f"{path}: cannot tell the frame number (name is not NNNNN.frame and "
                                "'frame_id' is not a number); rename the file to its 5-digit frame "
                                "number") from exc


def load_tracked_frame(path: str | Path) -> TrackedFrame:
    """Load and validate one metrical-tracker ``.frame`` file. Optional ``jaw``/``eyes``/``eyelids``
    default to identity / zero with a warning (older tracker versions omit them)."""
    path = Path(path)
    data = load_frame_dict(path)
    flame: dict[str, np.ndarray] = {}
    defaulted: list[str] = []
    for key, (shape, required) in _FLAME_KEYS.items():
        block = data.get("flame")
        if not required and isinstance(block, Mapping) and key not in block:
            defaulted.append(f"flame.{key}")
            default = np.zeros(shape) if key == "eyelids" else np.tile(IDENTITY_6D, shape[0] // 6)
            flame[key] = np.asarray(default, dtype=np.float64)
            continue
        flame[key] = _checked(_get(data, path, "flame", key), path, f"flame.{key}", shape)
        big = float(np.abs(flame[key]).max()) if flame[key].size else 0.0
        if big > FLAME_PARAMETER_BOUND:  # FLAME coefficients are in standard deviations, rotations 6D
            raise TrackingFileError(f"{path}: flame.{key} holds a value of magnitude {big:.3g}, far outside "
                                    f"the plausible range (|x| <= {FLAME_PARAMETER_BOUND:g}); the tracker "
                                    "diverged on this frame - re-track it or remove the frame")
    if defaulted:
        warnings.warn(f"{path}: no {', '.join(defaulted)} in the tracking file (older tracker?); using "
                      "identity rotations / zero eyelids", stacklevel=2)
    cv = {k: _checked(_get(data, path, "opencv", k), path, f"opencv.{k}", s) for k, s in _OPENCV_KEYS.items()}
    if "img_size" not in data:
        raise TrackingFileError(f"{path}: missing key 'img_size'; re-run metrical-tracker for this frame")
    size = _checked(data["img_size"], path, "img_size", (2,))
    h, w = int(round(size[0])), int(round(size[1]))
    if h <= 0 or w <= 0:
        raise TrackingFileError(f"{path}: img_size {size.tolist()} is not a positive [h, w]; "
                                "re-run the tracker")
    K = cv["K"]
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise TrackingFileError(f"{path}: opencv.K has non-positive focal lengths ({K[0, 0]}, {K[1, 1]}); "
                                "re-run the tracker")

    def f32(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return TrackedFrame(
        frame_id=_frame_number(path, data.get("frame_id")),
        shape=f32(flame["shape"]), expression=f32(flame["exp"]), jaw=f32(flame["jaw"]),
        eyes=f32(flame["eyes"]), eyelids=f32(flame["eyelids"]),
        R=f32(cv["R"]), t=f32(cv["t"]), K=f32(K), img_size=(h, w), path=path,
    )


def _np(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float32)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"save_tracked_frame: '{name}' has {arr.size} values, expected shape {shape}")
    return arr.reshape((1, *shape))


def save_tracked_frame(path: str | Path, *, shape: Any, expression: Any, R: Any, t: Any, K: Any,
                       img_size: tuple[int, int], jaw: Any = None, eyes: Any = None,
                       eyelids: Any = None, frame_id: int | None = None, global_step: int = 0) -> Path:
    """Write a ``.frame`` file in metrical-tracker's layout: numpy float32 arrays with a leading
    batch dim of 1, ``tex`` (1,140) and ``sh`` (1,9,3) zeros, the ``camera`` block (6D rotation,
    translation, ``fl`` = fx, ``pp`` = principal point offset from the centre in units of half the
    image size - informational, readers use ``opencv``) and ``img_size`` [h, w]. Atomic."""
    path = Path(path)
    jaw = IDENTITY_6D if jaw is None else jaw
    eyes = IDENTITY_6D * 2 if eyes is None else eyes
    eyelids = (0.0, 0.0) if eyelids is None else eyelids
    R_np = _np(R, (3, 3), "R")
    t_np = _np(t, (3,), "t")
    K_np = _np(K, (3, 3), "K")
    h, w = int(img_size[0]), int(img_size[1])
    if frame_id is None:
        frame_id = int(path.stem) if path.stem.isdigit() else 0
    r6 = matrix_to_rot6d(torch.from_numpy(R_np[0].astype(np.float64))).numpy().astype(np.float32)
    pp = np.array([[K_np[0, 0, 2] / (w / 2.0) - 1.0, K_np[0, 1, 2] / (h / 2.0) - 1.0]], dtype=np.float32)
    data = {
        "flame": {
            "exp": _np(expression, (100,), "expression"),
            "shape": _np(shape, (300,), "shape"),
            "tex": np.zeros((1, 140), dtype=np.float32),
            "sh": np.zeros((1, 9, 3), dtype=np.float32),
            "eyes": _np(eyes, (12,), "eyes"),
            "eyelids": _np(eyelids, (2,), "eyelids"),
            "jaw": _np(jaw, (6,), "jaw"),
        },
        "camera": {
            "R": r6.reshape(1, 6),
            "t": t_np.copy(),
            "fl": np.array([[K_np[0, 0, 0]]], dtype=np.float32),
            "pp": pp,
        },
        "opencv": {"R": R_np, "t": t_np, "K": K_np},
        "img_size": np.array([h, w], dtype=np.int64),
        "frame_id": int(frame_id),
        "global_step": int(global_step),
    }
    with atomic_open(path, "wb") as fh:
        torch.save(data, fh)
    return path
