"""The avatar stage's correction step, its frames rendered one call each or side by side in one call.

On the raster oracle's head scene (14527 Gaussians, 512x512), B views (the oracle camera turned by a
few degrees each) get the tracker's avatar-stage step (``preprocessing/track/avatar_refine.py``): a
small turn and shift of each view's camera-space Gaussians, a render, L1 against a target, backward to
the (B, 6) corrections, Adam. Timed by wall clock over many steps (the host work between launches is
what the strip removes, so CUDA events around one call would miss it), for ``one call a view`` and for
``strip`` (``gaussian_renderer.strip``), with the largest pixel difference between the two renders.

    python bench/bench_strip.py [--batches 1 4 8 16] [--steps 50] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_rasterizer import find_scene  # noqa: E402
from gaussian_renderer.strip import at_origin, camera_space, render_camera_space, view_strip  # noqa: E402
from gaussian_renderer.torch_backend import gaussian_colors  # noqa: E402
from gaussian_renderer.types import GaussianSet  # noqa: E402
from preprocessing.track.avatar_refine import small_turn  # noqa: E402
from scene.data.cameras import Camera  # noqa: E402
from utils.rotations import unit_quaternion_to_matrix  # noqa: E402


def _views(d: dict, n: int, device: torch.device) -> list[Camera]:
    """The oracle camera, its head turned by -n/2 .. n/2 degrees of yaw about the head's centre."""
    w2c = d["viewmat_w2c"].to(device)
    R, t = w2c[:3, :3], w2c[:3, 3]
    centre = d["means3D"].to(device).mean(0)
    cams = []
    for k in range(n):
        a = math.radians(k - n / 2)
        turn = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                            device=device)
        R_k = R @ turn  # the head turned about its centre: x -> turn (x - c) + c
        t_k = R @ (centre - turn @ centre) + t
        cams.append(Camera(R_k, t_k, d["K"].to(device), int(d["W"]), int(d["H"])))
    return cams


def _time_steps(views, means, cov, opac, colors, bg, targets, steps: int) -> float:
    """Wall-clock milliseconds of one correction step of all views (after 5 warm-up steps)."""
    device = means.device
    x = torch.zeros(means.shape[0], 6, device=device, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.5, fused=device.type == "cuda")

    def step() -> None:
        turn, shift = (x * 1e-3).split(3, dim=1)
        dR = unit_quaternion_to_matrix(small_turn(turn))
        seen = render_camera_space(views, means, cov, opac, colors, bg, dR, shift)
        loss = (seen - targets).abs().mean(dim=(1, 2, 3)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000 / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    d = torch.load(find_scene(args.scene), weights_only=True)
    gs = GaussianSet(d["means3D"].to(device), d["scales"].to(device), d["rotations"].to(device),
                     d["opacities"].to(device), shs=d["shs"].to(device), sh_degree=3)
    bg = d["background"].to(device)
    rows = []
    for b in args.batches:
        cams = _views(d, b, device)
        with torch.no_grad():
            placed = [camera_space(gs, c) for c in cams]
            means = torch.stack([m for m, _ in placed])
            cov = torch.stack([c for _, c in placed])
            colors = torch.stack([gaussian_colors(gs, gs.means, c.camera_center) for c in cams])
            opac = gs.opacities.reshape(-1, 1)
            strip, apart = view_strip(cams), at_origin(cams)
            targets = render_camera_space(apart, means, cov, opac, colors, bg) + 0.01  # something to fit
            diff = float((render_camera_space(strip, means, cov, opac, colors, bg)
                          - render_camera_space(apart, means, cov, opac, colors, bg)).abs().max())
        row = {"views": b, "max_abs_diff": diff}
        for name, views in (("one_call_a_view", apart), ("strip", strip)):
            ms = _time_steps(views, means, cov, opac, colors, bg, targets, args.steps)
            row[f"{name}_ms_per_view_step"] = ms / b
        rows.append(row)
        print(f"{b:3d} views: one call a view {row['one_call_a_view_ms_per_view_step']:.3f} ms, strip "
              f"{row['strip_ms_per_view_step']:.3f} ms a view-step; renders differ by at most {diff:.2e}",
              flush=True)
        if args.json:
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
