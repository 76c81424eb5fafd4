"""Composition of the two halves of :mod:`scene`: open a subject from the options, build its avatar.

The one place where options, the data side and the model side meet; ``train.py``, ``render.py``,
``scene.trainer`` and ``bench/`` all open subjects and build avatars through these functions.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flame.assets import load_flame_assets, resolve_flame_dir
from preprocessing import DEMO_IDNAME
from scene.data.subject import Subject
from scene.model.avatar import Avatar
from utils.errors import InputError
from utils.image_io import IMAGE_SUFFIXES, image_size
from utils.options import DataOptions, ModelOptions, PathOptions


def ensure_subject(paths: PathOptions) -> None:
    """``--idname demo``: generate the synthetic demo subject when it is missing (and say so)."""
    if paths.idname != DEMO_IDNAME:
        return
    if (paths.data_root / paths.idname / "imgs").is_dir() and \
            (paths.tracking_root / paths.idname / "checkpoint").is_dir():
        return
    print(f"[setup] demo subject not found under {paths.data_root / paths.idname}: generating the synthetic "
          "demo subject (no licensed data; takes a little while once)")
    from preprocessing.synthetic_subject import ensure_demo_subject  # (its FLAME, scipy: only to generate)

    try:
        ensure_demo_subject(paths.data_root, paths.tracking_root, idname=paths.idname)
    except FileExistsError as exc:
        raise InputError(str(exc)) from exc


DEVICE_CACHE_CAP = 6 << 30  # bytes of uint8 frames kept on a GPU at most by --preload auto
CPU_CACHE_CAP = 8 << 30


def device_cache_budget(device: torch.device | None) -> int:
    """Bytes of frames ``--preload auto`` keeps on ``device``: a quarter of a GPU's memory, at most
    DEVICE_CACHE_CAP (an H200 holds a 2000-frame 512x512 subject, 3.1 GB; an 8 GB card 2 GiB); on the
    CPU the "device" cache is the CPU cache, 2 GiB as before."""
    if device is not None and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return min(DEVICE_CACHE_CAP, total // 4)
    return 2 << 30


def resolve_preload(preload: str, subject_dir: Path, device_budget: int = 2 << 30) -> str:
    """``auto`` -> device when the uint8 frames (image + 3 masks) fit in ``device_budget`` bytes, cpu up to
    8 GiB, else none."""
    if preload != "auto":
        return preload
    imgs = sorted(q for q in (subject_dir / "imgs").glob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
    if not imgs:
        return "none"  # the Subject reports the problem
    h, w = image_size(imgs[0])
    need = len(imgs) * h * w * 6
    if need <= device_budget:
        return "device"
    return "cpu" if need <= CPU_CACHE_CAP else "none"


def open_subject(data_root: Path, tracking_root: Path, idname: str, data: DataOptions,
                 device: torch.device, *, with_images: bool = True, preload: str | None = None) -> Subject:
    """The subject ``idname`` with the split and compositing of ``data``. ``with_images=False`` opens a
    tracking-only subject (a cross-reenactment source: no split, images optional). ``preload``
    overrides ``data.preload`` (``auto`` is resolved from the frames' size)."""
    if not with_images:
        return Subject(data_root, tracking_root, idname, frame_delta=data.frame_delta,
                       background=data.background, test_num=0, eval_num=0, preload="none", device=device,
                       require_images=False)
    preload = resolve_preload(data.preload if preload is None else preload, Path(data_root) / idname,
                              device_cache_budget(torch.device(device)))
    return Subject(data_root, tracking_root, idname, frame_delta=data.frame_delta, background=data.background,
                   test_num=data.test_num, eval_num=data.eval_num, max_train=data.max_train, preload=preload,
                   device=device, allow_missing=data.allow_missing)


def build_avatar(paths: PathOptions, model: ModelOptions, subject: Subject, device: torch.device,
                 seed: int) -> Avatar:
    """The avatar of ``subject`` (its shape from frame 0) with the FLAME assets resolved from the flags."""
    assets = load_flame_assets(resolve_flame_dir(paths.flame_dir, subject.subject_dir))
    torch.manual_seed(seed)
    return Avatar(assets, subject.shape, model, device=device, seed=seed)
