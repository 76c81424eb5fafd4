"""``python -m preprocessing.track --idname me``: track a subject's frames with FLAME (no external tracker).

Reads ``<data_root>/<idname>/imgs`` (with ``alpha/`` and ``parsing/`` where present) and writes
``<tracking_root>/<idname>/checkpoint/NNNNN.frame``, ready for ``train.py``. Resumable: a rerun reuses
the landmark cache and finished stages under ``<data_root>/<idname>/track/`` (``--restart`` redoes them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from preprocessing.track.run import TrackConfig, track_subject
from preprocessing.track.viz import write_overlay_video
from utils.device import resolve_device
from utils.errors import InputError
from utils.options import DEFAULT_DATA_ROOT, DEFAULT_TRACKING_ROOT


def build_parser() -> argparse.ArgumentParser:
    d = TrackConfig()
    p = argparse.ArgumentParser(prog="python -m preprocessing.track", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--idname", required=True, help="subject: frames in <data_root>/<idname>/imgs")
    p.add_argument("--data_root", type=Path, default=DEFAULT_DATA_ROOT, help="folder of subjects")
    p.add_argument("--tracking_root", type=Path, default=DEFAULT_TRACKING_ROOT,
                   help="writes <tracking_root>/<idname>/checkpoint/NNNNN.frame")
    p.add_argument("--flame_dir", type=Path, default=None,
                   help="FLAME folder with landmark_embedding.npy (default: the subject's flame/, else the "
                        "repository's flame/)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    p.add_argument("--focal", type=float, default=d.focal,
                   help="initial focal length in units of the image width (fitted with a weak prior; pass "
                        "the true value when known)")
    p.add_argument("--no_face", choices=["interpolate", "drop", "error"], default=d.no_face,
                   help="frames where no face is found: fill in from the neighbours, leave untracked, or "
                        "stop")
    p.add_argument("--photometric", action="store_true",
                   help="after the landmark fit, refine against the pixels (Gaussians on the mesh through "
                        "the project's rasterizer). Recommended where time allows: on the synthetic "
                        "benchmark (CPU, demo size) it closed the tracked-vs-truth avatar gap from 2.6 dB "
                        "to 0; not yet measured at 512 px (bench/NOTES.md, session 6)")
    p.add_argument("--steps", type=int, default=d.fit.steps, help="landmark-fit iterations")
    p.add_argument("--photo_steps", type=int, default=d.photo.steps,
                   help="photometric steps (each renders --photo_batch frames)")
    p.add_argument("--photo_batch", type=int, default=d.photo.batch,
                   help="frames rendered per photometric step")
    p.add_argument("--photo_size", type=int, default=d.photo.size,
                   help="photometric stage renders at this many pixels (longer side)")
    p.add_argument("--face_model_dir", type=Path, default=None,
                   help="folder with MediaPipe's face and iris .tflite files (default: the installed "
                        "wheel's)")
    p.add_argument("--workers", type=int, default=0,
                   help="landmark detection processes (0: up to 8, one per core)")
    p.add_argument("--viz", action="store_true",
                   help="write <data_root>/<idname>/track/overlay.mp4 (fitted mesh and landmarks over the "
                        "frames)")
    p.add_argument("--restart", action="store_true", help="ignore cached landmarks and finished stages")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = TrackConfig(focal=args.focal, no_face=args.no_face, photometric=args.photometric,
                      face_model_dir=args.face_model_dir, workers=args.workers, restart=args.restart,
                      show_progress=not args.quiet)
    cfg.fit.steps = args.steps
    cfg.photo.steps, cfg.photo.size, cfg.photo.batch = args.photo_steps, args.photo_size, args.photo_batch
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        print(f"preprocessing.track: {exc}", file=sys.stderr)
        return 2
    try:
        summary = track_subject(args.data_root, args.tracking_root, args.idname, cfg,
                                flame_dir=args.flame_dir, device=device)
        if args.viz:
            video = write_overlay_video(args.data_root, args.tracking_root, args.idname,
                                        flame_dir=args.flame_dir)
            print(f"[track] overlay video -> {video}")
    except InputError as exc:
        print(f"preprocessing.track: {exc}", file=sys.stderr)
        return 2
    lm = summary["landmark_stage"]
    print(f"[track] {summary['frames']} frames on {summary['device']}: landmark error "
          f"{lm['landmark_error_px']:.2f} px, focal {summary['focal']:.2f} x width, "
          f"{summary['timings']['total_s']:.1f} s -> {summary['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
