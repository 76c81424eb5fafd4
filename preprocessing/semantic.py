"""Face parsing of the white composites (``comp/``) into ``parsing/NNNNN_neckhead.png`` and ``_mouth.png``.

Class rules (docs/maths.md section 11, CelebAMask-HQ labels): the neck-head mask is every class except
background (0) and cloth (16); the mouth mask is classes 11, 12, 13 (inner mouth, upper lip, lower lip).

Two backends:
- ``bisenet``: the project's BiSeNet (:mod:`preprocessing.bisenet`) with the official ``79999_iter.pth``
  weights from a path the user gives: the masks follow the rules above exactly.
- ``landmarks`` (offline, no downloaded weights): MediaPipe's bundled 468-point face mesh run through
  LiteRT (:mod:`preprocessing.face_landmarks`) plus the matte. Mouth = the filled outer lip contour
  (lips + inner mouth, as classes 11-13). Neck-head = the matte above the chin line (limited to the
  jaw's width in a band just above the chin, where shoulders can rise), plus the visible neck skin
  below the jaw line (pixels of the face's own skin colour connected to the jaw,
  :mod:`preprocessing.neck_mask`), plus the face oval. It approximates BiSeNet: shoulders are cut
  geometrically, so hair falling below the chin beside the neck is dropped; collars, ties and
  turtlenecks are left out because they are not skin.
``auto`` uses BiSeNet when weights are given, else the landmark backend, with a warning.

Usage: ``python preprocessing/semantic.py --input_path <dir>/../comp [--bisenet_weights 79999_iter.pth]``;
masks go to ``<input_path>/../parsing`` and the matte is read from ``<input_path>/../alpha``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image, ImageDraw

from preprocessing.bisenet import BISENET_HELP, load_bisenet, parse_labels
from preprocessing.face_landmarks import CHIN, FACE_OVAL, FOREHEAD, LIPS_OUTER, FaceLandmarker
from preprocessing.frames_io import PreprocessError, list_images, progress
from preprocessing.neck_mask import neck_from_skin
from preprocessing.rvm import ModelNotFoundError
from utils.device import resolve_device
from utils.image_io import ImageReadError, find_image, read_image_uint8, read_mask, write_image

BACKGROUND, CLOTH = 0, 16
MOUTH_CLASSES = (11, 12, 13)
CHIN_BAND = 0.3       # height above the chin line where width is limited to the jaw, in face heights
JAW_MARGIN = 0.6      # half-width allowed there, in jaw widths
LANDMARK_WARNING = ("face parsing without BiSeNet weights: using the offline landmark backend, which "
                    "approximates BiSeNet's classes - mouth = filled outer lip contour of MediaPipe's face "
                    "mesh; neck-head = matte above the chin line + the skin-coloured neck below the jaw "
                    "+ the face oval (shoulders cut geometrically, long hair below the chin dropped). For "
                    "the exact class rules give --bisenet_weights 79999_iter.pth")


def masks_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(neckhead, mouth) boolean masks from CelebAMask-HQ class labels, per docs/maths.md section 11."""
    labels = np.asarray(labels)
    neckhead = (labels != BACKGROUND) & (labels != CLOTH)
    mouth = np.isin(labels, MOUTH_CLASSES)
    return neckhead, mouth


def fill_polygon(points: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Boolean (H,W) mask of a filled polygon given by (N,2) pixel points (x, y; pixel i spans [i, i+1))."""
    img = Image.new("L", (hw[1], hw[0]), 0)
    # PIL fills pixel centres at integer coordinates: shift continuous coordinates by -0.5
    ImageDraw.Draw(img).polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in points], fill=1, outline=1)
    return np.asarray(img, dtype=bool)


class BiSeNetBackend:
    """Exact class rules from BiSeNet labels."""

    name = "bisenet"
    needs_alpha = False

    def __init__(self, weights: str | Path, device: str = "auto") -> None:
        try:
            self.model = load_bisenet(weights, resolve_device(device))
        except FileNotFoundError as exc:
            raise ModelNotFoundError(str(exc)) from exc
        except ValueError as exc:
            raise PreprocessError(str(exc)) from exc

    def __call__(self, rgb: np.ndarray, alpha: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return masks_from_labels(parse_labels(self.model, rgb)[0])


class LandmarkBackend:
    """Offline approximation from face-mesh landmarks and the matte (see the module docstring)."""

    name = "landmarks"
    needs_alpha = True

    def __init__(self, face_model_dir: str | Path | None = None) -> None:
        self.landmarker = FaceLandmarker(face_model_dir)

    def __call__(self, rgb: np.ndarray, alpha: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if alpha is None:
            raise PreprocessError("the landmark backend needs the matte (alpha/); run rvm.py first or give "
                                  "--alpha_path")
        hw = rgb.shape[:2]
        matte = alpha > 0.5
        face = self.landmarker(rgb)
        if face is None:  # empty masks: the matte alone would pass whatever stands in front for a head
            return np.zeros(hw, dtype=bool), np.zeros(hw, dtype=bool)
        pts = face.points[:, :2]
        mouth = fill_polygon(pts[list(LIPS_OUTER)], hw)
        oval = pts[list(FACE_OVAL)]
        chin, top = pts[CHIN], pts[FOREHEAD]
        up = top - chin
        face_h = float(np.linalg.norm(up))
        up /= max(face_h, 1e-6)
        side = np.array([-up[1], up[0]])
        jaw_w = float(np.ptp((oval - chin) @ side))
        ys, xs = np.mgrid[0:hw[0], 0:hw[1]]
        rel = np.stack([xs + 0.5 - chin[0], ys + 0.5 - chin[1]], axis=-1)
        below = -(rel @ up)                       # distance below the chin line
        lateral = np.abs(rel @ side)
        keep = ((below <= -CHIN_BAND * face_h)  # well above the chin: head and hair, any width
                | ((below <= 0) & (lateral <= JAW_MARGIN * jaw_w)))  # just above: no shoulders beside the jaw
        neck = neck_from_skin(rgb, matte, pts, up, side, face_h, jaw_w, lambda p: fill_polygon(p, hw))
        neckhead = (matte & keep) | neck | fill_polygon(oval, hw)
        return neckhead, mouth


def make_backend(kind: str = "auto", *, bisenet_weights: str | Path | None = None, device: str = "auto",
                 face_model_dir: str | Path | None = None):
    """A parsing backend: ``bisenet`` (needs weights), ``landmarks`` (offline) or ``auto``."""
    if kind not in ("auto", "bisenet", "landmarks"):
        raise ValueError(f"unknown parsing backend {kind!r}; use auto, bisenet or landmarks")
    if kind == "bisenet" or (kind == "auto" and bisenet_weights is not None):
        if bisenet_weights is None:

            raise ModelNotFoundError(f"--backend bisenet needs --bisenet_weights; {BISENET_HELP}")
        return BiSeNetBackend(bisenet_weights, device)
    if kind == "auto":
        warnings.warn(LANDMARK_WARNING, stacklevel=2)
    return LandmarkBackend(face_model_dir)


@dataclass
class ParsingResult:
    written: int
    skipped: int
    out_dir: Path
    no_face: list[str] = field(default_factory=list)


def parse_folder(input_path: str | Path, output_path: str | Path | None = None, *,
                 alpha_path: str | Path | None = None, backend=None,
                 backend_factory: Callable[[], object] | None = None, resume: bool = True,
                 show_progress: bool = True) -> ParsingResult:
    """Write ``NAME_neckhead.png`` and ``NAME_mouth.png`` for every frame of ``input_path`` (the comp folder).

    ``backend`` (or, built only when a frame needs it, ``backend_factory()``) defaults to
    :func:`make_backend` ``('auto')``. Frames whose two masks exist are skipped with ``resume``."""
    input_path = Path(input_path)
    files = list_images(input_path, what="composite folder (comp/)")
    out_dir = Path(output_path) if output_path is not None else input_path.resolve().parent / "parsing"
    alpha_dir = Path(alpha_path) if alpha_path is not None else input_path.resolve().parent / "alpha"

    def outputs(stem: str) -> tuple[Path, Path]:
        return out_dir / f"{stem}_neckhead.png", out_dir / f"{stem}_mouth.png"

    todo = [f for f in files if not (resume and all(p.is_file() for p in outputs(f.stem)))]
    if not todo:
        return ParsingResult(written=0, skipped=len(files), out_dir=out_dir)
    backend = backend or (backend_factory() if backend_factory is not None else make_backend("auto"))
    if backend.needs_alpha:
        missing = [f.name for f in todo if find_image(alpha_dir, f.stem) is None]
        if missing:
            raise PreprocessError(f"{alpha_dir}: no matte for {len(missing)} frame(s) (e.g. {missing[:3]}); "
                                  f"the {backend.name} backend needs alpha/ - run rvm.py first or pass "
                                  "--alpha_path")
    out_dir.mkdir(parents=True, exist_ok=True)
    no_face = []
    for f in progress(todo, desc=f"parsing ({backend.name})", disable=not show_progress):
        try:
            rgb = read_image_uint8(f)
            alpha = read_mask(find_image(alpha_dir, f.stem)) if backend.needs_alpha else None
        except ImageReadError as exc:
            raise PreprocessError(str(exc)) from exc
        if alpha is not None and alpha.shape != rgb.shape[:2]:
            raise PreprocessError(f"{f}: size {rgb.shape[:2]} differs from its matte's {alpha.shape}; "
                                  "re-run rvm.py")
        neckhead, mouth = backend(rgb, alpha)
        if not mouth.any():
            no_face.append(f.stem)
        nh_path, mouth_path = outputs(f.stem)
        write_image(nh_path, neckhead.astype(np.float32))
        write_image(mouth_path, mouth.astype(np.float32))
    if no_face:
        warnings.warn(f"{len(no_face)} frame(s) got an empty mouth mask (no face or mouth found): "
                      f"{', '.join(no_face[:20])}{' ...' if len(no_face) > 20 else ''}; with the landmark "
                      "backend their neck-head mask is empty too (validate.py lists them): remove them "
                      "before tracking", stacklevel=2)
    return ParsingResult(written=len(todo), skipped=len(files) - len(todo), out_dir=out_dir, no_face=no_face)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input_path", required=True, help="folder of white composites (comp/ from rvm.py)")
    p.add_argument("--output_path", default=None, help="mask folder (default: <input_path>/../parsing)")
    p.add_argument("--alpha_path", default=None, help="matte folder (default: <input_path>/../alpha)")
    p.add_argument("--backend", default="auto", choices=["auto", "bisenet", "landmarks"])
    p.add_argument("--bisenet_weights", "--model_path", dest="bisenet_weights", default=None,
                   help="BiSeNet face-parsing weights 79999_iter.pth")
    p.add_argument("--face_model_dir", default=None,
                   help="folder with face_detection_short_range.tflite and face_landmark.tflite "
                        "(default: from the installed mediapipe==0.10.21 wheel)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (BiSeNet)")
    p.add_argument("--no_resume", action="store_true", help="recompute frames whose masks already exist")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        backend = make_backend(args.backend, bisenet_weights=args.bisenet_weights, device=args.device,
                               face_model_dir=args.face_model_dir)
        result = parse_folder(args.input_path, args.output_path, alpha_path=args.alpha_path, backend=backend,
                              resume=not args.no_resume)
    except PreprocessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"parsing: {result.written} frame(s) written, {result.skipped} already done -> {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
