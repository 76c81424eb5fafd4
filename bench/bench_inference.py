"""Inference speed: a frame's deformation + rasterizer without gradients, as render.py runs it, on a trained
run's test split (its newest checkpoint, or ``--checkpoint``), eagerly and from CUDA graphs; the timing itself
(:func:`inference_speed`) is also bench_train_step.py's, which times the avatar it has just trained a few
steps. A trained avatar is what render.py and the viewer draw: its Gaussians' sizes set the rasterizer's
share of a frame, which an avatar a few steps from its start does not show.

    python bench/bench_inference.py -m logs/nf_01_ours [--json out.json] [--profile [TOP]]
Any render.py option that finds the run is accepted (``-m``, ``--idname``, ``--device``, ...).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from gaussian_renderer import render  # noqa: E402
from scene.frame_graph import FrameRenderGraph  # noqa: E402
from scene.model.avatar import Avatar  # noqa: E402
from scene.model.cuda_graphs import inference_graph  # noqa: E402
from utils.atomic import write_json  # noqa: E402

PASS_FRAMES = 60  # frames a timed pass renders, at least


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_kernels(step, steps: int, device: torch.device, top: int = 10, what: str = "step") -> None:
    """Print the device time of the kernels per step (what the step would cost with no host overhead),
    the launches per step, and the ``top`` costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)]  # annotation ranges would count twice
    if not kernels:
        print("profile: no device kernels recorded (CPU run)")
        return
    total_us = sum(e.device_time for e in kernels)
    print(f"profile ({what}): {len(kernels) / steps:.0f} kernels per {what}, "
          f"{total_us / steps / 1e3:.3f} ms of kernel time per {what}")
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time)
    for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"  {sum(times) / steps / 1e3:8.3f} ms  {len(times) / steps:5.1f}x  {name[:90]}")


def inference_speed(avatar: Avatar, frames: list, background: Tensor, backend: str, dev: torch.device,
                    profile_top: int = 0, min_frames: int = 240,
                    pass_frames: int = PASS_FRAMES) -> dict[str, float]:
    """Milliseconds a frame of deformation + render without gradients, as render.py does it (the avatar in
    eval mode with its inference precomputations), over the given frames (each with ``condition`` and
    ``camera``): eager, with the deformation's CUDA graph, and with the whole frame (deformation +
    rasterizer) as one CUDA graph where there are those; one frame at a time, one sync at the end of each
    pass. The whole-frame graph's call also waits for each frame (it reads back the pairs the frame needed,
    the latency of one frame); its ``stream`` reads that back one frame behind (the GPU's throughput on a
    sequence, no consumer: render.py's PNG and video writing take far longer than a frame and are timed by
    speed_table's render stage): "whole-frame CUDA graph" and "..., streamed". The median pass (the frames
    in turn, ``pass_frames`` at least), ``min_frames`` frames in all at least; on CUDA also the whole-frame
    replay's GPU time."""
    avatar.eval()
    avatar.freeze_for_inference()  # as render.py and the viewer (training is over by now)

    def frame_by_frame(fn):  # a pass: fn(condition, camera) on each frame
        def run(frames):
            for fr in frames:
                fn(fr.condition, fr.camera)
        return run

    def deform_then_render(deform):
        return frame_by_frame(lambda c, cam: render(cam, deform(c, cam)[0], background, backend=backend))

    modes = [("eager", deform_then_render(avatar.deform))]
    if dev.type == "cuda":
        modes.append(("CUDA graph", deform_then_render(inference_graph(avatar))))
        whole = FrameRenderGraph(avatar, background, backend)
        modes.append(("whole-frame CUDA graph", frame_by_frame(whole)))

        def streamed(frames):
            for _ in whole.stream((None, fr.condition, fr.camera) for fr in frames):
                pass
        modes.append(("whole-frame CUDA graph, streamed", streamed))
    # a pass: the frames in order, repeated to at least pass_frames (a short test split would otherwise time
    # the start and the end of a sequence more than its frames: a stream's first and last frames do not
    # overlap the host's work); the median of at least three passes, min_frames frames in all
    loaded = list(frames) * -(-pass_frames // len(frames))
    result = {}
    for name, run in modes:
        with torch.no_grad():
            for _ in range(2):
                run(loaded[:5])
            sync(dev)
            passes = []
            for _ in range(max(3, -(-min_frames // len(loaded)))):
                t0 = time.perf_counter()
                run(loaded)
                sync(dev)
                passes.append((time.perf_counter() - t0) * 1e3 / len(loaded))
        ms = statistics.median(passes)
        print(f"inference ({name}): {ms:.3f} ms a frame, {1000 / ms:.0f} FPS (median of {len(passes)} "
              f"passes of {len(loaded)} frames: the {len(frames)} test frames in turn)")
        result[name] = ms
    if dev.type == "cuda":  # the GPU's own time for a frame: the floor of the whole-frame graph
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            whole.graph.replay()
        end.record()
        sync(dev)
        result["whole-frame replay, GPU time"] = start.elapsed_time(end) / 50
        print(f"inference (whole-frame replay, GPU time): {result['whole-frame replay, GPU time']:.3f} ms")
        if profile_top:
            profile_kernels(whole.graph.replay, 20, dev, profile_top, "frame")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--profile", type=int, nargs="?", const=10, default=0, metavar="TOP",
                    help="also profile the whole-frame replay: kernels per frame, the TOP (10) costliest")
    ap.add_argument("--min_frames", type=int, default=240,
                    help="frames timed per mode, at least (default 240)")
    ap.add_argument("--pass_frames", type=int, default=PASS_FRAMES,
                    help=f"frames a timed pass renders, at least (default {PASS_FRAMES})")
    own, rest = ap.parse_known_args(argv)
    if own.pass_frames < 1 or own.min_frames < 1:
        ap.error(f"--pass_frames and --min_frames must be >= 1, got {own.pass_frames} and {own.min_frames}")
    from scene.rendering import Renderer
    from utils.options import parse_render_args

    r = Renderer(parse_render_args(rest))
    frames = [r.target.frame(i) for i in r.indices]
    if not frames:
        raise SystemExit(f"bench_inference: run {r.model_dir} has no test frames to time (--test_num 0?)")
    dev = r.device
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({threads} threads)"
    print(f"device: {name}; {r.avatar.method}, {r.avatar.n_gaussians} Gaussians, checkpoint {r.checkpoint} "
          f"(iteration {r.iteration}), {len(frames)} test frames")
    ms = inference_speed(r.avatar, frames, r.background, r.cfg.run.backend, dev, own.profile, own.min_frames,
                         own.pass_frames)
    if own.json:
        write_json(own.json, {"device": name, "method": r.avatar.method, "gaussians": r.avatar.n_gaussians,
                              "checkpoint": str(r.checkpoint), "iteration": r.iteration,
                              "frames": len(frames), "inference_ms": ms})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
