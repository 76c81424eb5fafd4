"""A subject's parsed tracking, cached beside its ``.frame`` files.

Loading one metrical-tracker ``.frame`` file takes ~5 ms (torch's weights-only unpickler; bench/NOTES.md,
session 19): 12 s of every start-up for a 2500-frame subject. The cache holds every frame's validated
values in one file, read in milliseconds, and is used only while each file it was made from is unchanged
(name and a hash of its bytes: ~50 us a file, where a modification time can miss a rewrite within the
file system's clock tick); otherwise the files are parsed and validated again and the cache is
rewritten (atomically; a read-only folder just goes without). The warnings parsing gave (older tracker
versions' defaults) are kept with it and repeated on every cached load.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from scene.data.tracking import TrackedFrame, load_tracked_frame
from utils.atomic import atomic_path

CACHE_NAME = "parsed_tracking.pt"  # in the subject's tracking folder, beside checkpoint/
VERSION = 1
FIELDS = ("shape", "expression", "jaw", "eyes", "eyelids", "R", "t", "K")


def _signature(paths: list[Path]) -> list[tuple[str, str]]:
    """What the cache must match: each file's name and a hash of its bytes."""
    return [(p.name, hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()) for p in paths]


def load_tracked_frames(paths: list[Path], cache: Path) -> list[TrackedFrame]:
    """Every ``paths`` file's :class:`TrackedFrame`, from ``cache`` when it was made from exactly these
    (unchanged) files, else parsed with :func:`load_tracked_frame` (which raises on a bad file) and cached."""
    if not paths:
        return []
    signature = _signature(paths)
    cached = _read(cache, signature, paths)
    if cached is not None:
        frames, notes = cached
        for note in notes:
            warnings.warn(note, stacklevel=2)
        return frames
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = [load_tracked_frame(p) for p in paths]
    notes = [str(w.message) for w in caught]
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    _write(cache, signature, frames, notes)
    return frames


def _read(cache: Path, signature: list, paths: list[Path]) -> tuple[list[TrackedFrame], list[str]] | None:
    if not cache.is_file():
        return None
    try:
        data = torch.load(cache, map_location="cpu", weights_only=True)
        if data.get("version") != VERSION or [tuple(s) for s in data["signature"]] != signature:
            return None
        ids, sizes = data["frame_id"].tolist(), data["img_size"].tolist()
        values = {name: data[name] for name in FIELDS}
        frames = [TrackedFrame(frame_id=int(ids[i]), **{name: values[name][i] for name in FIELDS},
                               img_size=(int(sizes[i][0]), int(sizes[i][1])), path=p)
                  for i, p in enumerate(paths)]
        return frames, [str(n) for n in data["warnings"]]
    except Exception:  # unreadable, truncated or of another layout: parse the files instead
        return None


def _write(cache: Path, signature: list, frames: list[TrackedFrame], notes: list[str]) -> None:
    try:
        data = {"version": VERSION, "signature": signature, "warnings": notes,
                "frame_id": torch.tensor([f.frame_id for f in frames], dtype=torch.long),
                "img_size": torch.tensor([f.img_size for f in frames], dtype=torch.long),
                **{name: torch.stack([getattr(f, name) for f in frames]) for name in FIELDS}}
        with atomic_path(cache) as tmp:
            torch.save(data, tmp)
    except (OSError, RuntimeError):  # a read-only folder, a full disk: the next run parses again
        pass
