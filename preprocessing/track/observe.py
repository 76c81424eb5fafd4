"""What the tracker fits to: 68 face landmarks and two iris centres per frame, from the offline face mesh.

The 68 points follow the usual 68-point layout (jaw 0-16 from the subject's right, brows 17-26, nose
27-35, eyes 36-47, mouth 48-67); each is one of MediaPipe's 468 face-mesh points chosen at the same
place on the face (``MESH_TO_68``). The jaw points are fixed mesh points on the face outline, while
FLAME's contour slides with the yaw, so the fit trusts them less. Iris centres come from MediaPipe's
iris network (:class:`preprocessing.face_landmarks.IrisLandmarker`).

Detections are cached per frame in ``<subject>/track/landmarks.npz`` (written every few hundred frames
and at the end, atomically), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import numpy as np
import torch

from preprocessing.track.model import Observations

# MediaPipe face-mesh index of each of the 68 points.
MESH_TO_68 = np.array([
    234, 93, 132, 58, 172, 136, 150, 176, 152, 400, 379, 365, 397, 288, 361, 323, 454,  # jaw 0-16
    70, 63, 105, 66, 107,                                                               # right brow 17-21
    336, 296, 334, 293, 300,                                                            # left brow 22-26
    168, 197, 5, 4,                                                                     # nose bridge 27-30
    98, 97, 2, 326, 327,                                                                # nostrils 31-35
    33, 160, 158, 133, 153, 144,                                                        # right eye 36-41
    362, 385, 387, 263, 373, 380,                                                       # left eye 42-47
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,                                 # outer lips 48-59
    78, 81, 13, 311, 308, 402, 14, 178,                                                 # inner lips 60-67
], dtype=np.int64)
assert MESH_TO_68.shape == (68,)


def observations_from_arrays(frame_numbers: list[int], points: np.ndarray, irises: np.ndarray,
                             found: np.ndarray, img_size: tuple[int, int]) -> Observations:
    """``points`` (N, 468, 2) face-mesh points, ``irises`` (N, 2, 2) (NaN where the iris network did not
    run), ``found`` (N,) bool -> :class:`Observations` (68 landmarks + irises, confidences)."""
    lmk = np.nan_to_num(points[:, MESH_TO_68, :2])
    iris_ok = np.isfinite(irises).all(-1)
    conf = np.concatenate([np.ones(lmk.shape[:2]), iris_ok.astype(np.float64)], 1) * found[:, None]
    return Observations(list(frame_numbers), torch.from_numpy(lmk).float(),
                        torch.from_numpy(np.nan_to_num(irises)).float(), torch.from_numpy(conf).float(),
                        torch.from_numpy(found.astype(bool)), img_size)
