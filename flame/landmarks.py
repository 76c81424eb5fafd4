"""FLAME's 68-point landmark embedding: where the face's 68 image landmarks sit on the mesh.

``landmark_embedding.npy`` (distributed with FLAME-based trackers; user-supplied like the other FLAME
files) is a NumPy file holding a pickled dict:

- ``static_lmk_faces_idx`` (51,), ``static_lmk_bary_coords`` (51, 3): landmarks 17..67 (brows, nose,
  eyes, mouth), fixed on the mesh;
- ``dynamic_lmk_faces_idx`` (79, 17), ``dynamic_lmk_bary_coords`` (79, 17, 3): the jaw contour
  (landmarks 0..16), one set per yaw bin, because the outline of the cheek that a camera sees slides
  over the mesh as the head turns;
- ``full_lmk_faces_idx`` (1, 68), ``full_lmk_bary_coords`` (1, 68, 3): all 68 at the frontal view.

Yaw bins (the convention these files are made with): a = round(clamp(-yaw, -39, 39)) in degrees, where
yaw is the head's rotation about its vertical axis in a y-up, z-towards-the-camera frame; bin a for
a >= 0 and 39 - a for a < 0 (so bins 0..39 and 40..78). The iris points are not in the file: the front
pole of each eyeball (the eyeball vertex farthest along +z at rest, from the ``left_eyeball`` /
``right_eyeball`` masks) stands for the iris centre.

The file is read without running pickled code (the restricted unpickler of :mod:`flame.safe_pickle`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format
from torch import Tensor

from flame.assets import FLAME_URL, FlameAssetError, FlameAssets
from flame.safe_pickle import RestrictedUnpickler, unwrap
from utils.atomic import atomic_open

LANDMARK_FILE = "landmark_embedding.npy"
N_LANDMARKS = 68
N_CONTOUR = 17
N_YAW_BINS = 79
MAX_YAW_DEG = 39
LANDMARK_HELP = (f"{LANDMARK_FILE} is FLAME's 68-point landmark embedding; it ships with FLAME-based "
                 "trackers (DECA's and metrical-tracker's data folders, from the FLAME site "
                 f"{FLAME_URL}). Put it into the FLAME folder (--flame_dir)")


@dataclass
class LandmarkEmbedding:
    """The 68 landmarks as (face, barycentric) pairs; the contour depends on the yaw bin."""

    static_faces: np.ndarray    # (51,) int64: landmarks 17..67
    static_bary: np.ndarray     # (51, 3)
    dynamic_faces: np.ndarray   # (79, 17) int64: the jaw contour per yaw bin
    dynamic_bary: np.ndarray    # (79, 17, 3)

    def frontal(self) -> tuple[np.ndarray, np.ndarray]:
        """(68,) faces and (68, 3) barycentrics at zero yaw."""
        faces, bary = self.for_bins(np.zeros(1, dtype=np.int64))
        return faces[0], bary[0]

    def for_bins(self, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 68) faces and (B, 68, 3) barycentrics for yaw bins (B,)."""
        bins = np.asarray(bins, dtype=np.int64)
        b = len(bins)
        faces = np.concatenate([self.dynamic_faces[bins], np.broadcast_to(self.static_faces, (b, 51))], 1)
        bary = np.concatenate([self.dynamic_bary[bins], np.broadcast_to(self.static_bary, (b, 51, 3))], 1)
        return faces, bary

    def to_dict(self) -> dict[str, np.ndarray]:
        """The file's dict (the full set is the frontal bin)."""
        full_f, full_b = self.for_bins(np.zeros(1, dtype=np.int64))
        return {"static_lmk_faces_idx": self.static_faces.astype(np.int64),
                "static_lmk_bary_coords": self.static_bary.astype(np.float64),
                "dynamic_lmk_faces_idx": self.dynamic_faces.astype(np.int64),
                "dynamic_lmk_bary_coords": self.dynamic_bary.astype(np.float64),
                "full_lmk_faces_idx": full_f.astype(np.int64), "full_lmk_bary_coords": full_b}


def yaw_bins(head_rotation: Tensor) -> Tensor:
    """Yaw bins (B,) of head rotations (B, 3, 3) given in a y-up, z-towards-the-camera frame."""
    R = head_rotation
    yaw = torch.rad2deg(torch.atan2(-R[..., 2, 0], torch.sqrt(R[..., 0, 0] ** 2 + R[..., 1, 0] ** 2)))
    a = torch.round(torch.clamp(-yaw, -MAX_YAW_DEG, MAX_YAW_DEG)).long()
    return torch.where(a >= 0, a, MAX_YAW_DEG - a)


def _read_npy_object(path: Path) -> object:
    """The pickled payload of an object-dtype ``.npy`` through the restricted unpickler."""
    with open(path, "rb") as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        else:
            shape, _, dtype = npy_format.read_array_header_2_0(f)
        if not dtype.hasobject:
            return np.fromfile(f, dtype=dtype).reshape(shape)
        data = RestrictedUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    if isinstance(data, np.ndarray) and data.dtype == object and data.shape == ():
        data = data[()]
    return data


def load_landmark_embedding(flame_dir: str | Path) -> LandmarkEmbedding:
    """Read ``<flame_dir>/landmark_embedding.npy``; a clear :class:`FlameAssetError` when it is missing or
    not the expected layout."""
    path = Path(flame_dir) / LANDMARK_FILE
    if not path.is_file():
        raise FlameAssetError(f"{path} not found: the tracker needs it. {LANDMARK_HELP}")
    try:
        data = _read_npy_object(path)
    except Exception as exc:  # unreadable or refused pickle: the same fix
        raise FlameAssetError(f"{path} cannot be read ({type(exc).__name__}: {exc}). {LANDMARK_HELP}") \
            from exc
    if not isinstance(data, dict):
        raise FlameAssetError(f"{path} holds {type(data).__name__}, not the landmark dict. {LANDMARK_HELP}")
    need = {"static_lmk_faces_idx": (51,), "static_lmk_bary_coords": (51, 3),
            "dynamic_lmk_faces_idx": (N_YAW_BINS, N_CONTOUR),
            "dynamic_lmk_bary_coords": (N_YAW_BINS, N_CONTOUR, 3)}
    arrays = {}
    for key, shape in need.items():
        if key not in data:
            raise FlameAssetError(f"{path} has no '{key}' (found {sorted(data)}). {LANDMARK_HELP}")
        arr = np.asarray(unwrap(data[key]))
        if arr.shape != shape:
            raise FlameAssetError(f"{path}: '{key}' has shape {arr.shape}, expected {shape}")
        arrays[key] = arr
    return LandmarkEmbedding(arrays["static_lmk_faces_idx"].astype(np.int64),
                             arrays["static_lmk_bary_coords"].astype(np.float64),
                             arrays["dynamic_lmk_faces_idx"].astype(np.int64),
                             arrays["dynamic_lmk_bary_coords"].astype(np.float64))


def write_landmark_embedding(path: str | Path, embedding: LandmarkEmbedding) -> Path:
    """Write ``embedding`` in the file layout above (atomic)."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        np.save(f, np.array(embedding.to_dict(), dtype=object), allow_pickle=True)
    return path


def iris_vertices(assets: FlameAssets) -> np.ndarray:
    """(2,) vertex ids standing for the iris centres, the subject's right eye first (the order of the
    68 landmarks and of the image, left to right): the front pole of each eyeball."""
    out = []
    for key in ("right_eyeball", "left_eyeball"):
        ids = assets.masks.get(key)
        if ids is None or len(ids) == 0:
            raise FlameAssetError(f"FLAME masks in {assets.flame_dir} have no '{key}': the tracker needs the "
                                  "eyeball masks (FLAME_masks.pkl) to fit the eye rotations")
        ids = np.asarray(ids, dtype=np.int64)
        out.append(ids[np.argmax(np.asarray(assets.v_template)[ids, 2])])
    return np.asarray(out, dtype=np.int64)
