"""468-point face landmarks offline: MediaPipe's bundled BlazeFace and face-mesh networks run by LiteRT.

``mediapipe==0.10.21`` still ships ``face_detection_short_range.tflite`` and ``face_landmark.tflite`` in
its wheel, but importing mediapipe needs numpy<2 and protobuf<5 (which breaks tensorboard). So the
wheel is installed with ``--no-deps`` only as a carrier of the model files (``mediapipe`` is never
imported), and the two networks run under Google's LiteRT interpreter (``ai-edge-litert``, numpy 2
compatible). The pipeline around them is written here from MediaPipe's published graph settings:

1. BlazeFace (short range): the frame letterboxed to 128x128, RGB in [-1, 1]; 896 SSD anchors (a 16x16
   grid with 2 anchors per cell at stride 8, an 8x8 grid with 6 per cell at stride 16, unit size,
   centred in their cell); box = (dx, dy, w, h) / 128 relative to the anchor; score = sigmoid; six
   keypoints (right eye, left eye, nose tip, mouth, right ear, left ear).
   Overlapping confident anchors (IoU > 0.3 with the best) are blended by score (weighted NMS).
2. Face region: the box, rotated so the eye line is horizontal, made square on its long side, x1.5.
3. Face mesh: that region warped to 192x192, RGB in [0, 1]; outputs 468 (x, y, z) in crop pixels and
   a face-presence logit. A second pass re-centres the region on the landmarks (their bounding box,
   rotation from the eye corners 33 and 263, x1.5), as MediaPipe's tracking loop does.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from preprocessing.rvm import ModelNotFoundError

DETECTOR_FILE = "face_detection_short_range.tflite"
LANDMARK_FILE = "face_landmark.tflite"
IRIS_FILE = "iris_landmark.tflite"
_SUBDIRS = {DETECTOR_FILE: "face_detection", LANDMARK_FILE: "face_landmark", IRIS_FILE: "iris_landmark"}
MEDIAPIPE_HELP = ("the offline face backend needs MediaPipe's bundled face models and the LiteRT runtime: "
                  "`pip install ai-edge-litert` and `pip install --no-deps mediapipe==0.10.21` (only its "
                  "model files are used; --no-deps keeps numpy 2 and protobuf untouched), or pass "
                  "--face_model_dir "
                  f"with {DETECTOR_FILE} and {LANDMARK_FILE}; alternatively give BiSeNet weights "
                  "(--bisenet_weights)")

# Outer lip contour and face oval of the 468-point mesh, in order around each loop.
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
CHIN = 152
FOREHEAD = 10
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
RIGHT_EYE_INNER, LEFT_EYE_INNER = 133, 362


@dataclass
class FaceDetection:
    box: np.ndarray        # (4,) x0, y0, x1, y1 in pixels
    keypoints: np.ndarray  # (6, 2) pixels
    score: float


@dataclass
class FaceLandmarks:
    points: np.ndarray     # (468, 3): x, y in pixels, z in pixels (relative depth)
    presence: float        # face-presence probability of the last pass
    detection: FaceDetection
    irises: np.ndarray | None = None  # (2, 2) iris centres in pixels, the subject's right eye first


def find_iris_model(model_dir: str | Path | None = None) -> Path:
    """``iris_landmark.tflite`` from ``model_dir`` or the installed mediapipe wheel's files."""
    if model_dir is not None:
        root = Path(model_dir)
        hit = next((c for c in (root / IRIS_FILE, root / "modules" / _SUBDIRS[IRIS_FILE] / IRIS_FILE)
                    if c.is_file()), None)
        if hit is None:
            raise ModelNotFoundError(f"{root}: no {IRIS_FILE} there; {MEDIAPIPE_HELP}")
        return hit
    spec = importlib.util.find_spec("mediapipe")
    for loc in (spec.submodule_search_locations if spec is not None else None) or []:
        path = Path(loc) / "modules" / "iris_landmark" / IRIS_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(f"no {IRIS_FILE}: mediapipe's model files are not installed; {MEDIAPIPE_HELP}")


def find_face_models(model_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(detector, landmark) .tflite paths from ``model_dir`` or the installed mediapipe wheel's files."""
    if model_dir is not None:
        root = Path(model_dir)
        found = []
        for name in (DETECTOR_FILE, LANDMARK_FILE):
            cands = [root / name, root / "modules" / _SUBDIRS[name] / name]
            hit = next((c for c in cands if c.is_file()), None)
            if hit is None:
                raise ModelNotFoundError(f"{root}: no {name} there; {MEDIAPIPE_HELP}")
            found.append(hit)
        return found[0], found[1]
    spec = importlib.util.find_spec("mediapipe")  # locates the files without importing mediapipe
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"no face models: mediapipe's model files are not installed; "
                                 f"{MEDIAPIPE_HELP}")
    for loc in spec.submodule_search_locations:
        det = Path(loc) / "modules" / "face_detection" / DETECTOR_FILE
        lmk = Path(loc) / "modules" / "face_landmark" / LANDMARK_FILE
        if det.is_file() and lmk.is_file():
            return det, lmk
    raise ModelNotFoundError(f"the installed mediapipe ({list(spec.submodule_search_locations)}) does not "
                             f"bundle {DETECTOR_FILE} / {LANDMARK_FILE} (releases after 0.10.21 dropped "
                             f"them); {MEDIAPIPE_HELP}")


def _interpreter(path: Path, threads: int | None = None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ModelNotFoundError(f"the LiteRT runtime (ai-edge-litert) is not installed; "
                                 f"{MEDIAPIPE_HELP}") from exc
    interp = Interpreter(model_path=str(path), num_threads=threads or min(4, os.cpu_count() or 1))
    interp.allocate_tensors()
    return interp


def blazeface_anchors() -> np.ndarray:
    """(896, 2) anchor centres in [0,1] of BlazeFace short range (unit-size anchors)."""
    out = []
    for grid, per_cell in ((16, 2), (8, 6)):
        c = (np.arange(grid) + 0.5) / grid
        yy, xx = np.meshgrid(c, c, indexing="ij")
        centres = np.stack([xx.ravel(), yy.ravel()], axis=1)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out).astype(np.float64)


def _sample(image: torch.Tensor, grid_xy: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear sample image (1,3,H,W) float at pixel positions grid_xy (h*w, 2) (pixel centres at i+0.5)."""
    H, W = image.shape[2:]
    g = torch.from_numpy(grid_xy.astype(np.float32)).view(1, out_hw[0], out_hw[1], 2)
    g = torch.stack([g[..., 0] / W * 2 - 1, g[..., 1] / H * 2 - 1], dim=-1)
    out = F.grid_sample(image, g, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def _rect_grid(cx: float, cy: float, size: float, angle: float, n: int) -> np.ndarray:
    """Image pixel positions (n*n, 2) of an n x n crop of a square region rotated by ``angle``."""
    u = ((np.arange(n) + 0.5) / n - 0.5) * size
    ly, lx = np.meshgrid(u, u, indexing="ij")
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([cx + ca * lx - sa * ly, cy + sa * lx + ca * ly], axis=-1).reshape(-1, 2)


class IrisLandmarker:
    """The iris centre of each eye from MediaPipe's iris network, on a 64x64 crop around the eye corners
    of the face mesh (2.3 x the corner distance, turned with the corner line). The network is trained
    on left eyes, so the right eye's crop is mirrored in and its result mirrored back."""

    SCALE = 2.3

    def __init__(self, model_dir: str | Path | None = None, threads: int | None = None) -> None:
        self.net = _interpreter(find_iris_model(model_dir), threads)
        outs = {o["name"]: o["index"] for o in self.net.get_output_details()}
        if "output_iris" not in outs:
            raise ModelNotFoundError(f"{find_iris_model(model_dir)}: no 'output_iris' (not MediaPipe's iris "
                                     f"landmark network); {MEDIAPIPE_HELP}")
        self._in, self._iris = self.net.get_input_details()[0]["index"], outs["output_iris"]

    def __call__(self, img: torch.Tensor, mesh: np.ndarray) -> np.ndarray:
        """(2, 2) iris centres (right eye, left eye) in pixels; ``img`` (1,3,H,W) in [0,1], ``mesh``
        the 468 face-mesh points."""
        out = []
        for outer, inner, mirror in ((RIGHT_EYE_OUTER, RIGHT_EYE_INNER, True),
                                     (LEFT_EYE_INNER, LEFT_EYE_OUTER, False)):
            p0, p1 = mesh[outer, :2], mesh[inner, :2]  # left to right in the image
            centre, size = (p0 + p1) / 2, float(np.linalg.norm(p1 - p0)) * self.SCALE
            angle = float(np.arctan2(p1[1] - p0[1], p1[0] - p0[0]))
            crop = _sample(img, _rect_grid(centre[0], centre[1], size, angle, 64), (64, 64))
            if mirror:
                crop = crop[:, ::-1]
            self.net.set_tensor(self._in, np.ascontiguousarray(crop[None], dtype=np.float32))
            self.net.invoke()
            u, v = self.net.get_tensor(self._iris).reshape(5, 3)[0, :2].astype(np.float64)
            if mirror:
                u = 64.0 - u
            lx, ly = (u / 64 - 0.5) * size, (v / 64 - 0.5) * size
            ca, sa = np.cos(angle), np.sin(angle)
            out.append([centre[0] + ca * lx - sa * ly, centre[1] + sa * lx + ca * ly])
        return np.asarray(out)


class FaceLandmarker:
    """Detect the most confident face and its 468 landmarks in an RGB frame (uint8 (H,W,3)); with
    ``irises`` also the two iris centres (:class:`IrisLandmarker`), 470 points in all."""

    def __init__(self, model_dir: str | Path | None = None, min_score: float = 0.5,
                 irises: bool = False, threads: int | None = None) -> None:
        self.iris = IrisLandmarker(model_dir, threads) if irises else None
        det_path, lmk_path = find_face_models(model_dir)
        self.detector = _interpreter(det_path, threads)
        self.landmarker = _interpreter(lmk_path, threads)
        self.anchors = blazeface_anchors()
        self.min_score = min_score
        d_out = {o["name"]: o["index"] for o in self.detector.get_output_details()}
        self._det_in = self.detector.get_input_details()[0]["index"]
        self._det_reg, self._det_cls = d_out.get("regressors"), d_out.get("classificators")
        l_out = sorted(self.landmarker.get_output_details(), key=lambda o: -int(np.prod(o["shape"])))
        self._lmk_in = self.landmarker.get_input_details()[0]["index"]
        self._lmk_pts, self._lmk_flag = l_out[0]["index"], l_out[1]["index"]
        if self._det_reg is None or self._det_cls is None or int(np.prod(l_out[0]["shape"])) != 468 * 3:
            raise ModelNotFoundError(f"{det_path} / {lmk_path}: unexpected model outputs (not MediaPipe's "
                                     f"BlazeFace short range / 468-point face mesh); {MEDIAPIPE_HELP}")

    def detect(self, rgb: np.ndarray) -> FaceDetection | None:
        """The best BlazeFace detection (score >= min_score), in pixels, or None."""
        h, w = rgb.shape[:2]
        side = float(max(h, w))
        img = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0  # a copy
        pad_x, pad_y = (side - w) / 2, (side - h) / 2  # letterbox: centre the frame in a black square
        img = F.pad(img, (int(pad_x), int(side) - w - int(pad_x), int(pad_y), int(side) - h - int(pad_y)),
                    value=-1.0)
        pad_x, pad_y = float(int(pad_x)), float(int(pad_y))
        inp = F.interpolate(img, size=(128, 128), mode="bilinear", align_corners=False, antialias=True)
        inp = inp[0].permute(1, 2, 0).numpy()
        self.detector.set_tensor(self._det_in, inp[None].astype(np.float32))
        self.detector.invoke()
        reg = self.detector.get_tensor(self._det_reg)[0].astype(np.float64)
        logit = np.clip(self.detector.get_tensor(self._det_cls)[0, :, 0].astype(np.float64), -100, 100)
        score = 1.0 / (1.0 + np.exp(-logit))
        best = int(np.argmax(score))
        if score[best] < self.min_score:
            return None
        # decode every confident anchor, then blend those overlapping the best (weighted NMS)
        keep = np.nonzero(score >= self.min_score)[0]
        r = reg[keep] / 128.0
        a = self.anchors[keep]
        centre = r[:, :2] + a
        boxes = np.concatenate([centre - r[:, 2:4] / 2, centre + r[:, 2:4] / 2], axis=1)
        kps = r[:, 4:16].reshape(-1, 6, 2) + a[:, None]
        b0 = boxes[int(np.nonzero(keep == best)[0][0])]
        inter = np.clip(np.minimum(boxes[:, 2:], b0[2:]) - np.maximum(boxes[:, :2], b0[:2]), 0, None).prod(1)
        area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
        iou = inter / np.maximum(area + (b0[2:] - b0[:2]).prod() - inter, 1e-12)
        wts = score[keep] * (iou > 0.3)
        wts = wts / wts.sum()
        box = (wts[:, None] * boxes).sum(0)
        kp = (wts[:, None, None] * kps).sum(0)
        off = np.array([pad_x, pad_y])
        return FaceDetection(box=box * side - np.tile(off, 2), keypoints=kp * side - off,
                             score=float(score[best]))

    def _mesh(self, img: torch.Tensor, cx: float, cy: float, size: float,
              angle: float) -> tuple[np.ndarray, float]:
        crop = _sample(img, _rect_grid(cx, cy, size, angle, 192), (192, 192))
        self.landmarker.set_tensor(self._lmk_in, crop[None].astype(np.float32))
        self.landmarker.invoke()
        pts = self.landmarker.get_tensor(self._lmk_pts).reshape(468, 3).astype(np.float64)
        flag = float(self.landmarker.get_tensor(self._lmk_flag).reshape(-1)[0])
        lx, ly = (pts[:, 0] / 192 - 0.5) * size, (pts[:, 1] / 192 - 0.5) * size
        ca, sa = np.cos(angle), np.sin(angle)
        out = np.stack([cx + ca * lx - sa * ly, cy + sa * lx + ca * ly, pts[:, 2] / 192 * size], axis=1)
        return out, 1.0 / (1.0 + np.exp(-np.clip(flag, -100, 100)))

    def __call__(self, rgb: np.ndarray, refine: int = 0) -> FaceLandmarks | None:
        """Landmarks of the most confident face, or None when no face is found."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H,W,3) RGB frame, got shape {rgb.shape}")
        det = self.detect(rgb)
        if det is None:
            return None
        img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
        eye_r, eye_l = det.keypoints[0], det.keypoints[1]
        angle = float(np.arctan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0]))
        cx, cy = (det.box[0] + det.box[2]) / 2, (det.box[1] + det.box[3]) / 2
        size = 1.5 * max(det.box[2] - det.box[0], det.box[3] - det.box[1])
        pts, presence = self._mesh(img, cx, cy, size, angle)
        for _ in range(refine):
            d = pts[LEFT_EYE_OUTER, :2] - pts[RIGHT_EYE_OUTER, :2]
            angle = float(np.arctan2(d[1], d[0]))
            # bounding box in the rotated frame, as MediaPipe's landmarks-to-rect does
            ca, sa = np.cos(angle), np.sin(angle)
            rel = pts[:, :2] - pts[:, :2].mean(0)
            u, v = rel @ np.array([ca, sa]), rel @ np.array([-sa, ca])
            cu, cv = (u.max() + u.min()) / 2, (v.max() + v.min()) / 2
            centre = pts[:, :2].mean(0) + cu * np.array([ca, sa]) + cv * np.array([-sa, ca])
            size = 1.5 * max(u.max() - u.min(), v.max() - v.min())
            pts, presence = self._mesh(img, float(centre[0]), float(centre[1]), size, angle)
        if presence < 0.5:
            return None
        irises = self.iris(img, pts) if self.iris is not None else None
        return FaceLandmarks(points=pts, presence=presence, detection=det, irises=irises)
