"""LPIPS-VGG at 512x512 in each precision: forward+backward time and agreement with fp32.

The pair is a real photograph (scikit-image's astronaut, 512x512) and a degraded copy (blurred, shifted
by two pixels, with noise), as a render against its ground truth; the gradient is taken with respect to
the degraded copy, as in training. Reports per precision: median forward+backward ms (CUDA events, after
warm-up), the LPIPS value's and the gradient's relative difference from fp32, and the gradients' cosine.

    python bench/bench_lpips.py                      # VGG16 weights from torch's hub cache
    python bench/bench_lpips.py --random_weights     # a seeded random VGG16 (timing; no download needed)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import utils.lpips_loader as lpips_loader  # noqa: E402
from utils.fast_paths import set_fast_paths  # noqa: E402
from utils.lpips_loader import VGG16_FILENAME, load_lpips_vgg  # noqa: E402
from utils.precision import PRECISIONS, set_precision  # noqa: E402


def image_pair(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(degraded, original) astronaut as (1,3,512,512) float in [0, 1]."""
    from skimage import data

    y = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float().div(255.0).unsqueeze(0).to(device)
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device)
    k = (k[:, None] * k[None, :] / 256.0).expand(3, 1, 5, 5)
    gen = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(y.shape, generator=gen).to(device) * 0.02
    x = (torch.roll(F.conv2d(y, k, padding=2, groups=3), shifts=(2, 1), dims=(2, 3)) + noise).clamp(0, 1)
    return x, y


def write_random_vgg(home: Path) -> None:
    """A seeded, randomly initialised torchvision VGG16 (features only) where load_lpips_vgg looks."""
    import torchvision

    torch.manual_seed(0)
    feats = torchvision.models.vgg16(weights=None).features
    target = home / "hub" / "checkpoints" / VGG16_FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, target)


def time_fwd_bwd(model, x: torch.Tensor, y: torch.Tensor, reps: int, warmup: int) -> float:
    times = []
    for k in range(warmup + reps):
        xr = x.detach().requires_grad_(True)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(xr, y).sum().backward()
        end.record()
        end.synchronize()
        if k >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_compiled(model, x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor, reps: int,
                  warmup: int, mode: str = "default") -> dict:
    """The distance under torch.compile: seconds to the first compiled step, median fwd+bwd ms, and the
    gradient's relative difference from the eager one (same precision)."""
    import time

    compiled = torch.compile(model.distance, mode=mode)
    t0 = time.perf_counter()
    xc = x.detach().requires_grad_(True)
    try:
        compiled(xc, y).sum().backward()
    except Exception as exc:  # inductor missing (no triton) or failing: report it, keep the other figures
        print(f"torch.compile failed: {type(exc).__name__}: {exc}", flush=True)
        return {"compile_failure": f"{type(exc).__name__}: {exc}"[:500]}
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    class _Wrap:
        def __call__(self, a, b):
            return compiled(a, b)

    ms = time_fwd_bwd(_Wrap(), x, y, reps, warmup)
    diff = float((xc.grad.double() - grad).norm() / grad.norm())
    print(f"  torch.compile (mode {mode}): first step {seconds:.1f} s, fwd+bwd {ms:.3f} ms, gradient rel "
          f"diff {diff:.2e}", flush=True)
    return {"compile_mode": mode, "compile_s": seconds, "fwd_bwd_ms_compiled": ms,
            "compiled_grad_rel_diff": diff}


def profile_step(model, x: torch.Tensor, y: torch.Tensor, top: int = 15) -> None:
    """The kernels of ten forward+backward steps, by total CUDA time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            model(x.detach().requires_grad_(True), y).sum().backward()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=70))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--random_weights", action="store_true")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--cudnn_benchmark", action="store_true",
                    help="let cuDNN time every algorithm (off in the project: see utils/precision.py)")
    ap.add_argument("--profile", action="store_true", help="also print the top kernels of each step")
    ap.add_argument("--compile", action="store_true",
                    help="also time the distance under torch.compile (inductor fuses the elementwise work "
                         "around the convolutions): compile seconds, fwd+bwd ms, gradient against eager")
    ap.add_argument("--compile_mode", default="default",
                    choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                    help="torch.compile's mode for --compile (reduce-overhead adds CUDA graphs)")
    ap.add_argument("--fused_distance", type=int, choices=(0, 1), default=None,
                    help="LPIPS' layer distances through fused_ops' one-pass kernel: 1 on, 0 off "
                         "(default: the library's)")
    ap.add_argument("--fused_conv_relu", type=int, choices=(0, 1), default=None,
                    help="the trunk's convolutions and ReLUs as cuDNN's fused call: 1 on, 0 off")
    ap.add_argument("--fused_pool", type=int, choices=(0, 1), default=None,
                    help="the half trunk's max-pools through fused_ops (one-byte choices): 1 on, 0 off")
    ap.add_argument("--fused_half", type=int, choices=(0, 1), default=None,
                    help="the captured float16 LPIPS as one function over fused_ops' kernels: 1 on, 0 off")
    ap.add_argument("--first_conv_channels", type=int, default=None, choices=(3, 4, 8),
                    help="--fused_half's first convolution input: the image's 3 channels or zero-padded")
    args = ap.parse_args(argv)
    if args.first_conv_channels is not None:
        lpips_loader.FIRST_CONV_CHANNELS = args.first_conv_channels
    switches = set_fast_paths(lpips_distance=args.fused_distance, conv_relu=args.fused_conv_relu,
                              lpips_pool=args.fused_pool, lpips_fused=args.fused_half)
    if not torch.cuda.is_available():
        print("bench_lpips: needs CUDA")
        return 1
    dev = torch.device("cuda")
    if args.random_weights:
        home = Path(tempfile.mkdtemp(prefix="lpips_home_"))
        write_random_vgg(home)
        os.environ["TORCH_HOME"] = str(home)
    x, y = image_pair(dev)
    results = {}
    reference = None
    for name in args.precisions:
        set_precision(name, dev)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        model = load_lpips_vgg(dev, precision=name)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        xr = x.detach().requires_grad_(True)
        value = model(xr, y).sum()
        value.backward()
        grad = xr.grad.detach().double()
        ms = time_fwd_bwd(model, x, y, args.reps, args.warmup)
        graphed = load_lpips_vgg(dev, precision=name, cuda_graph=True)
        ms_graph = time_fwd_bwd(graphed, x, y, args.reps, args.warmup)
        xg = x.detach().requires_grad_(True)
        value_graph = graphed(xg, y).sum()
        value_graph.backward()
        grad_graph = xg.grad.detach().double()
        row = {"fwd_bwd_ms": ms, "fwd_bwd_ms_cuda_graph": ms_graph, "graph_failure": graphed.graph_failure,
               "cuda_graph_grad_max_diff": float((grad_graph - grad).abs().max()),
               "value": float(value.detach()),
               "peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20,
               "cudnn_benchmark": torch.backends.cudnn.benchmark,
               "workspace_cap": os.environ.get("CUDNN_CONV_WSCAP_DBG")}
        if reference is None:
            reference = (float(value), grad)
        row["value_rel_diff"] = abs(float(value) - reference[0]) / abs(reference[0])
        row["grad_rel_diff"] = float((grad - reference[1]).norm() / reference[1].norm())
        row["grad_cosine"] = float(F.cosine_similarity(grad.flatten(), reference[1].flatten(), dim=0))
        # the captured call (the one training makes): tf32's runs the trunk's forward in float16
        row["cuda_graph_value_rel_diff"] = abs(float(value_graph) - reference[0]) / abs(reference[0])
        row["cuda_graph_grad_rel_diff"] = float((grad_graph - reference[1]).norm() / reference[1].norm())
        row["cuda_graph_grad_cosine"] = float(
            F.cosine_similarity(grad_graph.flatten(), reference[1].flatten(), dim=0))
        if args.compile:
            row.update(time_compiled(model, x, y, grad, args.reps, args.warmup, args.compile_mode))
        results[name] = row
        print(f"{name}: fwd+bwd {ms:.3f} ms (CUDA graph {ms_graph:.3f} ms, gradient max diff "
              f"{row['cuda_graph_grad_max_diff']:.1e})  LPIPS {row['value']:.5f} "
              f"(rel diff {row['value_rel_diff']:.2e})  "
              f"grad rel diff {row['grad_rel_diff']:.2e}, cosine {row['grad_cosine']:.6f}, "
              f"captured: grad rel diff {row['cuda_graph_grad_rel_diff']:.2e}, cosine "
              f"{row['cuda_graph_grad_cosine']:.6f}; peak {row['peak_mib']:.0f} MiB "
              f"(cudnn benchmark {row['cudnn_benchmark']}, workspace cap "
              f"{row['workspace_cap']})", flush=True)
        if args.profile:
            profile_step(model, x, y)
            print(f"{name}, captured:")
            profile_step(graphed, x, y)
    out = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
           "weights": "random (seed 0)" if args.random_weights else "torchvision VGG16",
           "fused_distance": switches["lpips_distance"],
           "fused_conv_relu": switches["conv_relu"], "fused_pool": switches["lpips_pool"],
           "fused_half": switches["lpips_fused"], "first_conv_channels": lpips_loader.FIRST_CONV_CHANNELS,
           "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
