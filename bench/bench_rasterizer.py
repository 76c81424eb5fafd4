"""Rasterizer speed and memory on the oracle head scene (14527 Gaussians, SH degree 3, 512x512).

Times forward and forward + backward (loss = image sum) of our CUDA extension (raw API, the
``render_cuda`` adapter, a fixed pair capacity without host sync, and that forward -- and forward + backward
with the gradients zeroed in it, as the captured training step runs it -- replayed from captured CUDA
graphs) and of the torch reference backend on the same GPU, with CUDA events: the median
of ``--iters`` runs after ``--warmup`` warm-ups, and the peak memory allocated above what was in use
before. Prints a table (and writes JSON with ``--json``). Reference (SPEC, original rasterizer on an
H100): 0.45 ms forward, 1.86 ms forward + backward.

    python bench/bench_rasterizer.py --scene /path/to/head_scene.pt [--iters 200 --warmup 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gaussian_renderer.types import GaussianSet  # noqa: E402
from scene.data.cameras import Camera  # noqa: E402


def find_scene(arg: str | None) -> Path:
    """--scene, else ``$RASTER_ORACLE_DIR/head_scene.pt`` (default ``shared/data/raster_oracle/`` beside the
    checkout), the same rule as the tests' ``raster_oracle`` fixture."""
    folder = os.environ.get("RASTER_ORACLE_DIR") or REPO.parent / "shared" / "data" / "raster_oracle"
    path = Path(arg) if arg else Path(folder) / "head_scene.pt"
    if not path.is_file():
        raise SystemExit(f"bench_rasterizer: {path} not found; pass --scene PATH or set RASTER_ORACLE_DIR "
                         "(the raster oracle scene, shared/data/raster_oracle/head_scene.pt)")
    return path


def time_cuda(fn: Callable[[], None], iters: int, warmup: int,
              reset: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """Median milliseconds per call (CUDA events around each call) and the peak MiB allocated above what
    was in use before (``reset`` runs first, e.g. to drop gradients kept from the warm-ups)."""
    for _ in range(warmup):
        fn()
    reset()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(times), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default=None, help="head_scene.pt (the raster oracle scene)")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--torch-iters", type=int, default=None, help="iterations for the torch backend "
                    "(default: --iters)")
    ap.add_argument("--skip-torch", action="store_true", help="time only the CUDA extension")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_rasterizer: needs a CUDA GPU")
    from gaussian_renderer.cuda_backend import _require_extension, render_cuda

    dgr = _require_extension()
    d = torch.load(find_scene(args.scene), weights_only=True)
    dev = torch.device("cuda")
    H, W = int(d["H"]), int(d["W"])
    bg = d["background"].to(dev)
    leaves = {k: d[k].to(dev).contiguous().requires_grad_(True)
              for k in ("means3D", "scales", "rotations", "opacities", "shs")}
    settings = dgr.GaussianRasterizationSettings(
        H, W, float(d["tanfovx"]), float(d["tanfovy"]), bg, 1.0, d["viewmatrix"].to(dev),
        d["projmatrix"].to(dev), 3, d["campos"].to(dev), False, False)
    rasterizer = dgr.GaussianRasterizer(settings)
    w2c = d["viewmat_w2c"].to(dev)
    camera = Camera(w2c[:3, :3], w2c[:3, 3], d["K"].to(dev), W, H)
    gs = GaussianSet(leaves["means3D"], leaves["scales"], leaves["rotations"], leaves["opacities"],
                     shs=leaves["shs"], sh_degree=3)
    means2d = torch.zeros_like(leaves["means3D"], requires_grad=True)

    def raw() -> torch.Tensor:
        return rasterizer(leaves["means3D"], means2d, leaves["opacities"], shs=leaves["shs"],
                          scales=leaves["scales"], rotations=leaves["rotations"])[0]

    def adapter() -> torch.Tensor:
        return render_cuda(camera, gs, bg, 1.0, False, False).image

    # A fixed pair capacity (no host sync; 1.25x the scene's pairs) eagerly, and its forward as a captured
    # CUDA graph (replays only: what an inference graph of deformation + rasterizer would spend on it).
    count = torch.zeros(1, dtype=torch.int32, device=dev)
    with torch.no_grad():
        dgr.GaussianRasterizer(settings._replace(pair_count=count))(
            leaves["means3D"], means2d, leaves["opacities"], shs=leaves["shs"], scales=leaves["scales"],
            rotations=leaves["rotations"])
    capacity = int(int(count) * 1.25)
    fixed = dgr.GaussianRasterizer(settings._replace(pair_capacity=capacity, pair_count=count))

    def raw_fixed() -> torch.Tensor:
        return fixed(leaves["means3D"], means2d, leaves["opacities"], shs=leaves["shs"],
                     scales=leaves["scales"], rotations=leaves["rotations"])[0]

    def fixed_step() -> None:  # forward + backward as the captured training step runs it (grads zeroed in it)
        for t in [*leaves.values(), means2d]:
            if t.grad is not None:
                t.grad.zero_()
        raw_fixed().sum().backward()

    graph, step_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            with torch.no_grad():
                raw_fixed()
            fixed_step()  # allocates the gradients outside the capture
    torch.cuda.current_stream().wait_stream(side)
    with torch.no_grad(), torch.cuda.graph(graph):
        raw_fixed()
    with torch.cuda.graph(step_graph):
        fixed_step()

    backends: list[tuple[str, Callable[[], torch.Tensor], int]] = [
        ("cuda (raw API)", raw, args.iters), ("cuda (render_cuda)", adapter, args.iters),
        (f"cuda (capacity {capacity})", raw_fixed, args.iters)]
    if not args.skip_torch:
        from gaussian_renderer.torch_backend import render_torch

        def ref() -> torch.Tensor:
            return render_torch(camera, gs, bg, 1.0).image

        backends.append(("torch reference", ref, args.torch_iters or args.iters))

    rows = []
    for name, fn, iters in backends:
        def fwd(fn=fn) -> None:
            with torch.no_grad():
                fn()

        def fwd_bwd(fn=fn) -> None:
            for t in leaves.values():
                t.grad = None  # as optimizer.zero_grad(set_to_none=True)
            fn().sum().backward()

        def drop_grads() -> None:
            for t in [*leaves.values(), means2d]:
                t.grad = None

        f_ms, f_mb = time_cuda(fwd, iters, args.warmup, drop_grads)
        fb_ms, fb_mb = time_cuda(fwd_bwd, iters, args.warmup, drop_grads)
        rows.append({"backend": name, "forward_ms": f_ms, "forward_backward_ms": fb_ms,
                     "forward_peak_mib": f_mb, "forward_backward_peak_mib": fb_mb, "iters": iters})
    g_ms, g_mb = time_cuda(graph.replay, args.iters, args.warmup)
    gs_ms, gs_mb = time_cuda(step_graph.replay, args.iters, args.warmup)
    rows.insert(3, {"backend": "cuda graph (capacity)", "forward_ms": g_ms, "forward_backward_ms": gs_ms,
                    "forward_peak_mib": g_mb, "forward_backward_peak_mib": gs_mb, "iters": args.iters,
                    "pair_capacity": capacity, "pairs": int(count)})

    device = torch.cuda.get_device_name(dev)
    print(f"device: {device}; torch {torch.__version__}; scene: {d['means3D'].shape[0]} Gaussians, {W}x{H}, "
          f"SH 3; median of {args.iters} after {args.warmup} warm-ups (CUDA events)")
    header = f"{'backend':<22}{'fwd ms':>10}{'fwd+bwd ms':>12}{'fwd peak MiB':>14}{'f+b peak MiB':>14}"
    print(header)
    print("-" * len(header))
    def cell(value: float | None, width: int, digits: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    for r in rows:
        print(f"{r['backend']:<22}{cell(r['forward_ms'], 10, 3)}{cell(r['forward_backward_ms'], 12, 3)}"
              f"{cell(r['forward_peak_mib'], 14, 1)}{cell(r['forward_backward_peak_mib'], 14, 1)}")
    print(f"{'original (SPEC, H100)':<22}{0.45:>10.3f}{1.86:>12.3f}")
    if args.json:
        out = Path(args.json)
        with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as fh:
            json.dump({"device": device, "torch": torch.__version__, "rows": rows}, fh, indent=2)
        os.replace(fh.name, out)


if __name__ == "__main__":
    main()
