"""The training loop (docs/maths.md section 9): a :class:`Trainer` holds one run's objects and trains.

``train.py`` parses the options and runs it; ``bench/`` builds the same Trainer to time its steps.
Outputs under ``<log_root>/<idname>_<logname>/``: ``ckpt/ckpt<iter>.pth`` (every ``--ckpt_every`` and at
the end), ``train/`` image grids (render | ground truth | error), tensorboard events and
``train_log.json`` (options, losses at logging steps, evaluations). ``--start_checkpoint`` resumes
exactly: parameters, both optimisers, iteration, SH degree, RNG states and the epoch's frame order.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from gaussian_renderer import render, resolve_backend
from gaussian_renderer.types import GaussianSet
from scene.assemble import build_avatar, ensure_subject, open_subject
from scene.data.subject import FrameData
from scene.frame_graph import PairBudget, frame_renderer
from scene.model.checkpoint import list_checkpoints, load_checkpoint, newest_checkpoint, save_checkpoint
from scene.model.cuda_graphs import Surface, training_graph
from scene.model.ema import ParameterEMA
from scene.train_step_graph import TrainStepGraph
from utils.device import resolve_device
from utils.errors import InputError, NonFiniteError
from utils.losses import (
    LossTerms,
    normal_offset_regulariser,
    normal_thickness_regulariser,
    offset_regulariser,
    opacity_regulariser,
    over_background,
    photometric_loss,
)
from utils.lpips_loader import load_lpips_vgg, try_load_lpips_vgg
from utils.options import TrainConfig
from utils.precision import configure_arithmetic
from utils.run_folder import RunFolder
from utils.training import (
    FrameSampler,
    NonFiniteWatch,
    PhaseClock,
    RunLogger,
    evaluate_frames,
    seed_everything,
)
from utils.visualize import error_map, image_grid


def load_perceptual(cfg: TrainConfig, device: torch.device):
    """(lpips model or None, reason): fail before the first iteration when the loss needs it."""
    precision = cfg.run.precision
    if cfg.train.needs_lpips_loss:
        # the loss's call is captured as CUDA graphs (same numbers, no launches) unless --no_cuda_graphs
        graph = device.type == "cuda" and cfg.run.cuda_graphs
        return load_lpips_vgg(device, precision=precision, cuda_graph=graph), None
    if cfg.train.skip_test:
        return None, "evaluation skipped (--skip_test)"
    return try_load_lpips_vgg(device, precision=precision)


# ----------------------------------------------------------------------------- the loop
class Trainer:
    """Holds the run's objects; :meth:`run` trains from the current iteration to ``--iterations``."""

    def __init__(self, cfg: TrainConfig) -> None:
        self._t_created = time.perf_counter()
        self.cfg = cfg
        self.device = resolve_device(cfg.run.device)  # DeviceError: a domain error, one line
        configure_arithmetic(cfg.run, self.device)
        self.run_dir = cfg.paths.model_dir
        self.folder = RunFolder(self.run_dir)
        self.folder.acquire()  # one writer per run folder; released by close() or on error here
        self.logger: RunLogger | None = None
        try:
            self._setup(cfg)
        except BaseException:
            self.close()
            raise

    def _setup(self, cfg: TrainConfig) -> None:
        stale = self.folder.remove_stale_temp_files()
        if stale:
            print(f"[train] removed {len(stale)} temporary file(s) of an interrupted earlier write")
        start = self._start_checkpoint(cfg)
        seed_everything(cfg.train.seed)
        self.lpips, self.lpips_reason = load_perceptual(cfg, self.device)  # fail fast, before any work
        ensure_subject(cfg.paths)
        p = cfg.paths
        self.subject = open_subject(p.data_root, p.tracking_root, p.idname, cfg.data, self.device)
        self.avatar = build_avatar(p, cfg.model, self.subject, self.device, cfg.train.seed)
        if not cfg.train.original_init:
            self.avatar.deformation.start_at_rest()  # a resumed run's state replaces it below
        self.optimizers = self.avatar.make_optimizers()
        self.background = self.subject.background.to(self.device)
        self._train_background = self.background
        self.sampler = FrameSampler(self.subject.train_indices, cfg.train.seed)
        self.iteration = 0
        self.ema: ParameterEMA | None = None  # --ema_decay: made in prepare(), after the Gaussians' start
        self._ema_state: dict | None = None   # a resumed run's average
        # per-frame deformations: eager until prepare() swaps in the CUDA-graphed ones on CUDA
        self.train_deform = self._eager_train_deform
        self._eval_render = None  # frame_renderer(...), made in prepare()
        self.step_graph: TrainStepGraph | None = None  # made in prepare() (--graph_scope step on CUDA)
        if start is not None:
            self._resume(start)
        if cfg.train.overwrite:
            self._clear_earlier_run()
        config = {"options": _plain(asdict(cfg)), "device": str(self.device),
                  "n_gaussians": self.avatar.n_gaussians, "embedding": self.avatar.embedding.counts(),
                  "subject": repr(self.subject)}
        print(f"[train] {self.avatar.embedding.describe()}")
        self.logger = RunLogger(self.run_dir, config, resume_from=self.iteration)
        if self.lpips_reason and not cfg.train.skip_test:
            self.logger.event(f"LPIPS in evaluations is null: {self.lpips_reason}")
            print(f"[train] evaluations will show LPIPS null: {self.lpips_reason}")

    def _start_checkpoint(self, cfg: TrainConfig) -> Path | None:
        """The checkpoint to resume from; a fresh run into a folder holding another run's checkpoints
        needs --resume (continue it) or --overwrite (start over)."""
        t = cfg.train
        newest = newest_checkpoint(self.run_dir)
        if t.resume:
            if newest is None:
                raise InputError(f"--resume: no checkpoint in {self.run_dir / 'ckpt'} to continue from; drop "
                                 "--resume to start a new run")
            return newest
        if newest is not None and t.start_checkpoint is None and not t.overwrite:
            raise InputError(f"{self.run_dir} already holds checkpoints of an earlier run (newest "
                             f"{newest.name}): --resume continues it, --overwrite starts over (deleting "
                             "them), or choose another --logname")
        return t.start_checkpoint

    def _clear_earlier_run(self) -> None:
        """--overwrite: delete the earlier run's checkpoints, grids, log and tensorboard events."""
        doomed = [p for _, p in list_checkpoints(self.run_dir)]
        doomed += sorted((self.run_dir / "train").glob("*.png"))
        doomed += [self.run_dir / "train_log.json"] + sorted(self.run_dir.glob("events.out.tfevents.*"))
        removed = 0
        for path in doomed:
            if path.is_file():
                path.unlink()
                removed += 1
        if removed:
            print(f"[train] --overwrite: removed {removed} file(s) of the earlier run in {self.run_dir}")

    def close(self) -> None:
        """Flush the log and give the run folder back (idempotent)."""
        try:
            if self.logger is not None:
                logger, self.logger = self.logger, None
                logger.close()  # waits for the image writes: a failed one is raised here
        finally:
            self.folder.release()

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path, self.avatar, self.optimizers, restore_rng=True)
        sampler_state = state.get("extra", {}).get("sampler")
        if sampler_state is None:
            raise InputError(f"checkpoint {path} has no frame-sampler state (not written by "
                                     "train.py); cannot resume exactly")
        self.sampler.load_state_dict(sampler_state)
        self._ema_state = state["extra"].get("ema")
        self.iteration = int(state["iteration"])
        print(f"[train] resumed from {path} at iteration {self.iteration}")

    # -- pieces ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Before the first step: initialise the Gaussians (fresh runs) and set up the per-frame
        deformation, CUDA-graphed on CUDA (unless --no_cuda_graphs), eager elsewhere."""
        first = self.subject.frame(self.sampler.peek())
        if self.iteration == 0:
            self.avatar.initialize_gaussians(first.condition, first.camera)
        if self.cfg.train.ema_decay > 0:
            self.ema = ParameterEMA(self.avatar, self.cfg.train.ema_decay)
            if self._ema_state is not None:
                self.ema.load_state_dict(self._ema_state)
        graphs = self.cfg.run.cuda_graphs and self.device.type == "cuda"
        whole = graphs and self.cfg.run.graph_scope == "step" and resolve_backend(
            self.cfg.run.backend, True) == "cuda"
        if whole:  # the whole iteration is one replay (the deformation is captured inside it)
            self.step_graph = TrainStepGraph(self)
        elif graphs:
            try:
                self.train_deform = training_graph(self.avatar, first.condition, first.camera,
                                                   with_surface=self.cfg.train.uses_surface)
            except RuntimeError as exc:  # a capture this torch/driver refuses: train eagerly, slower
                warnings.warn(f"CUDA-graph capture of the deformation failed ({exc}); training with the "
                              "eager deformation instead (slower). --no_cuda_graphs silences this.",
                              stacklevel=1)
                graphs = False
        if not graphs:
            self.train_deform = self._eager_train_deform
        if not self.cfg.train.skip_test:  # captured here, so that no evaluation's FPS counts the capture
            self._eval_render = frame_renderer(self.avatar, self.background, self.cfg.run.backend, graphs)
            with torch.no_grad():
                self._eval_render(first.condition, first.camera)

    def _eager_train_deform(self, condition: torch.Tensor, camera) -> tuple[GaussianSet, Surface | None]:
        gaussians, extras = self.avatar.deform(condition, camera)
        return gaussians, self.avatar.surface_of(extras) if self.cfg.train.uses_surface else None

    def render_frame(self, frame) -> torch.Tensor:
        """Render one frame without gradients (evaluation): a CUDA-graph replay on CUDA after prepare()."""
        if self._eval_render is None:
            self._eval_render = frame_renderer(self.avatar, self.background, self.cfg.run.backend, False)
        return self._eval_render(frame.condition, frame.camera).image

    def perceptual_active(self, it: int) -> bool:
        """Whether iteration ``it``'s loss has the LPIPS term."""
        t = self.cfg.train
        return self.lpips is not None and t.lambda_lpips > 0 and it > t.lpips_start

    def loss(self, it: int, frame, pairs: PairBudget | None = None, exact: bool = False):
        """The docs/maths.md section 9 loss of one frame -> (terms, render).

        ``pairs``: for (and in) a whole-step capture (:mod:`scene.train_step_graph`): the deformation and
        LPIPS run eagerly, to be captured with the rest, and the rasterizer writes the frame's pair count to
        ``pairs.count`` with a pair list of ``pairs.capacity`` slots (an exact list when ``exact``)."""
        t = self.cfg.train
        if pairs is None:
            gaussians, surface = self.train_deform(frame.condition, frame.camera)
            perceptual = self.lpips
            capacity, count = 0, None
        else:
            gaussians, surface = self._eager_train_deform(frame.condition, frame.camera)
            perceptual = None if self.lpips is None else self.lpips.distance
            capacity, count = (0 if exact else pairs.capacity), pairs.count
        gt, background = frame.image, self.background
        if t.random_background > 0:  # drawn on the device: no host sync
            draw = torch.rand(4, device=self.device, dtype=gt.dtype)
            background = torch.where(draw[0] < t.random_background, draw[1:], background)
            gt = over_background(gt, frame.coverage, self.background, background)
        self._train_background = background  # the training grid shows the render over it
        out = render(frame.camera, gaussians, background, backend=self.cfg.run.backend,
                     pair_capacity=capacity, pair_count=count)
        img = out.image
        terms = photometric_loss(img, gt, frame.mouth_mask)
        total = terms.total
        if self.perceptual_active(it):
            terms.perceptual = perceptual(img * frame.head_mask, gt * frame.head_mask)
            total = total + t.lambda_lpips * terms.perceptual
        if t.lambda_opacity_reg > 0:
            terms.opacity = opacity_regulariser(gaussians.opacities)
            total = total + t.lambda_opacity_reg * terms.opacity
        if surface is not None:  # t.uses_surface: from the same deformation (no parameters in them)
            base, normals = surface
            if t.lambda_offset > 0:
                terms.offset = offset_regulariser(gaussians.means, base)
                total = total + t.lambda_offset * terms.offset
            if t.lambda_normal_offset > 0:
                terms.normal_offset = normal_offset_regulariser(gaussians.means, base, normals)
                total = total + t.lambda_normal_offset * terms.normal_offset
            if t.lambda_thickness > 0:
                terms.thickness = normal_thickness_regulariser(gaussians.scales, gaussians.rotations, normals)
                total = total + t.lambda_thickness * terms.thickness
        terms.total = total
        return terms, img

    def eager_step(self, it: int, frame, pairs: PairBudget | None = None,
                   exact: bool = False) -> tuple[LossTerms, torch.Tensor]:
        """Iteration ``it`` on ``frame`` launched op by op: loss, backward, both Adam steps, gradients
        cleared (``pairs``, ``exact``: as :meth:`loss`)."""
        terms, img = self.loss(it, frame, pairs, exact)
        terms.total.backward()
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return terms.detached(), img.detach()  # the step's autograd graph goes now, not at the next step

    def step(self, it: int, frame) -> tuple[LossTerms, torch.Tensor]:
        """Training iteration ``it`` on ``frame``: one CUDA-graph replay when the whole step is captured
        (``--graph_scope step`` on CUDA), else :meth:`eager_step`."""
        if self.step_graph is not None:
            return self.step_graph(it, frame)
        return self.eager_step(it, frame)

    def averaged(self) -> contextlib.AbstractContextManager:
        """The block sees the parameter average (--ema_decay) where there is one, else the raw weights."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def evaluate(self, it: int) -> dict:
        self.avatar.eval()
        with self.averaged():
            res = evaluate_frames(self.render_frame, self.subject, self.subject.eval_indices, self.lpips,
                                  self.lpips_reason)
        self.avatar.train()
        self.logger.evaluation(it, res)
        lp = "null" if res["LPIPS"] is None else f"{res['LPIPS']:.4f}"
        tqdm.write(f"[eval {it}] PSNR {res['PSNR']:.2f}  SSIM {res['SSIM']:.4f}  LPIPS {lp}  "
                   f"FPS {res['FPS']:.1f} ({res['num_views']} views)")
        return res

    def check_finite(self, it: int) -> None:
        """Refuse to go on (or to write a checkpoint) with NaN or infinite parameters."""
        bad = [name for name, p in self.avatar.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteError(
                f"parameters {', '.join(bad[:4])} hold NaN/Inf at iteration {it}; no checkpoint written. "
                f"{self._last_good()} Lower the loss weights, or check the subject's tracking and images")

    def _last_good(self) -> str:
        newest = newest_checkpoint(self.run_dir)
        return (f"The last good checkpoint is {newest} (continue with --resume)." if newest is not None
                else "No checkpoint was written before.")

    def save(self, it: int) -> Path:
        self.check_finite(it)
        path = self.run_dir / "ckpt" / f"ckpt{it}.pth"
        extra = {"sampler": self.sampler.state_dict()}
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()
        save_checkpoint(path, self.avatar, self.optimizers, it, extra=extra)
        self.logger.event(f"checkpoint {path.name} at iteration {it}")
        return path

    def write_grid(self, it: int, frame: FrameData, img: torch.Tensor) -> None:
        with torch.no_grad():
            bg = self._train_background
            gt = over_background(frame.image, frame.coverage, self.background, bg)
            err = error_map(img.detach(), gt, frame.head_mask, bg)
            grid = image_grid([img.detach().clamp(0, 1), gt, err],
                              labels=[f"render {it}", "ground truth", "error"])
        self.logger.image(it, "train/render_gt_error", grid, self.run_dir / "train" / f"{it:05d}.png")

    # -- loop --------------------------------------------------------------------------------------
    def run(self) -> dict | None:
        """Train to ``--iterations``. Ctrl-C stops after the step in flight, saves a checkpoint and the log
        and returns; a NaN/Inf loss stops with :class:`NonFiniteError` naming the iteration and frame.
        The run folder is given back in every case."""
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> dict | None:
        t = self.cfg.train
        fresh = self.iteration == 0
        self.prepare()
        if fresh and not t.skip_test and t.eval_every > 0:
            self.evaluate(0)  # the untrained avatar: the reference for "how much was learnt"
        start = self.iteration
        last_eval = None
        stop = _InterruptFlag()
        # the first non-finite loss (iteration, frame index): one device copy a step, read at logging steps
        watch = NonFiniteWatch(t.log_every, self.device)
        bar = tqdm(range(start + 1, t.iterations + 1), initial=start, total=t.iterations, desc="train",
                   dynamic_ncols=True, mininterval=1.0, disable=t.quiet)
        t0 = time.perf_counter()
        clock = PhaseClock(self.device, "steps_with_lpips" if self.perceptual_active(start + 1)
                           else "steps_without_lpips")
        try:
            with stop:
                for it in bar:
                    if it == t.lpips_start + 1 and it > start + 1 and self.perceptual_active(it):
                        clock.mark("steps_with_lpips")
                    self.avatar.update_sh_degree(it)
                    index = self.sampler.next()
                    frame, out = None, None
                    if self.step_graph is not None:  # a replay that picks the frame on the device
                        out = self.step_graph.replay_index(it, index)
                    if out is None:
                        frame = self.subject.frame(index)
                        out = self.step(it, frame)
                    terms, img = out
                    if self.ema is not None:
                        self.ema.update()
                    self.iteration = it
                    watch.record(it, index, terms.total)
                    if it % t.log_every == 0 or it == t.iterations:  # the only host syncs of the loop
                        self._check_loss(watch)
                        self._check_pairs(it)
                        self._log_losses(it, start, t0, terms, bar)
                    if t.grid_every and it % t.grid_every == 0:
                        with clock.phase("grids"):
                            shown = frame if frame is not None else self.subject.frame(index)
                            self.write_grid(it, shown, img)
                    if not t.skip_test and t.eval_every and it % t.eval_every == 0:
                        with clock.phase("evaluations"):
                            last_eval = self.evaluate(it)
                    if (t.ckpt_every and it % t.ckpt_every == 0) or it == t.iterations or stop.raised:
                        self._check_loss(watch)
                        with clock.phase("checkpoints"):
                            self.save(it)
                    if stop.raised:
                        break
        finally:
            bar.close()
            # where the run's time went (steps by phase, grids, evaluations, checkpoints): bench/ reads it
            self.logger.record["seconds"] = {"setup": round(t0 - self._t_created, 3), **clock.summary()}
        if stop.raised:
            msg = (f"interrupted at iteration {self.iteration}: checkpoint and train_log.json written; "
                   "continue with the same command plus --resume")
            self.logger.event(msg)
            print(f"[train] {msg}")
            return last_eval
        if not t.skip_test and (not t.eval_every or self.iteration % t.eval_every != 0):
            last_eval = self.evaluate(self.iteration)
        self.logger.event(f"finished at iteration {self.iteration} in {time.perf_counter() - t0:.1f} s")
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.logger.record["peak_gpu_memory_mib"] = round(peak, 1)
            print(f"[train] peak GPU memory {peak:.0f} MiB (tensors allocated by torch)")
        return last_eval

    def _check_pairs(self, it: int) -> None:
        """At a logging step: a captured step whose frame needed more rasterizer pairs than the capture had
        room for drew fewer Gaussians; grow the room (the next steps capture anew) and say so."""
        if self.step_graph is None:
            return
        capacity = self.step_graph.budget.capacity
        peak = self.step_graph.check_pairs()
        if peak:
            msg = (f"iteration {it}: a frame needed {peak} rasterizer pairs, more than the captured step's "
                   f"{capacity}; some steps since the last log drew fewer Gaussians. Re-capturing with room "
                   "for more")
            self.logger.event(msg)
            tqdm.write(f"[train] {msg}")

    def _check_loss(self, watch: NonFiniteWatch) -> None:
        """At a logging step (a host sync anyway): stop when some step's loss was NaN/Inf."""
        bad = watch.first_bad()
        if bad is None:
            return
        it, index = bad
        fr = self.subject.frame_ids[index]
        where = self.subject.image_path(index)
        raise NonFiniteError(
            f"the loss became NaN/Inf at iteration {it} (training frame {fr}, {where}); stopped at iteration "
            f"{self.iteration} with no checkpoint written after it. {self._last_good()} Lower the loss "
            "weights, or check that frame's image and tracking")

    def _log_losses(self, it: int, start: int, t0: float, terms, bar) -> None:
        named = {"loss": terms.total, "huber": terms.image, "mouth": terms.mouth, "lpips": terms.perceptual,
                 "opacity_reg": terms.opacity, **{f"{k}_reg": getattr(terms, k)
                                                  for k in ("offset", "normal_offset", "thickness")}}
        named = {k: v for k, v in named.items() if v is not None}
        # one copy to the host for all of them (a sync each with .item())
        stacked = torch.stack([v.detach().float().reshape(()) for v in named.values()])
        values = dict(zip(named, stacked.tolist()))
        values["its_per_s"] = (it - start) / max(time.perf_counter() - t0, 1e-9)
        self.logger.loss(it, values)
        bar.set_postfix(loss=f"{values['loss']:.5f}", sh=self.avatar.gaussians.active_sh_degree)


class _InterruptFlag:
    """Within the block, Ctrl-C (SIGINT) only raises a flag that the loop reads after the step in flight,
    so the checkpoint it then writes is exact; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True
        print("\n[train] Ctrl-C: stopping after this step (press again to stop at once)", flush=True)

    def __enter__(self) -> _InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
