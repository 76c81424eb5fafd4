"""Probe for the tracker's next stage: refine every frame's camera against an avatar trained on our tracking.

Makes the demo-size synthetic subject (60 frames at 128 px, seed 0), tracks it from the true landmarks + 1 px
noise with the default tracker, trains the demo avatar on that tracking (8 frames held out), then fits a
small rotation and translation correction to each frame's camera (all frames, held-out ones included, as
the tracker's photometric stage also fits every frame's image) by rendering the fixed avatar against the
frame (L1, 30 Adam steps; the Gaussians are moved rigidly and their orientations left unturned: the
corrections are below a degree). Prints ``consistency_px`` before and after, then trains the same avatar
on the refined and on the true tracking.

    python bench/tracker_avatar_refine_probe.py [--iterations 2500] [--work DIR]   # CPU: ~12 min on 2 cores

Session 10 (one seed): consistency 0.373 -> 0.283 px; held-out PSNR on ours 33.18, refined 34.85,
truth 34.98 dB.
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
from gaussian_renderer import render  # noqa: E402
from gaussian_renderer.types import GaussianSet  # noqa: E402
from preprocessing.synthetic_subject import make_synthetic_subject  # noqa: E402
from preprocessing.track.evaluate import _stack, consistency_px, load_sequence, observations_from_tracking  # noqa: E402
from preprocessing.track.photometric import photometric_config  # noqa: E402
from preprocessing.track.run import TrackConfig, track_subject  # noqa: E402
from scene.data.tracking import save_tracked_frame  # noqa: E402
from scene.trainer import Trainer  # noqa: E402
from utils.options import parse_train_args  # noqa: E402
from utils.rotations import identity_rot6d, rot6d_to_matrix  # noqa: E402


def train(root: Path, tracking: str, iterations: int) -> Trainer:
    """The demo avatar trained on ``root/tracking`` (8 frames held out); returns the finished trainer."""
    argv = ["--idname", "s", "--data_root", str(root / "d"), "--tracking_root", str(root / tracking),
            "--log_root", str(root / "logs"), "--logname", tracking, "--test_num", "8", "--eval_num", "8",
            "--iterations", str(iterations), "--eval_every", "0", "--lambda_lpips", "0", "--grid_every", "0",
            "--device", "cpu", "--overwrite", "--uv_size", "64", "--hidden_dim", "128",
            "--hidden_layers", "4"]
    trainer = Trainer(parse_train_args(argv))
    print(f"avatar on {tracking}: held-out PSNR {trainer.run()['PSNR']:.2f}", flush=True)
    return trainer


def refine_cameras(trainer: Trainer, steps: int = 30) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Each frame's corrected world-to-camera (R, t), by frame id: x_cam = dR (R X + t) + dt, fitted by
    rendering the fixed avatar (moved rigidly so that the old camera sees it as the new one would)."""
    avatar, subject = trainer.avatar, trainer.subject
    avatar.eval()
    for p in avatar.parameters():
        p.requires_grad_(False)
    out = {}
    for i in range(len(subject)):
        frame = subject.frame(i)
        cam = frame.camera
        with torch.no_grad():
            gs, _ = avatar.deform(frame.condition, cam)
        d6 = torch.nn.Parameter(identity_rot6d(1)[0].clone())
        dt = torch.nn.Parameter(torch.zeros(3))
        opt = torch.optim.Adam([{"params": [d6], "lr": 2e-3}, {"params": [dt], "lr": 2e-4}])
        R, t = cam.R.float(), cam.t.float()
        for _ in range(steps):
            dR = rot6d_to_matrix(d6[None])[0]
            means = (gs.means @ (dR @ R).T + dR @ t + dt - t) @ R  # R^T (R_new X + t_new - t)
            moved = GaussianSet(means, gs.scales, gs.rotations, gs.opacities, shs=gs.shs, colors=gs.colors,
                                sh_degree=gs.sh_degree)
            loss = (render(cam, moved, trainer.background).image - frame.image).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            dR = rot6d_to_matrix(d6[None])[0]
            out[subject.tracked(i).frame_id] = (dR @ R, dR @ t + dt)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=2500)
    ap.add_argument("--work", type=Path, default=REPO / ".devbuild" / "avatar_refine")
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = args.work
    if not (root / "truth").is_dir():
        make_synthetic_subject(root / "d", root / "truth", "s", n_frames=60, image_size=128, seed=0,
                               resolution=48)
    assets = load_flame_assets(root / "d" / "s" / "flame")
    emb = load_landmark_embedding(root / "d" / "s" / "flame")
    truth = load_sequence(root / "truth" / "s" / "checkpoint")
    if not (root / "ours" / "s" / "checkpoint").is_dir():
        obs = observations_from_tracking(truth, assets, emb, noise_px=1.0)
        cfg = TrackConfig(focal=2.5, show_progress=False, photo=photometric_config("cpu"))
        track_subject(root / "d", root / "ours", "s", cfg, observations=obs)
    ours = load_sequence(root / "ours" / "s" / "checkpoint")
    flame, g, f = FLAME(assets), _stack(truth), _stack(ours)
    print("consistency_px of our tracking:", consistency_px(g, f, flame), flush=True)

    t0 = time.perf_counter()
    refined = refine_cameras(train(root, "ours", args.iterations))
    print(f"cameras refined in {time.perf_counter() - t0:.0f} s", flush=True)
    R = torch.stack([refined[fr.frame_id][0] for fr in truth])
    t = torch.stack([refined[fr.frame_id][1] for fr in truth])
    print("consistency_px after refining:", consistency_px(g, dict(f, R=R, t=t), flame), flush=True)
    folder = root / "refined" / "s" / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    for fr in ours:
        Rk, tk = refined[fr.frame_id]
        save_tracked_frame(folder / f"{fr.frame_id:05d}.frame", shape=fr.shape.numpy(),
                           expression=fr.expression.numpy(), R=Rk.double().numpy(), t=tk.double().numpy(),
                           K=fr.K.double().numpy(), img_size=fr.img_size, jaw=fr.jaw.numpy(),
                           eyes=fr.eyes.numpy(), eyelids=fr.eyelids.numpy(), frame_id=fr.frame_id)
    train(root, "refined", args.iterations)
    train(root, "truth", args.iterations)


if __name__ == "__main__":
    main()
