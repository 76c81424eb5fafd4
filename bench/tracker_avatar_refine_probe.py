"""Probe for the tracker's avatar stage: how much do cameras refined against an avatar gain, per setting?

Makes a synthetic subject (``--frames`` at ``--size`` px, seed 1), tracks it from the true landmarks + 1 px
noise (landmark fit and the device's photometric preset), trains the avatar stage's avatar on that tracking
once (``preprocessing.track.avatar_refine.train_avatar``), then refines every frame's camera against it
with each ``--setting`` (steps, first step in px, final step fraction; a final fraction of 1 is a constant
step) and prints ``consistency_px`` before and after each. Same avatar, same frames: only the refinement
differs. ``--train_after`` also trains a held-out avatar (``--test_num`` frames) on each tracking and on
the truth and prints its PSNR.

    python bench/tracker_avatar_refine_probe.py --size 256 --frames 24 --setting 30,0.5,0.05 30,0.5,1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from flame.assets import load_flame_assets  # noqa: E402
from flame.landmarks import load_landmark_embedding  # noqa: E402
from flame.model import FLAME  # noqa: E402
from preprocessing.synthetic_subject import make_synthetic_subject  # noqa: E402
from preprocessing.track.avatar_refine import (  # noqa: E402
    AvatarRefineConfig,
    avatar_refine_config,
    camera_corrections,
    train_avatar,
)
from preprocessing.track.evaluate import _stack, consistency_px, load_sequence, observations_from_tracking  # noqa: E402
from preprocessing.track.photometric import photometric_config  # noqa: E402
from preprocessing.track.run import TrackConfig, track_subject  # noqa: E402
from scene.data.tracking import save_tracked_frame  # noqa: E402
from scene.trainer import Trainer  # noqa: E402
from utils.options import parse_train_args  # noqa: E402


def held_out_psnr(root: Path, tracking: str, iterations: int, test_num: int, device: str) -> float:
    argv = ["--idname", "s", "--data_root", str(root / "d"), "--tracking_root", str(root / tracking),
            "--log_root", str(root / "logs"), "--logname", tracking, "--test_num", str(test_num),
            "--eval_num", str(test_num), "--iterations", str(iterations), "--eval_every", "0",
            "--lambda_lpips", "0", "--grid_every", "0", "--device", device, "--overwrite", "--uv_size", "64",
            "--hidden_dim", "128", "--hidden_layers", "4"]
    return float(Trainer(parse_train_args(argv)).run()["PSNR"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iterations", type=int, default=None, help="the stage avatar's (default: the preset's)")
    ap.add_argument("--setting", nargs="+", default=["30,0.5,0.05"], metavar="STEPS,STEP_PX,FINAL")
    ap.add_argument("--train_after", action="store_true")
    ap.add_argument("--test_num", type=int, default=8)
    ap.add_argument("--work", type=Path, default=REPO / ".devbuild" / "avatar_refine_probe")
    args = ap.parse_args()
    device = torch.device(args.device)
    root = args.work / f"f{args.frames}_s{args.size}"
    if not (root / "truth").is_dir():
        make_synthetic_subject(root / "d", root / "truth", "s", n_frames=args.frames, image_size=args.size,
                               seed=1, resolution=40)
    flame_dir = root / "d" / "s" / "flame"
    assets, emb = load_flame_assets(flame_dir), load_landmark_embedding(flame_dir)
    truth = load_sequence(root / "truth" / "s" / "checkpoint")
    obs = observations_from_tracking(truth, assets, emb, noise_px=1.0)
    cfg = TrackConfig(focal=2.5, avatar_refine=False, show_progress=False, photo=photometric_config(device))
    track_subject(root / "d", root / "ours", "s", cfg, observations=obs, device=device)
    ours = load_sequence(root / "ours" / "s" / "checkpoint")
    flame, g = FLAME(assets), _stack(truth)
    print(f"consistency_px of our tracking: {consistency_px(g, _stack(ours), flame):.3f}", flush=True)

    stage = avatar_refine_config(device)
    if args.iterations:
        stage.iterations = args.iterations
    t0 = time.perf_counter()
    trainer = train_avatar(root / "d", root / "ours", "s", flame_dir, root / "stage_runs", stage, device)
    print(f"stage avatar trained in {time.perf_counter() - t0:.0f} s", flush=True)
    names = ["ours"]
    for spec in args.setting:
        steps, step_px, final = spec.split(",")
        setting = AvatarRefineConfig(steps=int(steps), step_px=float(step_px), final_step=float(final))
        t0 = time.perf_counter()
        R, t = camera_corrections(trainer.avatar, trainer.subject, trainer.background, setting)
        took = time.perf_counter() - t0
        fitted = dict(_stack(ours), R=R.cpu().float(), t=t.cpu().float())
        print(f"setting {spec}: consistency_px {consistency_px(g, fitted, flame):.3f} ({took:.0f} s)",
              flush=True)
        name = "refined_" + spec.replace(",", "_")
        folder = root / name / "s" / "checkpoint"
        folder.mkdir(parents=True, exist_ok=True)
        for k, fr in enumerate(ours):
            save_tracked_frame(folder / f"{fr.frame_id:05d}.frame", shape=fr.shape.numpy(),
                               expression=fr.expression.numpy(), R=R[k].cpu().double().numpy(),
                               t=t[k].cpu().double().numpy(), K=fr.K.double().numpy(), img_size=fr.img_size,
                               jaw=fr.jaw.numpy(), eyes=fr.eyes.numpy(), eyelids=fr.eyelids.numpy(),
                               frame_id=fr.frame_id)
        names.append(name)
    if args.train_after:
        for name in names + ["truth"]:
            psnr = held_out_psnr(root, name, stage.iterations, args.test_num, args.device)
            print(f"held-out PSNR on {name}: {psnr:.2f}", flush=True)


if __name__ == "__main__":
    main()
