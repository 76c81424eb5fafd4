"""Does an avatar trained on our tracking match one trained on the true tracking?

Makes a synthetic subject (its ``.frame`` files are the truth), tracks it with the built-in tracker from
the true landmarks plus ``--noise`` px of noise (the synthetic face is not one a detector is made for),
then trains the same avatar on both trackings for each seed and reports the held-out masked PSNR /
SSIM (the subject's test split: the same images, each tracking's own cameras), mean and spread.

    python bench/bench_tracked_training.py --seeds 0 1 --device cpu            # demo size, ~15 min on 2 cores
    python bench/bench_tracked_training.py --size 512 --frames 200 --test_num 50 --iterations 7000 \
        --model_size full --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flame.assets import load_flame_assets  # noqa: E402
from flame.landmarks import load_landmark_embedding  # noqa: E402
from preprocessing.synthetic_subject import make_synthetic_subject  # noqa: E402
from preprocessing.track.avatar_refine import avatar_refine_config  # noqa: E402
from preprocessing.track.evaluate import compare_tracking, load_sequence, observations_from_tracking  # noqa: E402
from preprocessing.track.photometric import photometric_config  # noqa: E402
from preprocessing.track.run import TrackConfig, track_subject  # noqa: E402
from scene.data.tracking import TrackedFrame, load_tracked_frame, save_tracked_frame  # noqa: E402
from scene.trainer import Trainer  # noqa: E402
from utils.atomic import write_json  # noqa: E402
from utils.options import parse_train_args  # noqa: E402

SWAPPABLE = ("shape", "expression", "jaw", "eyes", "eyelids", "R", "t", "K")


def swap_fields(folder: Path, truth: list[TrackedFrame], fields: list[str]) -> None:
    """Rewrite every ``.frame`` in ``folder`` with ``fields`` taken from the true frame of the same number."""
    unknown = sorted(set(fields) - set(SWAPPABLE))
    if unknown:
        raise SystemExit(f"swap: unknown field(s) {unknown}; choose from {SWAPPABLE}")
    by_id = {f.frame_id: f for f in truth}
    for path in sorted(folder.glob("*.frame")):
        fitted = load_tracked_frame(path)
        values = {k: getattr(by_id[fitted.frame_id] if k in fields else fitted, k) for k in SWAPPABLE}
        save_tracked_frame(path, img_size=fitted.img_size, frame_id=fitted.frame_id, **values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--test_num", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=2500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--photometric", action="store_true", help="also run the tracker's photometric stage")
    ap.add_argument("--variant", nargs="+", action="append", default=None, metavar="NAME [KEY=VALUE ...]",
                    help="a tracker setting to compare (repeatable): a name, then fit.KEY=VALUE / "
                         "photo.KEY=VALUE / refine.KEY=VALUE overrides of FitConfig / PhotometricConfig / "
                         "AvatarRefineConfig, photometric=1, avatar_refine=1, "
                         "focal=F (fx / width), train.FLAG=VALUE (a train.py option for this tracking's "
                         "avatars), swap=FIELD,... (after tracking, these fields of every frame are the "
                         "truth's: shape, expression, jaw, eyes, eyelids, R, t, K; to see which part of "
                         "the tracking error costs the avatar); default: one 'tracked'")
    ap.add_argument("--train_args", default="", help="train.py options for every avatar, e.g. "
                    "'--lambda_normal_offset 0'")
    ap.add_argument("--reuse_stages", action="store_true",
                    help="variants with the same landmark / photometric settings share those stages' "
                         "checkpoints (e.g. swap= probes of one tracking) instead of each tracking anew")
    ap.add_argument("--skip_truth", action="store_true",
                    help="train on the trackings only (the truth's runs are deterministic)")
    ap.add_argument("--truth_only", action="store_true",
                    help="train on the true tracking only (to run it beside trackings in other processes)")
    ap.add_argument("--model_size", choices=["demo", "full"], default="demo",
                    help="demo: the README demo's model (uv 64, 128 x 4); full: train.py's defaults")
    ap.add_argument("--work", type=Path, default=REPO / ".devbuild" / "tracked_training")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    if args.truth_only and args.skip_truth:
        ap.error("--truth_only and --skip_truth leave nothing to train")
    root = args.work / f"f{args.frames}_s{args.size}"
    if not (root / "truth" / "s" / "checkpoint").is_dir():
        make_synthetic_subject(root / "d", root / "truth", "s", n_frames=args.frames, image_size=args.size,
                               seed=0, resolution=48)
    flame_dir = root / "d" / "s" / "flame"
    assets, emb = load_flame_assets(flame_dir), load_landmark_embedding(flame_dir)
    truth = load_sequence(root / "truth" / "s" / "checkpoint")
    obs = observations_from_tracking(truth, assets, emb, noise_px=args.noise)
    variants = [] if args.truth_only else args.variant or [["tracked"]]
    result: dict = {"tracking_errors": {}, "tracking_timings": {}, "runs": {}, "train_args": args.train_args}
    train_extra: dict[str, list[str]] = {"truth": args.train_args.split()}
    for name, *overrides in variants:
        train_extra[name] = args.train_args.split()
        cfg = TrackConfig(focal=2.5, photometric=args.photometric, avatar_refine=False, show_progress=False,
                          restart=not args.reuse_stages, photo=photometric_config(args.device),
                          refine=avatar_refine_config(args.device))  # the stage only where a variant asks
        swap: list[str] = []
        for kv in overrides:
            key, value = kv.split("=", 1)
            if key == "swap":
                swap = value.split(",")
                continue
            if key.startswith("train."):
                train_extra[name] += [f"--{key.removeprefix('train.')}", value]
                continue
            if key in ("photometric", "avatar_refine", "focal"):
                setattr(cfg, key, float(value) if key == "focal" else bool(int(value)))
                continue
            part, field_name = key.split(".", 1)
            target = {"fit": cfg.fit, "photo": cfg.photo, "refine": cfg.refine}[part]
            kind = type(getattr(target, field_name))
            setattr(target, field_name, bool(int(value)) if kind is bool else kind(value))
        summary = track_subject(root / "d", root / name, "s", cfg, observations=obs, device=args.device)
        if swap:
            swap_fields(root / name / "s" / "checkpoint", truth, swap)
        errors = compare_tracking(truth, load_sequence(root / name / "s" / "checkpoint"), assets, emb)
        print(f"tracking {name} vs truth:", json.dumps(errors), flush=True)
        result["tracking_errors"][name], result["tracking_timings"][name] = errors, summary["timings"]
    demo_model = ["--uv_size", "64", "--hidden_dim", "128", "--hidden_layers", "4"]
    model = demo_model if args.model_size == "demo" else []
    names = ([] if args.skip_truth else ["truth"]) + [v[0] for v in variants]
    for tracking in names:
        for seed in args.seeds:
            argv = ["--idname", "s", "--data_root", str(root / "d"), "--tracking_root", str(root / tracking),
                    "--log_root", str(root / "logs"), "--logname", f"{tracking}_seed{seed}",
                    "--test_num", str(args.test_num), "--eval_num", str(args.test_num), "--iterations",
                    str(args.iterations), "--eval_every", "0", "--lambda_lpips", "0", "--grid_every", "0",
                    "--seed", str(seed), "--device", args.device, "--overwrite", *model,
                    *train_extra[tracking]]
            res = Trainer(parse_train_args(argv)).run()
            result["runs"][f"{tracking}_seed{seed}"] = {k: res[k] for k in ("PSNR", "SSIM")}
            print(tracking, seed, result["runs"][f"{tracking}_seed{seed}"], flush=True)
            if args.out:
                write_json(args.out, result)
    for tracking in names:
        psnr = [result["runs"][f"{tracking}_seed{s}"]["PSNR"] for s in args.seeds]
        result[tracking] = {"PSNR_mean": statistics.mean(psnr),
                            "PSNR_sd": statistics.stdev(psnr) if len(psnr) > 1 else 0.0}
        r = result[tracking]
        print(f"{tracking}: held-out PSNR {r['PSNR_mean']:.2f} +- {r['PSNR_sd']:.2f} dB, seeds {args.seeds}")
    if args.skip_truth or not names[1:]:
        if args.out:
            write_json(args.out, result)
        return
    truth_psnr = result["truth"]["PSNR_mean"]
    result["PSNR_gap_dB"] = {name: truth_psnr - result[name]["PSNR_mean"] for name in names[1:]}
    for name, gap in result["PSNR_gap_dB"].items():
        print(f"gap (truth - {name}): {gap:.2f} dB")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
