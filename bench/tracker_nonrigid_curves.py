"""Probe: could an avatar refine the tracker's jaw, gaze and eyelids, as the avatar stage refines cameras?

Trains the avatar stage's avatar (``preprocessing.track.avatar_refine.train_avatar``, the device's preset)
on the *true* tracking of a synthetic subject, then, for a few frames, renders it with the frame's true
condition edited along one axis at a time (``flame.condition.edited_condition``: jaw opening, both eyes'
yaw and pitch, both eyelids) and prints the L1 against the frame at each offset. A correction fitted
against the avatar can only find the truth where the curve's minimum sits at offset 0; on the CPU at 96 px
it did not for the jaw and eyelids (bench/NOTES.md, session 13).

    python bench/tracker_nonrigid_curves.py --size 512 --frames 12 --device cuda --out curves.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from flame.condition import edited_condition  # noqa: E402
from gaussian_renderer import render  # noqa: E402
from preprocessing.synthetic_subject import make_synthetic_subject  # noqa: E402
from preprocessing.track.avatar_refine import avatar_refine_config, train_avatar  # noqa: E402
from utils.atomic import write_json  # noqa: E402

# axis name -> (edited_condition keyword, size of one offset unit)
AXES = {"jaw_deg": ("jaw_open_rad", math.radians(1.0)), "eye_yaw_2deg": ("eye_yaw_rad", math.radians(2.0)),
        "eye_pitch_2deg": ("eye_pitch_rad", math.radians(2.0)), "eyelids_0.05": ("eyelids", 0.05)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--probe_frames", type=int, nargs="+", default=[2, 5, 7, 10])
    ap.add_argument("--offsets", type=float, nargs="+", default=[-4, -2, -1, 0, 1, 2, 4])
    ap.add_argument("--iterations", type=int, default=None, help="the avatar's (default: the device preset)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=REPO / ".devbuild" / "nonrigid_curves")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    root = args.work / f"f{args.frames}_s{args.size}"
    if not (root / "truth" / "s" / "checkpoint").is_dir():
        make_synthetic_subject(root / "d", root / "truth", "s", n_frames=args.frames, image_size=args.size,
                               seed=3, resolution=48)
    cfg = avatar_refine_config(args.device)
    if args.iterations:
        cfg.iterations = args.iterations
    trainer = train_avatar(root / "d", root / "truth", "s", root / "d" / "s" / "flame", root / "runs", cfg,
                           torch.device(args.device), quiet=True)
    avatar, subject = trainer.avatar, trainer.subject
    avatar.eval()
    result: dict = {"size": args.size, "iterations": cfg.iterations, "offsets": args.offsets, "curves": {}}
    with torch.no_grad():
        for i in args.probe_frames:
            frame = subject.frame(i)
            for axis, (keyword, unit) in AXES.items():
                losses = []
                for offset in args.offsets:
                    c = edited_condition(frame.condition, **{keyword: offset * unit})
                    image = render(frame.camera, avatar.deform(c, frame.camera)[0], trainer.background).image
                    losses.append(float((image - frame.image).abs().mean()))
                best = args.offsets[min(range(len(losses)), key=losses.__getitem__)]
                result["curves"][f"frame{i}_{axis}"] = {"l1": losses, "argmin": best}
                curve = " ".join(f"{v * 1e3:.3f}" for v in losses)
                print(f"frame {i:3d} {axis:15s} argmin {best:+5.1f}  {curve}", flush=True)
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
