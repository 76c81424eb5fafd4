"""The switches of the fused GPU fast paths, set in one place (``--no_fused_kernels``, the benches).

Each fast path computes what its plain path computes (the CUDA tests compare them) and falls back to the
plain path where it cannot run (no CUDA, ``fused_ops`` not built):

- ``hypergaussians``: HyperGaussians' conditional mean and its gradients in fused_ops' kernels
  (``scene.model.hypergaussians.FUSED_ON_CUDA``);
- ``adam``: the avatar's optimisers as one fused_ops launch a step (``utils.optim.ONE_LAUNCH_ADAM``);
- ``lpips_distance``: LPIPS' per-layer distance in one fused_ops pass
  (``utils.lpips_loader.FUSED_DISTANCE``);
- ``conv_relu``: LPIPS' VGG convolutions and ReLUs as cuDNN's fused call
  (``utils.lpips_loader.FUSED_CONV_RELU``).
"""

from __future__ import annotations


def set_fast_paths(hypergaussians: bool | None = None, adam: bool | None = None,
                   lpips_distance: bool | None = None, conv_relu: bool | None = None) -> dict[str, bool]:
    """Turn fast paths on (True) or off (False); None leaves a switch as it is. Returns all switches."""
    import utils.lpips_loader as lpips_loader
    import utils.optim as optim
    from scene.model import hypergaussians as hg

    for module, name, value in ((hg, "FUSED_ON_CUDA", hypergaussians), (optim, "ONE_LAUNCH_ADAM", adam),
                                (lpips_loader, "FUSED_DISTANCE", lpips_distance),
                                (lpips_loader, "FUSED_CONV_RELU", conv_relu)):
        if value is not None:
            setattr(module, name, bool(value))
    return {"hypergaussians": hg.FUSED_ON_CUDA, "adam": optim.ONE_LAUNCH_ADAM,
            "lpips_distance": lpips_loader.FUSED_DISTANCE, "conv_relu": lpips_loader.FUSED_CONV_RELU}


def plain_paths() -> dict[str, bool]:
    """Every fast path off (``--no_fused_kernels``): the reference the fast paths are checked against."""
    return set_fast_paths(False, False, False, False)
