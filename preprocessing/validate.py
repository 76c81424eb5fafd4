"""Check a subject folder (and its tracking folder when present) before training; list every problem at once.

Subject layout (docs/maths.md section 8): ``imgs/NNNNN.png|jpg``, ``alpha/NNNNN.png|jpg``,
``parsing/NNNNN_neckhead.png``,
``parsing/NNNNN_mouth.png``; tracking ``<tracking>/NNNNN.frame`` (metrical-tracker output), image
``NNNNN`` pairing with tracking frame ``NNNNN - frame_delta``. Checked: the folders exist, hold only
images named by 5-digit frame numbers, the same frames in every folder, one image size throughout,
every file decodes (unless ``--quick``), no empty neck-head mask; each needed ``.frame`` file exists,
loads (:func:`scene.data.tracking.load_tracked_frame`) and was tracked at the images' size; then what
train.py checks, through its own code: the FLAME folder loads and the subject opens. Empty mouth masks
are warnings (a frame may hide the mouth). Exit code 1 when there is any problem.

Usage: ``python preprocessing/validate.py --data_path dataset/<id> [--tracking_path
metrical-tracker/output/<id>/checkpoint]`` or ``--idname <id> [--data_root dataset] [--tracking_root
metrical-tracker/output]``.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from preprocessing.frames_io import scan_folder, stray_files_message
from scene.data.tracking import load_tracked_frame
from utils.image_io import ImageReadError, image_size, read_image_uint8, read_mask_uint8

FRAME_RE = re.compile(r"^\d{5}$")
MASK_RE = re.compile(r"^(\d{5})_(neckhead|mouth)$")


@dataclass
class ValidationReport:
    data_path: Path
    tracking_path: Path | None
    n_frames: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [
            f"subject {self.data_path}: {self.n_frames} frame(s); tracking "
            f"{self.tracking_path if self.tracking_path else 'not checked'}"
        ]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines += [f"warning: {w}" for w in self.warnings]
        ok = "OK: ready for training" if self.tracking_path else "OK: the images are ready for tracking"
        lines.append(ok if self.ok else f"{len(self.problems)} problem(s) found")
        return "\n".join(lines)


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def _folder(report: ValidationReport, path: Path, what: str, pattern: re.Pattern) -> dict[str, Path]:
    """name -> file for the images of ``path`` whose stems match ``pattern``; problems recorded."""
    if not path.is_dir():
        report.problems.append(f"{path}: {what} not found (not a directory); re-run the preprocessing step "
                               "that makes it")
        return {}
    files, strays = scan_folder(path)
    if strays:
        report.problems.append(stray_files_message(path, strays, what))
    if not files:
        report.problems.append(f"{path}: the {what} holds no images")
    bad = [f.name for f in files if not pattern.match(f.stem)]
    if bad:
        report.problems.append(
            f"{path}: {len(bad)} file(s) not named by a 5-digit frame number: {_short(bad)}; "
            "run preprocessing/organize.py"
        )
    out: dict[str, Path] = {}
    for f in files:
        if pattern.match(f.stem):
            if f.stem in out:
                report.problems.append(f"{path}: frame {f.stem} exists twice ({out[f.stem].name}, {f.name})")
            out[f.stem] = f
    return out


def _check_tracking(
    report: ValidationReport,
    tracking: Path,
    numbers: list[int],
    frame_delta: int,
    size: tuple[int, int] | None,
) -> None:

    missing, bad_size, shapes = [], [], None
    for n in numbers:
        path = tracking / f"{n - frame_delta:05d}.frame"
        if n - frame_delta < 0 or not path.is_file():
            missing.append(f"{n:05d}->{path.name}")
            continue
        try:
            tf = load_tracked_frame(path)
        except Exception as exc:  # the loader's errors name the file and the key
            report.problems.append(str(exc))
            continue
        if size is not None and tuple(tf.img_size) != tuple(size):
            bad_size.append(f"{path.name} {tf.img_size}")
        if shapes is None:
            shapes = tf.shape
        elif not np.allclose(tf.shape.numpy(), shapes.numpy(), atol=1e-4):
            report.warnings.append(
                f"{path}: FLAME shape differs from the first frame's (the subject uses frame "
                "0's shape for every frame)"
            )
    if missing:
        report.problems.append(
            f"{tracking}: no tracking for {len(missing)} image(s) (image->frame file, "
            f"frame_delta={frame_delta}): {_short(missing)}; track them with metrical-tracker, "
            "remove those images, or fix --frame_delta"
        )
    if bad_size:
        report.problems.append(
            f"{tracking}: {len(bad_size)} frame(s) were tracked at another image size than the "
            f"images' {size} (h, w): {_short(bad_size)}; track the same crop"
        )


def validate_subject(
    data_path: str | Path,
    tracking_path: str | Path | None = None,
    *,
    frame_delta: int = 0,
    decode: bool = True,
    flame_dir: str | Path | None = None,
) -> ValidationReport:
    """Check a subject folder and (when given or present) its tracking folder; collect every problem."""
    data_path = Path(data_path)
    tracking = Path(tracking_path) if tracking_path is not None else None
    report = ValidationReport(data_path=data_path, tracking_path=tracking)
    if not data_path.is_dir():
        report.problems.append(
            f"{data_path}: subject folder not found; run preprocessing/video_to_subject.py "
            "or check --data_path / --data_root"
        )
        return report
    imgs = _folder(report, data_path / "imgs", "frame folder (imgs/)", FRAME_RE)
    alpha = _folder(report, data_path / "alpha", "matte folder (alpha/)", FRAME_RE)
    masks = _folder(report, data_path / "parsing", "parsing folder", MASK_RE)
    report.n_frames = len(imgs)
    groups = {
        "alpha/": alpha,
        "parsing/*_neckhead": {k[:5]: v for k, v in masks.items() if k.endswith("_neckhead")},
        "parsing/*_mouth": {k[:5]: v for k, v in masks.items() if k.endswith("_mouth")},
    }
    if imgs:
        for name, files in groups.items():
            if not files and not (data_path / name.split("/")[0]).is_dir():
                continue  # the missing folder is already reported
            missing = sorted(set(imgs) - set(files))
            extra = sorted(set(files) - set(imgs))
            if missing:
                report.problems.append(
                    f"{data_path / name}: missing for {len(missing)} frame(s) of imgs/: {_short(missing)}"
                )
            if extra:
                report.warnings.append(
                    f"{data_path / name}: {len(extra)} frame(s) without an image in imgs/ "
                    f"(ignored): {_short(extra)}"
                )

    # sizes (headers) and decoding
    sizes: dict[tuple[int, int], list[str]] = {}
    frame_size: dict[str, tuple[int, int]] = {}
    for stem, f in imgs.items():
        try:
            hw = image_size(f)
        except ImageReadError as exc:
            report.problems.append(str(exc))
            continue
        sizes.setdefault(hw, []).append(stem)
        frame_size[stem] = hw
    size = None
    if len(sizes) > 1:
        desc = "; ".join(f"{h}x{w}: {len(s)} frame(s) e.g. {s[0]}" for (h, w), s in sizes.items())
        report.problems.append(
            f"{data_path / 'imgs'}: mixed image sizes ({desc}); all frames must share one size"
        )
    elif sizes:
        size = next(iter(sizes))
    mismatched, empty_head, empty_mouth = [], [], []
    for name, files in groups.items():
        for stem, f in files.items():
            try:
                hw = image_size(f)
                if stem in frame_size and hw != frame_size[stem]:
                    mismatched.append(f"{name.split('/')[0]}/{f.name} {hw}")
                    continue
                if decode or name != "alpha/":
                    m = read_mask_uint8(f)
                    if name.endswith("neckhead") and not (m > 127).any():
                        empty_head.append(stem)
                    elif name.endswith("mouth") and not (m > 127).any():
                        empty_mouth.append(stem)
            except ImageReadError as exc:
                report.problems.append(str(exc))
    if decode:

        for f in imgs.values():
            try:
                read_image_uint8(f)
            except ImageReadError as exc:
                report.problems.append(str(exc))
    if mismatched:
        report.problems.append(
            f"{data_path}: {len(mismatched)} mask/matte file(s) differ in size from their image: "
            f"{_short(mismatched)}; re-run the preprocessing step that made them"
        )
    if empty_head:
        report.problems.append(
            f"{data_path / 'parsing'}: empty neck-head mask for {len(empty_head)} frame(s): "
            f"{_short(sorted(empty_head))}; re-run semantic.py or remove those frames"
        )
    if empty_mouth:
        report.warnings.append(
            f"{data_path / 'parsing'}: empty mouth mask for {len(empty_mouth)} frame(s): "
            f"{_short(sorted(empty_mouth))} (fine if the mouth is hidden)"
        )

    if tracking is not None:
        if not tracking.is_dir():
            report.problems.append(
                f"{tracking}: tracking folder not found; run metrical-tracker on this subject "
                "(docs/custom_video.md) or fix --tracking_path / --tracking_root"
            )
        elif imgs:
            _check_tracking(report, tracking, sorted(int(s) for s in imgs), frame_delta, size)
    _check_as_training_does(report, data_path, tracking, frame_delta, flame_dir)
    return report


def _check_as_training_does(report: ValidationReport, data_path: Path, tracking: Path | None,
                            frame_delta: int, flame_dir: Path | None) -> None:
    """What train.py itself checks, through the same code: the FLAME folder it would use, and opening the
    subject (pairing, sizes, every file intact, plausible tracking). Its first complaint is added when the
    checks above found nothing, so that "OK" means train.py will start."""
    from flame.assets import load_flame_assets, resolve_flame_dir
    from scene.data.subject import Subject
    from utils.errors import InputError

    if tracking is None:
        return  # images only (before tracking): FLAME is not needed yet
    try:
        load_flame_assets(resolve_flame_dir(flame_dir, data_path))
    except InputError as exc:
        report.problems.append(str(exc))
    if report.problems:
        return
    if tracking.name != "checkpoint" or tracking.parent.name != data_path.name:
        report.warnings.append(f"{tracking}: not laid out as <tracking_root>/{data_path.name}/checkpoint, so "
                               "the subject was not opened the way train.py opens it")
        return
    try:
        Subject(data_path.parent, tracking.parent.parent, data_path.name, frame_delta=frame_delta, test_num=1,
                eval_num=1, preload="none")
    except InputError as exc:
        report.problems.append(str(exc))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data_path", default=None, help="subject folder (default: <data_root>/<idname>)")
    p.add_argument(
        "--tracking_path",
        default=None,
        help="folder of .frame files (default: <tracking_root>/<idname>/checkpoint when it exists)",
    )
    p.add_argument("--idname", default=None, help="subject name")
    p.add_argument("--data_root", default="dataset")
    p.add_argument("--tracking_root", default="metrical-tracker/output")
    p.add_argument(
        "--frame_delta", type=int, default=0, help="image NNNNN pairs with tracking frame NNNNN - delta"
    )
    p.add_argument("--flame_dir", default=None, help="FLAME folder (default: the subject's own flame/, else "
                   "the repository's flame/), checked as train.py loads it")
    p.add_argument("--quick", action="store_true", help="read image headers only (skip decoding every file)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data_path is None and args.idname is None:
        print("error: give --data_path or --idname", file=sys.stderr)
        return 2
    data_path = Path(args.data_path) if args.data_path else Path(args.data_root) / args.idname
    tracking = Path(args.tracking_path) if args.tracking_path else None
    if tracking is None and args.idname:
        candidate = Path(args.tracking_root) / args.idname / "checkpoint"
        tracking = candidate if candidate.is_dir() else None
        if tracking is None:
            print(f"note: no tracking folder at {candidate}; checking the images only", file=sys.stderr)
    report = validate_subject(data_path, tracking, frame_delta=args.frame_delta, decode=not args.quick,
                              flame_dir=Path(args.flame_dir) if args.flame_dir else None)
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
