"""The avatar's Adam optimisers: :class:`OneLaunchAdam`, or torch's Adam (fused on CUDA) when it cannot run.

:class:`OneLaunchAdam` is Adam with torch's update, state layout and state dicts (checkpoints move freely
between the two) in two forms: on CUDA one ``fused_ops.adam_step`` launch a step over every tensor
(torch's fused Adam launches once per group, ~30 us each: 0.11-0.18 ms of a 1.8 ms H200 training step,
bench/NOTES.md session 17), elsewhere torch's single-tensor formula, op for op (bit-identical to
``torch.optim.Adam`` on the CPU; ``tests/test_optim.py``).

It is not a ``torch.optim.Optimizer``: torch's optimisers import ``torch._dynamo`` the first time one is
built or stepped (its methods are wrapped to keep the compiler out), which costs 1.6 s of start-up and
0.5 s of exit on this project's CPU machines and ~5 s on a GPU machine with a cold bytecode cache
(bench/NOTES.md, session 18): a few percent of a whole training run. ``utils.fast_paths`` ("adam")
switches it.
"""

from __future__ import annotations

import copy
import inspect
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor

from utils import fast_paths
from utils.device import fused_adam_ok, fused_kernels


def _torch_adam_defaults() -> dict:
    """The hyperparameters torch's Adam stores in each group (its keyword defaults, for this torch version),
    so that group dicts and state dicts look the same from either optimiser."""
    sig = inspect.signature(torch.optim.Adam.__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if k not in ("self", "params") and p.default is not inspect.Parameter.empty}


_UNSUPPORTED = {"amsgrad": False, "weight_decay": 0, "maximize": False, "differentiable": False,
                "decoupled_weight_decay": False}


class OneLaunchAdam:
    """Plain Adam (no weight decay, amsgrad or maximize) over ``params`` (tensors or groups of them), with
    ``torch.optim.Adam``'s interface as this project uses it: ``param_groups``, ``state``, ``defaults``,
    ``step``, ``zero_grad``, ``state_dict``, ``load_state_dict``. The CUDA step is graph-capturable (step
    counts live on the device; a group's ``capturable`` flag is kept for torch's sake and not needed)."""

    def __init__(self, params: Iterable, **options) -> None:
        defaults = _torch_adam_defaults()
        unknown = set(options) - set(defaults)
        if unknown:
            raise TypeError(f"OneLaunchAdam: unknown option(s) {sorted(unknown)}")
        defaults.update(options)
        self.defaults = defaults
        self._check(defaults)
        self.state: defaultdict[Tensor, dict] = defaultdict(dict)
        self.param_groups: list[dict] = []
        params = list(params)
        if not params:
            raise ValueError("OneLaunchAdam got an empty parameter list")
        for group in params if isinstance(params[0], dict) else [{"params": params}]:
            self.add_param_group(group)

    @staticmethod
    def _check(options: dict) -> None:
        for key, plain in _UNSUPPORTED.items():
            if options.get(key, plain) != plain:
                raise ValueError(f"OneLaunchAdam is plain Adam: {key}={options[key]!r} needs "
                                 "torch.optim.Adam")
        if torch.is_tensor(options.get("lr")):
            raise ValueError("OneLaunchAdam takes a float learning rate; a tensor one needs torch.optim.Adam")

    def add_param_group(self, group: dict) -> None:
        group = dict(group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check(group)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("OneLaunchAdam: a parameter appears in more than one group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    def _state_of(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:  # torch's layout: a float32 step count beside the parameter, the two moments
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam update of every parameter that has a gradient (CUDA float32 contiguous tensors in one
        fused_ops launch per (betas, eps); any other tensor by torch's single-tensor formula)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ops = fused_kernels()
        launches: dict[tuple, list[list]] = {}
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state_of(p)
                if ops is not None and p.is_cuda and p.dtype == torch.float32 and p.is_contiguous():
                    key = (float(beta1), float(beta2), float(group["eps"]))
                    lists = launches.setdefault(key, [[] for _ in range(6)])
                    if state["step"].device != p.device or state["step"].dtype != torch.float32:
                        state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
                    for out, item in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"],
                                                 state["step"], float(group["lr"]))):
                        out.append(item)
                else:
                    _single_tensor_adam(p, p.grad, state, float(group["lr"]), float(beta1), float(beta2),
                                        float(group["eps"]))
        for (beta1, beta2, eps), (params, grads, m, v, steps, lrs) in launches.items():
            torch._foreach_add_(steps, 1.0)
            ops.adam_step(params, grads, m, v, steps, lrs, beta1, beta2, eps)
        return loss

    # -- state dicts, in torch.optim.Optimizer's format ---------------------------------------------
    def state_dict(self) -> dict:
        """{"state": {index: per-parameter state}, "param_groups": [group without tensors, "params":
        indices]}: parameters numbered in group order, as torch does."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: s for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of this class or of ``torch.optim.Adam`` (same groups, same parameter counts);
        the moments move to their parameters' device and dtype, the step counts to float32 beside them."""
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, this optimiser "
                             f"has {len(self.param_groups)}")
        for ours, saved in zip(self.param_groups, saved_groups):
            if len(ours["params"]) != len(saved["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size "
                                 "of optimizer's group")
        by_index = {i: p for ours, saved in zip(self.param_groups, saved_groups)
                    for i, p in zip(saved["params"], ours["params"])}
        self.state = defaultdict(dict)
        for i, values in state_dict["state"].items():
            if i not in by_index:
                continue
            p = by_index[i]
            moved = {}
            for key, value in values.items():
                if key == "step":
                    moved[key] = torch.as_tensor(value, dtype=torch.float32).to(p.device).clone()
                elif torch.is_tensor(value):
                    dtype = p.dtype if value.is_floating_point() else value.dtype
                    moved[key] = value.to(device=p.device, dtype=dtype).clone()
                else:
                    moved[key] = copy.deepcopy(value)
            self.state[p] = moved
        groups = []
        for ours, saved in zip(self.param_groups, saved_groups):
            saved["params"] = ours["params"]
            for key, value in self.defaults.items():
                saved.setdefault(key, value)
            self._check(saved)
            groups.append(saved)
        self.param_groups = groups


def _single_tensor_adam(p: Tensor, grad: Tensor, state: dict, lr: float, beta1: float, beta2: float,
                        eps: float) -> None:
    """torch's single-tensor Adam step (non-capturable, no weight decay), op for op: the CPU path."""
    step_t = state["step"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    step_t += 1
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = float(step_t)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
    p.addcdiv_(exp_avg, denom, value=-step_size)


def make_adam(params, **options) -> OneLaunchAdam | torch.optim.Adam:
    """Adam over ``params`` (tensors or parameter groups): :class:`OneLaunchAdam` when the "adam" fast path
    is on and every parameter is float32 -- on CUDA only with fused_ops' kernels built --, else torch's,
    fused on CUDA."""
    params = list(params)
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    fused = fused_adam_ok(tensors)
    float32 = all(p.dtype == torch.float32 for p in tensors)
    on_cpu = all(not p.is_cuda for p in tensors)
    if fast_paths.enabled("adam") and float32 and ((fused and fused_kernels() is not None) or on_cpu):
        return OneLaunchAdam(params, **options)
    return torch.optim.Adam(params, fused=fused, **options)
