"""Where the tracker's pose error comes from: the landmark fit on a synthetic clip with parts of the truth
held fixed (nothing, the identity shape, the expression and jaw, both), scored against the truth.

    python bench/tracker_identity_probe.py [--frames 40 --size 512 --noise 1.0 --device cpu]

Session 5 (CPU, 40 frames at 512 px, 1 px noise): rotation 2.04 deg fitting everything, 0.82 deg with the
true shape, 2.15 deg with the true expression, 0.75 deg with both: the identity fit drives the pose error.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import preprocessing.track.run as track_run  # noqa: E402
from flame.assets import load_flame_assets  # noqa: E402
from flame.landmarks import load_landmark_embedding  # noqa: E402
from preprocessing.synthetic_subject import make_synthetic_subject  # noqa: E402
from preprocessing.track.evaluate import (  # noqa: E402
    _stack,
    compare_tracking,
    load_sequence,
    observations_from_tracking,
)
from preprocessing.track.model import TrackParams  # noqa: E402
from preprocessing.track.photometric import photometric_config  # noqa: E402

KEYS = ("camera_vertex_mm", "vertex_mm", "shape_vertex_mm", "reprojection_px", "rotation_deg", "jaw_deg",
        "expression_rmse")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--fix", nargs="+", default=["none", "shape", "expr", "shape+expr"])
    ap.add_argument("--photometric", action="store_true", help="also run the photometric stage")
    ap.add_argument("--photo", nargs="*", default=[], metavar="KEY=VALUE",
                    help="PhotometricConfig overrides, e.g. steps=300 size=128")
    ap.add_argument("--fit", nargs="*", default=[], metavar="KEY=VALUE",
                    help="FitConfig overrides, e.g. w_shape=1e-7 steps=3000")
    args = ap.parse_args(argv)
    root = args.work or Path(tempfile.mkdtemp(prefix="identity_probe_"))
    if not (root / "truth" / "s" / "checkpoint" / f"{args.frames - 1:05d}.frame").is_file():
        make_synthetic_subject(root / "d", root / "truth", "s", n_frames=args.frames, image_size=args.size,
                               seed=2, resolution=32, supersample=1)
    flame_dir = root / "d" / "s" / "flame"
    assets, emb = load_flame_assets(flame_dir), load_landmark_embedding(flame_dir)
    truth = load_sequence(root / "truth" / "s" / "checkpoint")
    g = _stack(truth)
    obs = observations_from_tracking(truth, assets, emb, noise_px=args.noise)
    make_params = track_run.TrackParams
    for fix in args.fix:
        def params_with_truth(n: int, focal: float, fix: str = fix, **kwargs) -> TrackParams:
            """The tracker's unknowns with the chosen parts set to the truth and frozen."""
            p = make_params(n, focal, **kwargs)
            with torch.no_grad():
                if "shape" in fix:
                    p.shape.copy_(g["shape"][: p.shape.numel()])
                    p.shape.requires_grad_(False)
                if "expr" in fix:
                    p.expression.copy_(g["expression"][:, : p.expression.shape[1]])
                    p.jaw.copy_(g["jaw"])
                    p.expression.requires_grad_(False)
                    p.jaw.requires_grad_(False)
            return p

        track_run.TrackParams = params_with_truth
        try:
            cfg = track_run.TrackConfig(show_progress=False, restart=True, workers=1,
                                        focal=float(truth[0].K[0, 0]) / args.size,
                                        photometric=args.photometric, avatar_refine=False,
                                        photo=photometric_config(args.device))
            for target, overrides in ((cfg.photo, args.photo), (cfg.fit, args.fit)):
                for kv in overrides:
                    key, value = kv.split("=")
                    setattr(target, key, type(getattr(target, key))(value))
            track_run.track_subject(root / "d", root / f"fit_{fix}", "s", cfg, observations=obs,
                                    device=args.device)
        finally:
            track_run.TrackParams = make_params
        err = compare_tracking(truth, load_sequence(root / f"fit_{fix}" / "s" / "checkpoint"), assets, emb)
        print(f"true {fix:10s}", json.dumps({k: round(err[k], 3) for k in KEYS}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
