"""The avatar's Adam optimisers: torch's (fused on CUDA), or :class:`OneLaunchAdam` when asked for.

torch's fused Adam spends ~30 us a launch on the avatar's tensors (few, large thread blocks) and launches
once per parameter group: 0.19 ms of a 1.8 ms H200 training step (bench/NOTES.md, session 16).
:class:`OneLaunchAdam` is the same optimiser (same state, interchangeable state dicts) whose CUDA step is
one launch of ``fused_ops.adam_step`` over every tensor: 0.11-0.18 ms less a step on the H200
(bench/NOTES.md, session 17; ``tests/test_optim.py`` checks it against torch's). ``utils.fast_paths`` ("adam")
switches it; without the built kernels torch's fused Adam runs.
"""

from __future__ import annotations

import torch

from utils import fast_paths
from utils.device import fused_adam_ok, fused_kernels


class OneLaunchAdam(torch.optim.Adam):
    """torch.optim.Adam whose step, on CUDA float32 parameters without weight decay, amsgrad, maximize or a
    closure, is one ``fused_ops.adam_step`` launch per (betas, eps) over all groups; anything else goes to
    torch's step. Graph-capturable: step counts live on the device."""

    @torch.no_grad()
    def step(self, closure=None):
        ops = fused_kernels()
        plain = closure is None and ops is not None and all(
            not g["amsgrad"] and not g["maximize"] and g["weight_decay"] == 0 and not g["differentiable"]
            and not torch.is_tensor(g["lr"]) for g in self.param_groups)
        if not plain:
            return super().step(closure)
        launches: dict[tuple, list[list]] = {}
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            key = (float(beta1), float(beta2), float(group["eps"]))
            lists = launches.setdefault(key, [[] for _ in range(6)])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not (p.is_cuda and p.dtype == torch.float32 and p.is_contiguous()):
                    return super().step(closure)
                state = self.state[p]
                if not state:  # torch's own state layout, so that state dicts stay interchangeable
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif state["step"].device != p.device or state["step"].dtype != torch.float32:
                    # a state from torch's unfused Adam keeps its count on the host
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
                for out, item in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                                             float(group["lr"]))):
                    out.append(item)
        for (beta1, beta2, eps), (params, grads, m, v, steps, lrs) in launches.items():
            if params:
                torch._foreach_add_(steps, 1.0)
                ops.adam_step(params, grads, m, v, steps, lrs, beta1, beta2, eps)
        return None


def make_adam(params, **options) -> torch.optim.Adam:
    """Adam over ``params`` (tensors or parameter groups): :class:`OneLaunchAdam` when
    the "adam" fast path is on, the kernels are built and every parameter is a CUDA float32 tensor;
    else torch's, fused on CUDA."""
    params = list(params)
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    fused = fused_adam_ok(tensors)
    float32 = all(p.dtype == torch.float32 for p in tensors)
    if fast_paths.enabled("adam") and fused and float32 and fused_kernels() is not None:
        return OneLaunchAdam(params, **options)
    return torch.optim.Adam(params, fused=fused, **options)
