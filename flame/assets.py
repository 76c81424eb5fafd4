"""Find and load the FLAME files of docs/maths.md section 2, checked, without chumpy.

``load_flame_assets(flame_dir)`` reads ``generic_model.pkl`` (required), the masks, the UV mesh
(``FlameMesh.obj``, else ``head_template_mesh.obj``) and the eyelid blendshapes (optional, one
warning each when missing) into a :class:`FlameAssets` of plain numpy arrays.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flame.obj import ObjFormatError, ObjMesh, read_obj
from flame.safe_pickle import ChumpyStub, UnsafePickleError, load_pickle, unwrap
from utils.errors import InputError

__all__ = [
    "FlameAssetError", "FlameAssetWarning", "UVMesh", "FlameAssets", "ObjMesh", "read_obj",
    "load_flame_pickle", "load_flame_assets", "resolve_flame_dir", "N_SHAPE", "N_EXPR", "N_JOINTS",
]

N_SHAPE = 300
N_EXPR = 100
N_JOINTS = 5
FLAME_URL = "https://flame.is.tue.mpg.de"
REPO_FLAME_DIR = Path(__file__).resolve().parent

MODEL_FILE = "generic_model.pkl"
MASKS_FILE = Path("FLAME_masks") / "FLAME_masks.pkl"
UV_MESH_FILE = "FlameMesh.obj"
UV_FALLBACK_FILE = "head_template_mesh.obj"
EYELID_FILES = (Path("blendshapes") / "l_eyelid.npy", Path("blendshapes") / "r_eyelid.npy")


class FlameAssetError(InputError):
    """A FLAME file is missing, unreadable or has the wrong content; the message names file and fix."""


class FlameAssetWarning(UserWarning):
    """An optional FLAME file is missing; the system runs with reduced quality."""


@dataclass
class UVMesh:
    """The texture-space mesh: ``faces`` (F',3) vertex ids into FLAME's vertices, ``uv`` (T,2),
    ``uv_faces`` (F',3) ids into ``uv``. ``n_model_faces`` counts FLAME's own faces; faces beyond
    them (the mouth-closing ones of ``FlameMesh.obj``) are :attr:`n_mouth_faces`."""

    faces: np.ndarray
    uv: np.ndarray
    uv_faces: np.ndarray
    path: Path
    n_model_faces: int

    @property
    def n_mouth_faces(self) -> int:
        return max(0, int(self.faces.shape[0]) - self.n_model_faces)


@dataclass
class FlameAssets:
    """Everything the FLAME layer and the embedding need, as numpy arrays (float64 / int64).

    ``kintree_table`` row 0 holds the parents with -1 for the root."""

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    kintree_table: np.ndarray
    weights: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    uv_mesh: UVMesh | None = None
    l_eyelid: np.ndarray | None = None
    r_eyelid: np.ndarray | None = None
    flame_dir: Path = REPO_FLAME_DIR

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def parents(self) -> list[int]:
        return [int(p) for p in self.kintree_table[0]]


def resolve_flame_dir(flame_dir: str | Path | None, subject_dir: Path | None) -> Path:
    """The FLAME folder to use: the explicit flag, else ``<subject_dir>/flame/`` when it holds
    ``generic_model.pkl`` (synthetic subjects carry their own), else the repository's ``flame/``."""
    if flame_dir not in (None, ""):
        return Path(flame_dir).expanduser()
    if subject_dir is not None:
        candidate = Path(subject_dir).expanduser() / "flame"
        if (candidate / MODEL_FILE).is_file():
            return candidate
    return REPO_FLAME_DIR


def load_flame_pickle(path: str | Path) -> dict[str, Any]:
    """Load a FLAME pickle with the restricted unpickler; chumpy arrays come back as numpy arrays.

    Raises :class:`FlameAssetError` naming the file when it is missing, corrupt, not a dict or
    asks for anything besides numpy / scipy.sparse / chumpy."""
    path = Path(path)
    if not path.is_file():
        raise FlameAssetError(f"{path}: file not found")
    try:
        data = load_pickle(path)
    except UnsafePickleError as exc:
        raise FlameAssetError(f"{path}: {exc}. Replace it with the original file.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, ImportError, MemoryError, OverflowError, UnicodeDecodeError) as exc:
        raise FlameAssetError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); the file is "
                              "corrupt or truncated, download it again") from None
    if not isinstance(data, dict):
        raise FlameAssetError(f"{path}: expected a dict in the pickle, found {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        try:
            out[str(key)] = unwrap(value)
        except ValueError:
            out[str(key)] = value  # a chumpy expression without a stored array: fails only if used
    return out


def _dense(value: Any) -> np.ndarray:
    if hasattr(value, "toarray"):
        return np.asarray(value.toarray(), dtype=np.float64)
    return np.asarray(value, dtype=np.float64)


def _check_shape(path: Path, key: str, arr: np.ndarray, shape: tuple[int | None, ...]) -> None:
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise FlameAssetError(f"{path}: '{key}' has shape {tuple(arr.shape)}, expected {want}; "
                              "this is not a FLAME 2020 generic_model.pkl")


def _parse_model(path: Path, data: dict[str, Any]) -> dict[str, np.ndarray]:
    required = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
    missing = [k for k in required if k not in data]
    if missing:
        raise FlameAssetError(f"{path}: missing keys {missing} (found {sorted(data)}); "
                              f"this is not a FLAME generic_model.pkl, get FLAME 2020 from {FLAME_URL}")
    arrays: dict[str, np.ndarray] = {}
    for key in required:
        try:
            value = data[key]
            if isinstance(value, ChumpyStub):
                raise TypeError(f"a chumpy {type(value).__name__} without a stored array")
            if key in ("f", "kintree_table"):
                arrays[key] = np.asarray(value).astype(np.int64)
            else:
                arrays[key] = _dense(value)
        except (TypeError, ValueError) as exc:
            raise FlameAssetError(f"{path}: '{key}' is not a numeric array ({exc}); the file is corrupt or "
                                  "not a FLAME model") from None
    v_template, faces, shapedirs, posedirs, J_regressor, kintree, weights = (arrays[k] for k in required)
    _check_shape(path, "v_template", v_template, (None, 3))
    V = v_template.shape[0]
    _check_shape(path, "f", faces, (None, 3))
    _check_shape(path, "shapedirs", shapedirs, (V, 3, N_SHAPE + N_EXPR))
    _check_shape(path, "posedirs", posedirs, (V, 3, 9 * (N_JOINTS - 1)))
    _check_shape(path, "J_regressor", J_regressor, (N_JOINTS, V))
    _check_shape(path, "kintree_table", kintree, (2, N_JOINTS))
    _check_shape(path, "weights", weights, (V, N_JOINTS))
    if faces.size and (faces.min() < 0 or faces.max() >= V):
        raise FlameAssetError(f"{path}: 'f' indexes vertices outside 0..{V - 1}")
    # FLAME stores the root's parent as an unsigned -1 (4294967295).
    parents = kintree[0].copy()
    parents[(parents < 0) | (parents >= N_JOINTS)] = -1
    if parents[0] != -1 or any(not (0 <= parents[j] < j) for j in range(1, N_JOINTS)):
        raise FlameAssetError(f"{path}: 'kintree_table' parents {kintree[0].tolist()} are not a chain "
                              "rooted at joint 0")
    kintree = np.stack([parents, kintree[1]])
    for key, arr in (("v_template", v_template), ("shapedirs", shapedirs), ("posedirs", posedirs),
                     ("J_regressor", J_regressor), ("weights", weights)):
        if not np.all(np.isfinite(arr)):
            raise FlameAssetError(f"{path}: '{key}' holds NaN or inf values; the file is corrupt")
    return dict(v_template=v_template, faces=faces, shapedirs=shapedirs, posedirs=posedirs,
                J_regressor=J_regressor, kintree_table=kintree, weights=weights)


def _warn(message: str) -> None:
    warnings.warn(message, FlameAssetWarning, stacklevel=3)


def _load_masks(path: Path, n_vertices: int) -> dict[str, np.ndarray]:
    data = load_flame_pickle(path)
    masks: dict[str, np.ndarray] = {}
    for key, value in data.items():
        try:
            idx = np.asarray(value).astype(np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise FlameAssetError(f"{path}: mask '{key}' is not an array of vertex indices") from None
        if idx.size and (idx.min() < 0 or idx.max() >= n_vertices):
            raise FlameAssetError(f"{path}: mask '{key}' indexes vertices outside 0..{n_vertices - 1}; "
                                  "the masks do not belong to this generic_model.pkl")
        masks[key] = idx
    if "boundary" not in masks:
        raise FlameAssetError(f"{path}: no 'boundary' key (the neck ring); found {sorted(masks)}")
    return masks


def _load_eyelid(path: Path, n_vertices: int) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise FlameAssetError(f"{path}: not a readable .npy array ({exc})") from None
    if arr.shape != (n_vertices, 3):
        raise FlameAssetError(f"{path}: shape {arr.shape}, expected ({n_vertices}, 3) for this FLAME model")
    return arr.astype(np.float64)


def _load_uv_mesh(path: Path, n_vertices: int, model_faces: np.ndarray) -> UVMesh:
    try:
        obj = read_obj(path)
    except ObjFormatError as exc:
        raise FlameAssetError(str(exc)) from None
    if obj.uv_faces is None or obj.uv.shape[0] == 0:
        raise FlameAssetError(f"{path}: the UV mesh has no texture coordinates ('vt' and 'f v/vt' lines)")
    if obj.vertices.shape[0] not in (0, n_vertices):
        raise FlameAssetError(f"{path}: {obj.vertices.shape[0]} vertices, but the FLAME model has "
                              f"{n_vertices}; this UV mesh belongs to another model")
    if obj.faces.size and obj.faces.max() >= n_vertices:
        raise FlameAssetError(f"{path}: faces index vertices beyond the FLAME model's {n_vertices}")
    n_model = model_faces.shape[0]
    if obj.faces.shape[0] < n_model:
        raise FlameAssetError(f"{path}: {obj.faces.shape[0]} faces, fewer than the FLAME model's {n_model}")
    if not np.array_equal(obj.faces[:n_model], model_faces):
        _warn(f"{path}: its first {n_model} faces differ from generic_model.pkl's 'f'; "
              "the texture layout is used as the file gives it")
    return UVMesh(faces=obj.faces, uv=obj.uv, uv_faces=obj.uv_faces, path=path, n_model_faces=n_model)


def load_flame_assets(flame_dir: str | Path) -> FlameAssets:
    """Load the FLAME folder ``flame_dir`` (layout of docs/maths.md section 2) into :class:`FlameAssets`."""
    flame_dir = Path(flame_dir).expanduser()
    model_path = flame_dir / MODEL_FILE
    if not model_path.is_file():
        raise FlameAssetError(
            f"FLAME model not found: {model_path.resolve()}. FLAME is licensed and not shipped: register "
            f"at {FLAME_URL}, download FLAME 2020 and copy its generic_model.pkl into {flame_dir.resolve()} "
            "(or into <data_root>/<idname>/flame/ to use it for that subject only, or pass --flame_dir to "
            "the folder that holds it).")
    model = _parse_model(model_path, load_flame_pickle(model_path))
    V = model["v_template"].shape[0]

    masks_path = flame_dir / MASKS_FILE
    if masks_path.is_file():
        masks = _load_masks(masks_path, V)
    else:
        _warn(f"{masks_path} not found: no neck 'boundary' ring, Gaussians at the neck cut are kept. "
              f"Get FLAME_masks.pkl from {FLAME_URL} (FLAME Vertex Masks) into {masks_path.parent}.")
        masks = {"boundary": np.zeros(0, dtype=np.int64)}

    uv_mesh = None
    if (flame_dir / UV_MESH_FILE).is_file():
        uv_mesh = _load_uv_mesh(flame_dir / UV_MESH_FILE, V, model["faces"])
    elif (flame_dir / UV_FALLBACK_FILE).is_file():
        uv_mesh = _load_uv_mesh(flame_dir / UV_FALLBACK_FILE, V, model["faces"])
        _warn(f"{flame_dir / UV_MESH_FILE} not found, using {UV_FALLBACK_FILE}: it has no mouth faces, so "
              "teeth and the mouth interior will be poor. Copy FlameMesh.obj (from the FlashAvatar / "
              f"HyperGaussians code's flame/ folder) into {flame_dir}.")
    else:
        _warn(f"no UV mesh in {flame_dir} ({UV_MESH_FILE} or {UV_FALLBACK_FILE}): Gaussians are sampled "
              "area-uniformly on the surface instead of on the texture grid, and none sit inside the mouth.")

    eyelids: list[np.ndarray | None] = []
    for rel in EYELID_FILES:
        path = flame_dir / rel
        if path.is_file():
            eyelids.append(_load_eyelid(path, V))
        else:
            _warn(f"{path} not found: the eyelid term is zero. It ships with metrical-tracker "
                  f"(copy it into {path.parent}).")
            eyelids.append(None)

    return FlameAssets(**model, masks=masks, uv_mesh=uv_mesh, l_eyelid=eyelids[0], r_eyelid=eyelids[1],
                       flame_dir=flame_dir)
