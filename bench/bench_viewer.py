"""view.py's render time: one view of a trained run (deformation + rasterizer + 8-bit copy to the host) at
square canvas sizes, alone and with the ground truth beside it, as the viewer's render thread does it.

    python bench/bench_viewer.py -m logs/nf_01_ours [--sizes 512 1024] [--frames 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--frames", type=int, default=50)
    own, rest = ap.parse_known_args(argv)
    from scene.viewer import ViewerModel, ViewRequest, pose_of_camera
    from utils.options import parse_view_args

    model = ViewerModel(parse_view_args(rest + ["--max_size", str(2 * max(own.sizes))]))
    pose = pose_of_camera(model.tracked_camera(0))
    for size in own.sizes:
        for beside in (False, True):
            times = []
            for k in range(own.frames + 5):
                width = size * (2 if beside else 1)
                req = ViewRequest(k % model.n_frames, pose, width, size, ground_truth=beside)
                t0 = time.perf_counter()
                model.render(req)
                if k >= 5:
                    times.append((time.perf_counter() - t0) * 1e3)
            ms = statistics.median(times)
            what = "avatar | ground truth" if beside else "avatar"
            print(f"viewer {size}x{size} ({what}) on {model.device}: {ms:.2f} ms a view, {1000 / ms:.0f} FPS "
                  f"(median of {own.frames}; the rasterizer alone: {model.last_ms:.2f} ms)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
