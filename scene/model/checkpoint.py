"""Checkpoints (docs/maths.md section 9 resume): atomic save, versioned content, loading with clear errors.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts only, so that it loads with
``torch.load(weights_only=True)``):

``format``, ``version``, ``method`` ("baseline" | "ours"), ``config``
(the :class:`~utils.options.ModelOptions` fields), ``n_gaussians``, ``deformation`` and ``gaussians``
(state dicts), ``optimizers``
({"gaussians", "deformation"}: Adam state dicts, or None), ``iteration``, ``active_sh_degree``,
``rng`` (torch CPU / CUDA, numpy legacy and Python ``random`` states) and ``extra`` (anything the
caller adds, e.g. the frame sampler's state).
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from scene.model.avatar import Avatar
from scene.model.ema import ema_weights
from utils.atomic import atomic_open
from utils.errors import InputError
from utils.options import ModelOptions

CHECKPOINT_FORMAT = "gaussian-head-avatar-checkpoint"
CHECKPOINT_VERSION = 1
_METHOD_NAMES = {"ours": "HyperGaussians (--ours)", "baseline": "FlashAvatar baseline (no --ours)"}


class CheckpointError(InputError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


# -- RNG state ------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """torch CPU / CUDA, numpy (legacy global) and Python ``random`` states as weights-only-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the same number of GPUs is visible)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    npst = state["numpy"]
    np_state = (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                npst["cached_gaussian"])
    np.random.set_state(np_state)  # noqa: NPY002
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


# -- save -----------------------------------------------------------------------------------------
Optimizers = tuple[torch.optim.Optimizer, torch.optim.Optimizer]


def checkpoint_dict(avatar: Avatar, optimizers: Optimizers | None = None,
                    iteration: int = 0, *, extra: dict | None = None, rng: bool = True) -> dict:
    """The checkpoint content for ``avatar`` (and its two optimisers, Gaussian one first)."""
    opt = None
    if optimizers is not None:
        g_opt, d_opt = optimizers
        opt = {"gaussians": g_opt.state_dict(), "deformation": d_opt.state_dict()}
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "method": avatar.method,
        "config": avatar.config.to_dict(),
        "n_gaussians": avatar.n_gaussians,
        "deformation": avatar.deformation.state_dict(),
        "gaussians": avatar.gaussians.state_dict(),
        "optimizers": opt,
        "iteration": int(iteration),
        "active_sh_degree": int(avatar.gaussians.active_sh_degree),
        "rng": capture_rng_state() if rng else None,
        "extra": extra or {},
    }


def save_checkpoint(path: str | os.PathLike, avatar: Avatar,
                    optimizers: Optimizers | None = None,
                    iteration: int = 0, *, extra: dict | None = None) -> Path:
    """Write the checkpoint atomically (temporary file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = checkpoint_dict(avatar, optimizers, iteration, extra=extra)
    with atomic_open(path, "wb", fsync=True) as f:
        try:
            torch.save(state, f)
        except RuntimeError as exc:  # torch's zip writer turns a failed write (full disk) into this
            raise OSError(errno.EIO, "the checkpoint could not be written completely (the write stopped part "
                                     "way: is the disk full?)", str(path)) from exc
    return path


# -- load -----------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate the container (existence, integrity, format, version); no model checks."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise CheckpointNotFoundError(f"checkpoint {path} {what}; check the path (checkpoints are "
                                      "logs/<id>_<log>/ckpt/ckpt<iter>.pth)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # garbage bytes fail in the unpickler too
            raise _unreadable(path, exc) from exc
        raise CheckpointError(f"checkpoint {path} holds Python objects that a safe (weights-only) load "
                              "refuses: it was not written by this project's train.py (checkpoints of the "
                              "original FlashAvatar / HyperGaussians code cannot be loaded)") from exc
    except Exception as exc:  # zip / pickle / EOF errors all mean the same to the user
        raise _unreadable(path, exc) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} was not written by this project's train.py (no "
                              f"'{CHECKPOINT_FORMAT}' marker); checkpoints of the original FlashAvatar / "
                              "HyperGaussians code cannot be loaded")
    version = state.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}, this code reads up to "
                              f"{CHECKPOINT_VERSION}; update the code")
    missing = [k for k in ("method", "config", "n_gaussians", "deformation", "gaussians", "iteration")
               if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; the file is damaged")
    return state


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    msg = str(exc).splitlines()[0][:200] if str(exc) else ""
    return CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {msg}); the file is "
                           "truncated or corrupt: use an earlier ckpt<iter>.pth or retrain")


def check_compatible(state: dict, avatar: Avatar, path: str | os.PathLike = "<checkpoint>") -> None:
    """Raise :class:`CheckpointError` naming the flag or option when ``state`` does not fit ``avatar``."""
    if state["method"] != avatar.method:
        fix = "add --ours" if state["method"] == "ours" else "drop --ours"
        theirs = _METHOD_NAMES.get(state["method"], repr(state["method"]))
        raise CheckpointError(f"checkpoint {path} holds a {theirs} "
                              f"model, but this run builds a {_METHOD_NAMES[avatar.method]} model: {fix}")
    ours, theirs = avatar.config.to_dict(), state["config"]
    diffs = [f"{'--' if ModelOptions.is_flag(k) else ''}{k}: checkpoint {theirs.get(k)!r}, "
             f"this run {ours[k]!r}" for k in ours if theirs.get(k) != ours[k]]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was trained with other model options; pass the same "
                              "values: " + "; ".join(diffs))
    if state["n_gaussians"] != avatar.n_gaussians:
        raise CheckpointError(
            f"checkpoint {path} has {state['n_gaussians']} Gaussians, this avatar {avatar.n_gaussians}: the "
            "UV mesh (FlameMesh.obj vs head_template_mesh.obj), the FLAME folder (--flame_dir) or the "
            "subject differ from training")


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(iteration, path) of every ``<run>/ckpt/ckpt<iter>.pth``, in iteration order."""
    found = []
    for p in (Path(run_dir) / "ckpt").glob("ckpt*.pth"):
        m = re.fullmatch(r"ckpt(\d+)\.pth", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def newest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the largest iteration in ``<run>/ckpt``, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def load_checkpoint(path: str | os.PathLike, avatar: Avatar,
                    optimizers: Optimizers | None = None, *,
                    restore_rng: bool = False, average: bool | None = None) -> dict:
    """Load ``path`` into ``avatar`` (and the two optimisers when given, for exact resume); restore the
    active SH degree and, with ``restore_rng``, the RNG states. ``average`` (default: when no optimisers
    are given, i.e. for rendering) loads the run's parameter average (``--ema_decay``) where it has one,
    the last iterate otherwise. Returns the checkpoint dict (its ``iteration`` is the last completed
    iteration, ``extra`` what the caller saved)."""
    state = read_checkpoint(path)
    check_compatible(state, avatar, path)
    try:
        avatar.deformation.load_state_dict(state["deformation"])
        avatar.gaussians.load_state_dict(state["gaussians"])
        averaged = ema_weights(state) if (optimizers is None if average is None else average) else None
        if averaged is not None:
            params = dict(avatar.named_parameters())
            unknown = sorted(set(averaged) - set(params))
            if unknown:
                raise RuntimeError(f"the parameter average names unknown parameters {unknown[:3]}")
            with torch.no_grad():
                for name, value in averaged.items():
                    params[name].copy_(value)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: model parameters do not fit ({str(exc).splitlines()[0]})"
                              ) from exc
    bad = [name for name, p in avatar.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds NaN/Inf parameters ({', '.join(bad[:3])}): the run "
                              "diverged before it was saved; use an earlier checkpoint")
    avatar.gaussians.active_sh_degree = int(state.get("active_sh_degree", 0))
    if optimizers is not None:
        if not state.get("optimizers"):
            raise CheckpointError(f"checkpoint {path} holds no optimiser state, so training cannot resume "
                                  "exactly from it; start a new run instead of --start_checkpoint")
        g_opt, d_opt = optimizers
        try:
            g_opt.load_state_dict(state["optimizers"]["gaussians"])
            d_opt.load_state_dict(state["optimizers"]["deformation"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path}: optimiser state does not fit this model ({exc})"
                                  ) from exc
        for opt in optimizers:  # a run with captured steps saved capturable groups; they need CUDA
            for group in opt.param_groups:
                on_cuda = all(p.is_cuda for p in group["params"])
                group["capturable"] = bool(group.get("capturable")) and on_cuda
    if restore_rng:
        if not state.get("rng"):
            raise CheckpointError(f"checkpoint {path} holds no RNG state; exact resume is impossible")
        restore_rng_state(state["rng"])
    return state

