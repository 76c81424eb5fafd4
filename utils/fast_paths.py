"""The switches of the fused GPU fast paths, in one place (``--no_fused_kernels``, the benches, the tests).

Each fast path computes what its plain path computes to float32 rounding (the CUDA tests compare them) and
falls back to the plain path where it cannot run (no CUDA, ``fused_ops`` not built). All are on by default;
H200 figures in bench/NOTES.md, sessions 16-21:

- ``hypergaussians``: HyperGaussians' conditional mean and its gradients in fused_ops' two kernels
  (``scene.model.hypergaussians``) instead of cuBLAS TRSM/GEMV kernels: ~0.1 ms of a training step;
- ``adam``: the avatar's optimisers as one fused_ops launch a step (``utils.optim.OneLaunchAdam``) instead
  of torch's fused Adam's six: 0.11-0.18 ms a step (float4 units since session 21: 0.105 -> 0.057 ms for
  ``--ours``' two optimisers);
- ``lpips_distance``: LPIPS' per-layer distance in one fused_ops pass (``utils.lpips_loader``): 1.5 ms of
  a step with LPIPS;
- ``conv_relu``: LPIPS' VGG convolutions and ReLUs as cuDNN's fused call (``utils.lpips_trunk``), inside
  CUDA-graph captures only (its host cost per call makes it slower eagerly): 0.7 ms of a step with LPIPS.
  Under ``--precision tf32`` the captured trunk also runs in float16 (``half_trunk``: both images' forward
  in one batch, the gradient scaled; 3.23 -> 2.87 ms), which is a precision choice, not float32 rounding:
  its image gradient is 6.1% from fp32's where TF32's is 5.5% (``utils.precision.trunk_half_dtype``).
- ``lpips_pool``: the half trunk's 2x2 max-pools through fused_ops' kernel, which keeps each output's choice
  in one byte instead of torch's int64 index (exactly torch's values and gradients): 2.89 -> 2.42 ms.
- ``lpips_fused``: where the half trunk runs, LPIPS as one autograd function over fused_ops' float16 kernels
  around cuDNN's convolutions (``utils.lpips_trunk.fused_half_lpips``: one prep pass, distances read from
  the float16 batch, one pass per slice for feature gradient, pool and ReLU mask) -- the half trunk's
  arithmetic in a third of the passes: 2.42 -> 1.43 ms, a step with LPIPS 3.93 -> 3.01 ms (H200).
- ``linear_relu``: the deformation trunk's hidden layers as one GEMM with bias and ReLU in its epilogue
  (``scene.model.deformation.linear_relu``: cuBLASLt's fused epilogue) instead of a GEMM and a ReLU pass
  over the (N, hidden) activations; the same values (the ReLU of the same sum; a NaN pre-activation may
  come out as 0 where F.relu keeps it: the loss's NaN watch then sees it later, if at all).
- ``frame_kernel``: gradient-free frames (``Avatar.frame_gaussians``: render.py, evaluation, the viewer)
  run FLAME's joint work in one fused_ops launch (``flame_joints``, ~20 launches eagerly), its blendshapes in
  one GEMV, and skin only the Gaussians' triangle corners, interpolating and composing them in one more
  (``frame_gaussians``; ~25 launches eagerly); float32 rounding of the same sums (CUDA test against the
  torch pass and ``deform``). A frame's kernels 109 -> 50, inference GPU time 0.449 -> 0.340 ms (baseline),
  0.531 -> 0.422 ms (``--ours``) on an H200 (session 21).
"""

from __future__ import annotations

ON: dict[str, bool] = {"hypergaussians": True, "adam": True, "lpips_distance": True, "conv_relu": True,
                       "lpips_pool": True, "lpips_fused": True, "linear_relu": True, "frame_kernel": True}


def enabled(name: str) -> bool:
    """Whether fast path ``name`` (a key of :data:`ON`) is switched on."""
    return ON[name]


def set_fast_paths(hypergaussians: bool | None = None, adam: bool | None = None,
                   lpips_distance: bool | None = None, conv_relu: bool | None = None,
                   lpips_pool: bool | None = None, lpips_fused: bool | None = None,
                   linear_relu: bool | None = None, frame_kernel: bool | None = None) -> dict[str, bool]:
    """Turn fast paths on (True) or off (False); None leaves a switch as it is. Returns all switches."""
    for name, value in (("hypergaussians", hypergaussians), ("adam", adam),
                        ("lpips_distance", lpips_distance), ("conv_relu", conv_relu),
                        ("lpips_pool", lpips_pool), ("lpips_fused", lpips_fused),
                        ("linear_relu", linear_relu), ("frame_kernel", frame_kernel)):
        if value is not None:
            ON[name] = bool(value)
    return dict(ON)


def plain_paths() -> dict[str, bool]:
    """Every fast path off (``--no_fused_kernels``): the reference the fast paths are checked against."""
    return set_fast_paths(False, False, False, False, False, False, False, False)
