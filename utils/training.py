"""Helpers for the three scripts: RNG state capture, frame order, evaluation, logging.

Kept here so ``train.py`` / ``render.py`` stay thin; nothing in this module knows file layouts beyond
what its arguments say.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from utils.atomic import write_json
from utils.image_io import ImageWriter, finish
from utils.image_metrics import masked, psnr, ssim


# ----------------------------------------------------------------------------- RNG and frame order
def seed_everything(seed: int) -> None:
    """Seed torch (all devices). The training code draws randomness only from torch and the
    :class:`FrameSampler`'s own generator; numpy / Python global RNGs are not used."""

    torch.manual_seed(seed)


class FrameSampler:
    """A random training frame per iteration, reshuffled every epoch (every frame once per epoch).

    Uses its own seeded CPU generator, so its sequence depends on nothing else; ``state_dict`` holds the
    generator, the current epoch's order and the position in it, so a resume draws the same frames."""

    def __init__(self, indices: list[int], seed: int) -> None:
        if not indices:
            raise ValueError("FrameSampler: no training frames")
        self.indices = list(indices)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.order: list[int] = []
        self.position = 0
        self.epoch = 0

    def _reshuffle(self) -> None:
        perm = torch.randperm(len(self.indices), generator=self.generator).tolist()
        self.order = [self.indices[k] for k in perm]
        self.position = 0
        self.epoch += 1

    def peek(self) -> int:
        """The frame the next :meth:`next` returns (draws the epoch's order when due)."""
        if self.position >= len(self.order):
            self._reshuffle()
        return self.order[self.position]

    def next(self) -> int:
        i = self.peek()
        self.position += 1
        return i

    def state_dict(self) -> dict:
        return {"indices": list(self.indices), "generator": self.generator.get_state().clone(),
                "order": list(self.order), "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if list(state["indices"]) != self.indices:
            raise ValueError("the checkpoint's training frames differ from this subject's split "
                             "(other --test_num / --max_train / --frame_delta or other data?): cannot resume "
                             "exactly; use the same data options as the run that wrote it")
        self.generator.set_state(state["generator"])
        self.order = list(state["order"])
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])


# ----------------------------------------------------------------------------- training-loop checks
class NonFiniteWatch:
    """The first training step whose loss was NaN/Inf, at one device copy a step and no sync: the losses of
    the steps since the last check wait in a device buffer, their (iteration, frame index) on the host, and
    :meth:`first_bad` reads the buffer once (at a logging step, which syncs anyway). A buffer that fills
    before a check is read then (a sync, only when checks are further apart than ``capacity`` steps)."""

    def __init__(self, capacity: int, device: torch.device | str) -> None:
        self.values = torch.zeros(max(1, capacity), device=device)
        self.steps: list[tuple[int, int]] = []
        self.first: tuple[int, int] | None = None

    def record(self, it: int, index: int, loss: torch.Tensor) -> None:
        """Note step ``it`` on frame ``index`` with its (scalar, device) ``loss``."""
        if len(self.steps) == self.values.numel():
            self._scan()
        self.values[len(self.steps)].copy_(loss.detach().reshape(()))
        self.steps.append((it, index))

    def _scan(self) -> None:
        if self.first is None and self.steps:
            finite = torch.isfinite(self.values[:len(self.steps)]).tolist()
            self.first = next((s for s, ok in zip(self.steps, finite) if not ok), None)
        self.steps.clear()

    def first_bad(self) -> tuple[int, int] | None:
        """(iteration, frame index) of the first step recorded with a NaN/Inf loss, or None."""
        self._scan()
        return self.first


# ----------------------------------------------------------------------------- evaluation
def quantize8(img):
    """Round to the nearest 8-bit level, as the saved PNGs are (so eval matches metrics.py)."""

    return torch.round(img.clamp(0.0, 1.0) * 255.0) / 255.0


def _sync(device) -> None:
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Wall seconds of a training run by phase: bookkeeping phases (``with clock.phase("grids"):``) and the
    steps between them, split where :meth:`mark` is called (the LPIPS term starting). The device is
    synchronised at each edge, so GPU work queued by the steps is charged to the steps, not to the next
    phase that waits for it; the edges are rare (grids, checkpoints, evaluations), so this costs nothing
    measurable. :meth:`summary` -> {phase: seconds}."""

    def __init__(self, device, steps_name: str = "steps") -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._steps_name = steps_name
        self._since = time.perf_counter()  # start of the current stretch of steps

    def _close_steps(self) -> float:
        _sync(self.device)
        now = time.perf_counter()
        self.seconds[self._steps_name] = self.seconds.get(self._steps_name, 0.0) + now - self._since
        return now

    def mark(self, steps_name: str) -> None:
        """From here on, steps are counted under ``steps_name``."""
        self._since = self._close_steps()
        self._steps_name = steps_name

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self._close_steps()
        try:
            yield
        finally:
            _sync(self.device)
            self._since = time.perf_counter()
            self.seconds[name] = self.seconds.get(name, 0.0) + self._since - start

    def summary(self) -> dict[str, float]:
        self._since = self._close_steps()
        return {k: round(v, 3) for k, v in self.seconds.items()}


def evaluate_frames(render_fn, subject, indices: list[int], lpips_model=None,
                    lpips_reason: str | None = None) -> dict:
    """Masked PSNR / SSIM / LPIPS over ``subject`` frames ``indices`` and the rendering speed.

    ``render_fn(frame) -> (3,H,W)`` renders one :class:`~scene.data.subject.FrameData`. Images are rounded to
    8 bit and multiplied by the head mask (as ``metrics.py`` reads them back). FPS counts the deformation
    and the rasterization of one frame (batch 1), timed with device synchronisation; values are read back
    to the host once at the end."""



    if not indices:
        raise ValueError("evaluate_frames: no frames to evaluate")
    vals: dict[str, list] = {"PSNR": [], "SSIM": [], "LPIPS": []}
    seconds = 0.0
    device = None
    with torch.no_grad():
        for i in indices:
            fr = subject.frame(i)
            device = fr.image.device
            _sync(device)
            t0 = time.perf_counter()
            img = render_fn(fr)
            _sync(device)
            seconds += time.perf_counter() - t0
            r, g = masked(quantize8(img), fr.head_mask), masked(quantize8(fr.image), fr.head_mask)
            vals["PSNR"].append(psnr(r, g))
            vals["SSIM"].append(ssim(r, g))
            if lpips_model is not None:
                vals["LPIPS"].append(lpips_model(r, g))
    out: dict = {"num_views": len(indices), "FPS": len(indices) / max(seconds, 1e-9)}
    for key in ("PSNR", "SSIM"):
        out[key] = float(torch.stack(vals[key]).mean())
    out["LPIPS"] = float(torch.stack(vals["LPIPS"]).mean()) if vals["LPIPS"] else None
    if out["LPIPS"] is None:
        out["LPIPS_unavailable_reason"] = lpips_reason or "LPIPS not computed"
    return out


# ----------------------------------------------------------------------------- logging
class BackgroundTensorboard:
    """Tensorboard's ``SummaryWriter`` on a thread of its own: importing tensorboard (0.4 s here, seconds
    without cached bytecode) and writing every event happen there, in call order, so that a training run's
    thread waits on neither. :meth:`close` waits for all of it and raises the first failure; so does any
    call once an earlier one has failed. A tensorboard that cannot be imported writes nothing."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        self._writer = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tensorboard")
        self._pending: deque[Future] = deque()
        self._lock = threading.Lock()  # calls come from the training thread and the image writer's
        self._submit(self._open, str(log_dir), purge_step)

    def _open(self, log_dir: str, purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # found but broken: the JSON log still has everything
            return
        self._writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)

    def _submit(self, fn, *args, **kwargs) -> None:
        with self._lock:
            while self._pending and self._pending[0].done():
                self._pending.popleft().result()  # a failed write is raised at the next call
            self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def _call(self, method: str, *args, **kwargs) -> None:
        def run() -> None:
            if self._writer is not None:
                getattr(self._writer, method)(*args, **kwargs)

        self._submit(run)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._call("add_scalar", tag, value, step)

    def add_image(self, tag: str, data: np.ndarray, step: int, dataformats: str) -> None:
        self._call("add_image", tag, data, step, dataformats=dataformats)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")
        with self._lock:
            pending, self._pending = self._pending, deque()
        finish(pending, self._pool)


class RunLogger:
    """Tensorboard scalars / images (when tensorboard is installed; written on their own thread,
    :class:`BackgroundTensorboard`) and a JSON log of the run.

    The JSON log (``train_log.json`` in the run folder) holds the options, the loss at logging steps and
    every evaluation; it is rewritten atomically at logging steps (at most once a second), evaluations
    and the end. Images are converted to 8 bit on the caller's thread and encoded (PNG file, tensorboard)
    on a background thread: encoding a 512 px training grid twice takes 0.2-0.8 s of host time, during
    which a GPU run would otherwise wait (60 grids in a 30k run). :meth:`close` waits for them."""

    def __init__(self, run_dir: Path, config: dict, resume_from: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.json_path = self.run_dir / "train_log.json"
        self.record: dict = {"config": config, "losses": [], "evaluations": [], "events": []}
        self._flushed = float("-inf")
        if resume_from > 0 and self.json_path.is_file():
            try:
                old = json.loads(self.json_path.read_text())
                self.record["losses"] = [r for r in old.get("losses", []) if r["iteration"] <= resume_from]
                self.record["evaluations"] = [r for r in old.get("evaluations", [])
                                              if r["iteration"] <= resume_from]
                self.record["events"] = old.get("events", [])
            except (ValueError, KeyError, TypeError):
                pass  # an unreadable old log is replaced, not trusted
        self._images = ImageWriter(workers=1, max_pending=2)  # grids come seconds apart: never pile up
        self.tb: BackgroundTensorboard | None = None
        if importlib.util.find_spec("tensorboard") is not None:  # (finds it without importing it)
            purge = resume_from + 1 if resume_from else None  # drop events a resumed run rewrites
            self.tb = BackgroundTensorboard(self.run_dir, purge_step=purge)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)

    def loss(self, step: int, values: dict[str, float]) -> None:
        """Record a logging step's losses; the JSON log is rewritten too, at most once a second (so that a
        killed run leaves its losses, without a write every few milliseconds on a fast GPU)."""
        self.record["losses"].append({"iteration": step, **values})
        self.scalars(step, {f"train/{k}": v for k, v in values.items()})
        if time.monotonic() - self._flushed >= 1.0:
            self.flush()

    def evaluation(self, step: int, values: dict) -> None:
        self.record["evaluations"].append({"iteration": step, **values})
        self.scalars(step, {f"eval/{k}": v for k, v in values.items()
                            if isinstance(v, (int, float)) and k != "num_views"})
        self.flush()

    def event(self, text: str) -> None:
        self.record["events"].append(text)

    def image(self, step: int, tag: str, img, path: Path) -> None:
        """Write image ``img`` ((3,H,W) or (H,W,3), float in [0, 1] or uint8) as a PNG at ``path``
        (atomically) and log it to tensorboard under ``tag``; both encodings happen in the background."""

        def to_tensorboard(data: np.ndarray) -> None:
            if self.tb is not None:
                self.tb.add_image(tag, data, step, dataformats="HWC" if data.ndim == 3 else "HW")

        self._images.submit(path, img, then=to_tensorboard)

    def flush(self) -> None:
        write_json(self.json_path, self.record)
        self._flushed = time.monotonic()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        try:
            self._images.close()  # waits for the image writes; raises the first failure
        finally:
            self.flush()
            if self.tb is not None:
                self.tb.close()
