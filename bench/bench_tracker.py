"""Tracker speed and accuracy on a synthetic subject with known tracking.

Renders a base clip of ``--base_frames`` synthetic frames at ``--size`` pixels, extends it to
``--frames`` by playing it forwards and backwards (images, masks and the true ``.frame`` files), then:

1. times MediaPipe landmark detection over all frames (``--workers`` processes);
2. runs the tracker on the true landmarks with ``--noise`` px of noise (a face detector's landmarks do
   not sit where the synthetic head's own embedding puts them, so accuracy is measured without one),
   timing the landmark fit, the photometric stage and (``--avatar_refine``) the avatar stage, and scores
   each against the truth (preprocessing/track/evaluate.py).

    python bench/bench_tracker.py --frames 1000 --size 512 --device cuda --out track_bench.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from flame.assets import load_flame_assets  # noqa: E402
from flame.landmarks import load_landmark_embedding  # noqa: E402
from preprocessing.synthetic_subject import make_synthetic_subject  # noqa: E402
from preprocessing.track.avatar_refine import avatar_refine_config  # noqa: E402
from preprocessing.track.evaluate import compare_tracking, load_sequence, observations_from_tracking  # noqa: E402
from preprocessing.track.photometric import photometric_config  # noqa: E402
from preprocessing.track.run import TrackConfig, detect_landmarks, list_frames, track_subject  # noqa: E402
from scene.data.tracking import load_frame_dict  # noqa: E402
from utils.atomic import atomic_open, write_json  # noqa: E402


def extend_clip(root: Path, base: int, frames: int) -> None:
    """Play the base clip forwards and backwards up to ``frames`` frames (files copied, renumbered)."""
    sub, tr = root / "d" / "s", root / "truth" / "s" / "checkpoint"
    period = 2 * base - 2
    for k in range(base, frames):
        j = k % period
        src = j if j < base else period - j
        shutil.copy(sub / "imgs" / f"{src:05d}.png", sub / "imgs" / f"{k:05d}.png")
        shutil.copy(sub / "alpha" / f"{src:05d}.png", sub / "alpha" / f"{k:05d}.png")
        for kind in ("neckhead", "mouth"):
            shutil.copy(sub / "parsing" / f"{src:05d}_{kind}.png", sub / "parsing" / f"{k:05d}_{kind}.png")
        data = load_frame_dict(tr / f"{src:05d}.frame")
        data["frame_id"] = k
        with atomic_open(tr / f"{k:05d}.frame", "wb") as f:
            torch.save(data, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--base_frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--resolution", type=int, default=64, help="synthetic head grid resolution")
    ap.add_argument("--noise", type=float, default=1.0, help="landmark noise in pixels")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--work", type=Path, default=REPO / ".devbuild" / "track_bench")
    ap.add_argument("--focal", type=float, default=None, help="initial focal (default: the true one)")
    ap.add_argument("--photo_steps", type=int, default=None)
    ap.add_argument("--no_detect", action="store_true", help="skip the detection timing")
    ap.add_argument("--avatar_refine", action="store_true", help="also time and score the avatar stage")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here too")
    args = ap.parse_args()

    root = args.work / f"f{args.frames}_s{args.size}"
    result: dict = {"frames": args.frames, "size": args.size, "device": args.device,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if not (root / "truth" / "s" / "checkpoint" / f"{args.frames - 1:05d}.frame").is_file():
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        make_synthetic_subject(root / "d", root / "truth", "s", n_frames=args.base_frames,
                               image_size=args.size, seed=2, resolution=args.resolution, supersample=1)
        extend_clip(root, args.base_frames, args.frames)
        result["generate_s"] = time.perf_counter() - t0
    flame_dir = root / "d" / "s" / "flame"
    assets, emb = load_flame_assets(flame_dir), load_landmark_embedding(flame_dir)
    truth = load_sequence(root / "truth" / "s" / "checkpoint")
    models = REPO / ".devdata" / "face_models"  # where bench/gpu runs carry MediaPipe's model files
    cfg = TrackConfig(show_progress=False, restart=True, workers=args.workers,
                      focal=args.focal or float(truth[0].K[0, 0]) / args.size,
                      face_model_dir=models if models.is_dir() else None,
                      photo=photometric_config(args.device), refine=avatar_refine_config(args.device))
    if args.photo_steps is not None:
        cfg.photo.steps = args.photo_steps
    if not args.no_detect:
        t0 = time.perf_counter()
        imgs = list_frames(root / "d" / "s" / "imgs")
        obs = detect_landmarks(imgs, root / "d" / "s" / "track" / "lm.npz", cfg)
        result["detect_s"] = time.perf_counter() - t0
        result["detect_found"] = int(obs.valid.sum())
        print(f"detection: {result['detect_s']:.1f} s for {args.frames} frames "
              f"({result['detect_found']} faces)")
    obs = observations_from_tracking(truth, assets, emb, noise_px=args.noise)
    stages = [("landmarks", False, False), ("photometric", True, False)]
    stages += [("avatar", True, True)] if args.avatar_refine else []
    for name, photometric, avatar in stages:
        cfg.photometric, cfg.avatar_refine = photometric, avatar
        if args.device == "cuda":
            torch.cuda.synchronize()
        summary = track_subject(root / "d", root / f"fit_{name}", "s", cfg, observations=obs,
                                device=args.device)
        err = compare_tracking(truth, load_sequence(root / f"fit_{name}" / "s" / "checkpoint"), assets, emb)
        result[name] = {"timings": summary["timings"], "errors": err,
                        "stage": summary.get("avatar_stage", summary.get("photometric_stage",
                                                                         summary["landmark_stage"]))}
        print(name, json.dumps(result[name]))
        cfg.restart = False  # each later run resumes the stages the one before it computed
    if "detect_s" in result:
        t = result["landmarks"]["timings"]["total_s"] + result["photometric"]["timings"]["photometric_fit_s"]
        t += result["avatar"]["timings"]["avatar_refine_s"] if "avatar" in result else 0.0
        result["end_to_end_s"] = result["detect_s"] + t  # detection, both stages, writing the .frame files
        print(f"end to end: {result['end_to_end_s']:.1f} s for {args.frames} frames")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
