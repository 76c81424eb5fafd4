"""An exponential moving average of the avatar's parameters (``--ema_decay``), for evaluation and export.

The learning rates are constant (as in the original), so the last iterate jitters around its optimum and
the held-out score of a run depends on where the last step happened to land. The average of the recent
iterates sits nearer the optimum. Training steps the raw parameters as before; after each step the
average moves towards them by ``1 - d`` with ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates
(the usual warm-up, so that early evaluations are not dominated by the initial weights). One fused
multi-tensor kernel a step, no host synchronisation.

Evaluation and checkpoints swap the average in (:meth:`ParameterEMA.applied`, in place, so captured CUDA
graphs that read the parameters see it); the checkpoint keeps the raw weights for exact resume and the
average under ``extra["ema"]``, which the rendering tools load instead (:func:`ema_weights`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class ParameterEMA:
    """The running average of ``module``'s trainable parameters (same names, shapes, devices)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ParameterEMA: decay must be in (0, 1), got {decay}")
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self._values = [p.detach() for _, p in named]  # aliases: optimisers update the parameters in place
        self.shadow = [v.clone() for v in self._values]
        self.decay = float(decay)
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current parameters (call after each optimiser step)."""
        self.updates += 1
        torch._foreach_lerp_(self.shadow, self._values, 1.0 - self.current_decay())

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the module holds the averaged weights; the raw ones come back after it."""
        raw = [v.clone() for v in self._values]
        torch._foreach_copy_(self._values, self.shadow)
        try:
            yield
        finally:
            torch._foreach_copy_(self._values, raw)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {n: s.detach().clone() for n, s in zip(self.names, self.shadow)}}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        missing = [n for n in self.names if n not in shadow]
        if missing:
            raise KeyError(f"the average lacks parameters {missing[:3]}")
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow):
                if shadow[n].shape != s.shape:
                    raise ValueError(f"the average's {n} has shape {tuple(shadow[n].shape)}, the model's "
                                     f"{tuple(s.shape)}")
                s.copy_(shadow[n])
        self.decay, self.updates = float(state["decay"]), int(state["updates"])


def ema_weights(state: dict) -> dict[str, Tensor] | None:
    """The averaged weights a checkpoint dict holds (by the avatar's parameter names), or None."""
    ema = (state.get("extra") or {}).get("ema")
    return None if not ema else ema["shadow"]
