"""Where one training step's time goes: frame fetch, deformation (FLAME + MLP + heads), render forward,
loss + backward, the two optimiser steps, and the whole step without inner syncs.

Runs on any device, through the same ``Trainer`` that ``train.py`` builds (same options), so the numbers
are the training loop's own. Component times sync the device around each part (so they add up to a bit
more than the whole step, where the GPU overlaps host work); the whole step is timed over ``--steps``
steps with one sync at the end.

    python bench/bench_train_step.py --idname demo --uv_size 64 --test_num 8 --device cpu
    python bench/bench_train_step.py --idname s512 --data_root ... --tracking_root ... --ours   # on a GPU
Any train.py option is accepted; ``--steps`` and ``--warmup`` are this script's own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from bench_inference import inference_speed, profile_kernels, sync  # noqa: E402

from gaussian_renderer import render  # noqa: E402
from scene.trainer import Trainer  # noqa: E402
from utils.atomic import write_json  # noqa: E402
from utils.fast_paths import set_fast_paths  # noqa: E402
from utils.losses import photometric_loss  # noqa: E402
from utils.options import parse_train_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--profile", type=int, nargs="?", const=10, default=0, metavar="TOP",
                    help="also profile --steps steps and the whole-frame inference replay: kernel time and "
                         "launches per step or frame, the TOP (10) costliest kernels")
    ap.add_argument("--json", type=Path, default=None,
                    help="also write the figures here (step ms, inference ms per mode, peak MiB)")
    ap.add_argument("--with_lpips", action="store_true",
                    help="time steps after --lpips_start, with the LPIPS-VGG term (needs the VGG16 weights)")
    for flag, what in (("--hg_fused", "HyperGaussians through fused_ops' kernels"),
                       ("--one_launch_adam", "both optimisers as utils.optim.OneLaunchAdam (fused_ops)"),
                       ("--fused_lpips", "LPIPS' layer distances through fused_ops' one-pass kernel"),
                       ("--fused_conv_relu", "LPIPS' trunk with cuDNN's fused convolution + ReLU"),
                       ("--fused_pool", "the half LPIPS trunk's max-pools through fused_ops"),
                       ("--fused_half", "the captured float16 LPIPS as one function of fused_ops' kernels"),
                       ("--linear_relu", "the trunk's hidden layers as GEMMs with a bias + ReLU epilogue"),
                       ("--frame_kernel", "a frame's skinning + interpolation + compose in one kernel")):
        ap.add_argument(flag, type=int, choices=(0, 1), default=None, help=f"{what}: 1 on, 0 off (default: "
                        "the library's default)")
    own, rest = ap.parse_known_args(argv)
    switches = set_fast_paths(own.hg_fused, own.one_launch_adam, own.fused_lpips, own.fused_conv_relu,
                              own.fused_pool, own.fused_half, own.linear_relu, own.frame_kernel)
    lpips_args = [] if own.with_lpips else ["--lambda_lpips", "0"]
    cfg = parse_train_args(rest + lpips_args + ["--skip_test", "--overwrite", "--log_root",
                                                str(Path("/tmp") / "bench_train_step_logs")])
    trainer = Trainer(cfg)
    dev, avatar, subject = trainer.device, trainer.avatar, trainer.subject
    g_opt, d_opt = trainer.optimizers
    lpips_it = cfg.train.lpips_start + 1 if own.with_lpips else 0  # an iteration with the LPIPS term on
    trainer.prepare()  # Gaussian init and the training deformation (CUDA-graphed on CUDA), as train.py
    avatar.update_sh_degree(2000)  # the full SH degree, as in most of a run

    def step(parts: dict[str, list[float]] | None) -> None:
        def mark(name: str, t0: float) -> float:
            if parts is not None:
                sync(dev)
                t1 = time.perf_counter()
                parts.setdefault(name, []).append((t1 - t0) * 1e3)
                return t1
            return t0

        t = time.perf_counter()
        frame = subject.frame(trainer.sampler.next())
        t = mark("frame fetch", t)
        gaussians, _ = trainer.train_deform(frame.condition, frame.camera)
        t = mark("deform (FLAME + MLP + heads)", t)
        out = render(frame.camera, gaussians, trainer.background, backend=cfg.run.backend)
        t = mark("render forward", t)
        loss = photometric_loss(out.image, frame.image, frame.mouth_mask).total
        if lpips_it:
            head = frame.head_mask
            loss = loss + cfg.train.lambda_lpips * trainer.lpips(out.image * head, frame.image * head)
        loss.backward()
        t = mark("loss + backward" + (" (with LPIPS)" if lpips_it else ""), t)
        g_opt.step()
        d_opt.step()
        g_opt.zero_grad(set_to_none=True)
        d_opt.zero_grad(set_to_none=True)
        mark("two optimiser steps", t)

    def whole_step() -> None:
        """The training loop's own step (Trainer.step: every loss term it would use, backward, Adam; one
        CUDA-graph replay with --graph_scope step on CUDA)."""
        trainer.step(lpips_it or 1, subject.frame(trainer.sampler.next()))

    for _ in range(own.warmup):
        step(None)
        whole_step()
    parts: dict[str, list[float]] = {}
    for _ in range(own.steps):
        step(parts)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(own.steps):
        whole_step()
    sync(dev)
    whole = (time.perf_counter() - t0) * 1e3 / own.steps
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")

    if own.profile:
        profile_kernels(whole_step, own.steps, dev, own.profile)

    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({threads} threads)"
    print(f"device: {name}; {avatar.method}, {avatar.n_gaussians} Gaussians, "
          f"{subject.img_size[1]}x{subject.img_size[0]}, precision {cfg.run.precision}, median of "
          f"{own.steps} steps after {own.warmup}; peak GPU memory {peak:.0f} MiB")
    print(f"{'part':32s} {'ms':>9s}")
    for k, v in parts.items():
        print(f"{k:32s} {statistics.median(v):9.3f}")
    print(f"{'sum of parts':32s} {sum(statistics.median(v) for v in parts.values()):9.3f}")
    print(f"{'whole step (no inner syncs)':32s} {whole:9.3f}")
    print(f"RESULT step_ms={whole:.3f} method={avatar.method} precision={cfg.run.precision} "
          f"lpips={int(bool(own.with_lpips))} graph_scope={cfg.run.graph_scope} "
          + " ".join(f"{k}={int(v)}" for k, v in switches.items()))
    subject_frames = [subject.frame(i) for i in subject.train_indices[:own.steps]]
    inference = inference_speed(avatar, subject_frames, trainer.background, cfg.run.backend, dev, own.profile)
    if own.json:
        write_json(own.json, {"device": name, "method": avatar.method, "precision": cfg.run.precision,
                              "graph_scope": cfg.run.graph_scope, "fast_paths": switches,
                              "lpips": bool(own.with_lpips), "gaussians": avatar.n_gaussians,
                              "step_ms": whole,
                              "parts_ms": {k: statistics.median(v) for k, v in parts.items()},
                              "inference_ms": inference, "peak_mib": peak})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
