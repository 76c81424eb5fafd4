"""``python -m preprocessing.track --idname me``: track a subject's frames with FLAME (no external tracker).

Reads ``<data_root>/<idname>/imgs`` (with ``alpha/`` and ``parsing/`` where present) and writes
``<tracking_root>/<idname>/checkpoint/NNNNN.frame``, ready for ``train.py``. Resumable: a rerun reuses
the landmark cache and finished stages under ``<data_root>/<idname>/track/`` (``--restart`` redoes them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from preprocessing.track.avatar_refine import avatar_refine_config
from preprocessing.track.photometric import photometric_config
from preprocessing.track.run import TrackConfig, track_subject
from preprocessing.track.viz import write_overlay_video
from utils.device import resolve_device
from utils.errors import InputError
from utils.options import DEFAULT_DATA_ROOT, DEFAULT_TRACKING_ROOT


def _preset_options(p: argparse.ArgumentParser, prefix: str, gpu: object, cpu: object,
                    helps: dict[str, str]) -> None:
    """``--<prefix>_<field>`` integer options overriding a per-device preset; unset, they are absent from
    the parsed namespace (so the device's preset stands), and their help names both presets' values."""
    for name, text in helps.items():
        on = f"{getattr(gpu, name)} on a GPU, {getattr(cpu, name)} on the CPU"
        p.add_argument(f"--{prefix}_{name}", type=int, default=argparse.SUPPRESS,
                       help=f"{text} (default: {on})")


def _with_overrides(preset, args: argparse.Namespace, prefix: str):
    """``preset`` with the ``--<prefix>_<field>`` options the command line gave."""
    for key, value in vars(args).items():
        if key.startswith(prefix + "_"):
            setattr(preset, key.removeprefix(prefix + "_"), value)
    return preset


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
    p.set_defaults(photometric=True)  # before the two switches, so that --help shows no default for them
    p.add_argument("--no_photometric", dest="photometric", action="store_false", default=argparse.SUPPRESS,
                   help="landmark fit only. By default a photometric stage follows it: Gaussians on "
                        "the mesh, through the project's rasterizer, fitted to the matted frames. On the "
                        "synthetic benchmark at 512 px it raised the held-out PSNR of an avatar trained on "
                        "the tracking by 1.8 dB (bench/NOTES.md, session 7); it takes about 30 s on a GPU "
                        "and 75-85 s on 2 CPU cores (lighter settings there)")
    p.add_argument("--photometric", dest="photometric", action="store_true", default=argparse.SUPPRESS,
                   help="run the photometric stage (the default; kept for older command lines)")
    p.add_argument("--steps", type=int, default=d.fit.steps, help="landmark-fit iterations")
    _preset_options(p, "photo", photometric_config("cuda"), photometric_config("cpu"), {
        "steps": "photometric steps, each rendering --photo_batch frames",
        "batch": "frames rendered per photometric step",
        "size": "the photometric stage renders at this many pixels, longer side"})
    hide = argparse.SUPPRESS
    p.add_argument("--photo_nonrigid", dest="photo_nonrigid", action="store_true", default=hide,
                   help="the photometric stage also refines expression, jaw, eyes and eyelids (the CPU "
                        "preset's choice; at 512 px it took the jaw and gaze further off and cost the "
                        "avatar, bench/NOTES.md session 14)")
    p.add_argument("--no_photo_nonrigid", dest="photo_nonrigid", action="store_false", default=hide,
                   help="the photometric stage refines cameras and identity only (the GPU preset's choice)")
    p.set_defaults(avatar_refine=d.avatar_refine)
    p.add_argument("--avatar_refine", dest="avatar_refine", action="store_true", default=hide,
                   help="after the pixel stage, train a quick avatar on the tracking and refine every "
                        "frame's camera against it (preprocessing/track/avatar_refine.py). By default it "
                        "runs on a GPU when the subject has its mattes and parsing masks, and not on the "
                        "CPU (minutes there); this switch asks for it anyway")
    p.add_argument("--no_avatar_refine", dest="avatar_refine", action="store_false", default=hide,
                   help="skip the avatar stage")
    _preset_options(p, "refine", avatar_refine_config("cuda"), avatar_refine_config("cpu"), {
        "iterations": "the avatar stage's training iterations",
        "steps": "camera-correction steps per frame",
        "rounds": "train-and-refine rounds"})
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
                      avatar_refine=args.avatar_refine, face_model_dir=args.face_model_dir,
                      workers=args.workers, restart=args.restart, show_progress=not args.quiet)
    cfg.fit.steps = args.steps
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        print(f"preprocessing.track: {exc}", file=sys.stderr)
        return 2
    cfg.photo = _with_overrides(photometric_config(device), args, "photo")
    cfg.refine = _with_overrides(avatar_refine_config(device), args, "refine")
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
