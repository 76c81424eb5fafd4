"""Atomic file writes, the one place for them: write to a temporary file beside the target, then
``os.replace`` it, so a crash or a full disk never leaves a half-written checkpoint, frame or image and
never destroys the previous version."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _file_mode() -> int:
    """0666 less the process umask: the mode an ordinary ``open(path, "w")`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``, on error it is removed.
    ``suffix`` lets writers that pick a format by extension (ffmpeg, PIL) see the right one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, FILE_MODE)  # mkstemp's 0600 would survive the rename: the usual mode instead
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write (full disk) names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", fsync: bool = False) -> Iterator[IO]:
    """Open a temporary file for writing that atomically becomes ``path`` when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())


@contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``final``; when the block succeeds it replaces ``final`` (the
    previous contents removed), when it fails it is removed and ``final`` is left as it was. A folder of
    outputs is therefore always one run's, never a mix of a finished and an interrupted one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage, old = final.with_name(f".{final.name}.partial"), final.with_name(f".{final.name}.old")
    shutil.rmtree(stage, ignore_errors=True)  # left by a run that was killed
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)


def _json_safe(obj: Any) -> Any:
    """NaN / inf become null (JSON has neither); numpy / torch scalars become floats."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    with atomic_open(path, "w") as fh:
        json.dump(_json_safe(obj), fh, indent=2, allow_nan=False)
        fh.write("\n")
    return path
