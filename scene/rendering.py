"""The render job of ``render.py`` (docs/maths.md section 10): what to render, rendering it, writing it.

``render.py`` parses its options and hands them to :class:`Renderer`; the modes, the folder names and
the outputs are described in ``render.py``'s docstring and the README.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from flame.condition import canonical_condition, neutral_index, relative_condition
from gaussian_renderer import render
from scene.assemble import build_avatar, open_subject
from scene.data.novel_views import load_novel_views
from scene.data.subject import SubjectDataError
from scene.frame_graph import frame_renderer
from scene.model.checkpoint import load_checkpoint, newest_checkpoint
from scene.model.cuda_graphs import inference_deformer
from scene.model.ply import write_ply
from utils.atomic import staged_dir, write_json
from utils.device import resolve_device
from utils.errors import InputError
from utils.image_io import ImageWriter
from utils.options import RenderConfig, RenderOptions
from utils.precision import configure_arithmetic
from utils.prefetch import prefetched
from utils.video import VideoStream
from utils.visualize import error_map, uncertainty_colors


class RenderSetupError(InputError):
    """Bad input for render.py; the message says what to change."""


# ----------------------------------------------------------------------------- conditions and cameras
def turn_angles(n_frames: int) -> list[float]:
    """One full turn in ``n_frames`` equal steps from 0 degrees (docs/maths.md section 10)."""
    return [360.0 * k / n_frames for k in range(n_frames)]


def render_plan(indices: list[int], r: RenderOptions) -> list[tuple[int, float]]:
    """(frame index, turn angle) of every frame to render: the frames as they are, or for ``--rotate``
    ``rotate_frames`` steps of a turn over the frames looped (or the first held); at most ``max_frames``."""
    if not indices:
        return []
    if r.rotate:
        angles = turn_angles(r.rotate_frames)
        plan = [(indices[0] if r.rotate_hold else indices[k % len(indices)], a) for k, a in enumerate(angles)]
    else:
        plan = [(i, 0.0) for i in indices]
    return plan[: r.max_frames] if r.max_frames is not None else plan


# ----------------------------------------------------------------------------- setup
def newest_run_checkpoint(model_dir: Path) -> Path:
    """The newest ``ckpt/ckpt<iter>.pth`` of the run; a clear error when there is none."""
    path = newest_checkpoint(model_dir)
    if path is None:
        raise RenderSetupError(f"no checkpoint in {model_dir / 'ckpt'}: train first (train.py with the same "
                               "--idname/--logname/--log_root) or pass --checkpoint")
    return path


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there; refuse clearly otherwise."""
    probe = folder / ".write_test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RenderSetupError(f"cannot write the output folder {folder} ({type(exc).__name__}: {exc}); pass "
                               "a writable --log_root (or fix the folder's permissions)") from exc


def _maybe_video(path: Path, r: RenderOptions):
    """The renders' MP4 stream, or a no-op context yielding None with --no_video."""
    return contextlib.nullcontext() if r.no_video else VideoStream(path, fps=r.fps)


class Renderer:
    """Everything render.py builds once: target subject, avatar, the frames to render."""

    def __init__(self, cfg: RenderConfig) -> None:
        self.cfg = cfg
        r, p = cfg.render, cfg.paths
        self.device = resolve_device(cfg.run.device)  # DeviceError: a domain error, one line
        self.model_dir = p.model_dir
        self.checkpoint = r.checkpoint if r.checkpoint is not None else newest_run_checkpoint(self.model_dir)
        cross = r.cross is not None
        if r.error and r.rotate:
            raise RenderSetupError("--error compares with the ground truth, which turned (--rotate) views "
                                   "do not have: drop one of the two")
        self.target = open_subject(p.data_root, p.tracking_root, p.idname, cfg.data, self.device,
                                   with_images=not cross, preload="none")
        self.avatar = build_avatar(p, cfg.model, self.target, self.device, seed=0)
        state = load_checkpoint(self.checkpoint, self.avatar)
        self.iteration = int(state["iteration"])
        self.avatar.eval()
        self.avatar.freeze_for_inference()  # fixed weights from here on
        configure_arithmetic(cfg.run, self.device)
        self.background = self.target.background
        if cross:
            root = r.cross_data_root or p.data_root
            troot = r.cross_tracking_root or p.tracking_root
            try:
                self.source = open_subject(root, troot, r.cross, cfg.data, self.device, with_images=False)
            except SubjectDataError as exc:
                raise RenderSetupError(f"--cross {r.cross}: the source subject cannot be used: {exc}") \
                    from exc
            n = len(self.source)
            self.indices = list(range(n)) if r.cross_all else list(range(max(0, n - cfg.data.test_num), n))
        else:
            self.source = self.target
            self.indices = list(self.source.test_indices)
        self.plan = render_plan(self.indices, r) if r.renders_frames and not r.novel_views else []
        self.novel = None
        if r.novel_views:
            self.novel = load_novel_views(self.target.subject_dir)
            if self.novel is None:
                raise RenderSetupError(
                    f"--novel_views: subject '{self.target.idname}' has no novel-view split "
                    f"({self.target.subject_dir / 'novel_views'}); synthetic subjects get one with "
                    "python -m preprocessing.synthetic_subject --novel_views N")
            index_of = {int(f): i for i, f in enumerate(self.target.frame_ids)}
            unknown = [f for f in self.novel.frames if f not in index_of]
            if unknown:
                raise RenderSetupError(f"--novel_views: frames {unknown[:5]} of the split are not tracked "
                                       f"frames of '{self.target.idname}'")
            self.novel_indices = [index_of[f] for f in self.novel.frames]
        if r.error and not all(self.source.has_image(i) for i, _ in self.plan):
            raise RenderSetupError(f"--error needs ground truth images, but subject '{self.source.idname}' "
                                   "has frames without images (cross-reenactment source?)")
        self.relative = None
        if cross and r.cross_mode == "relative":
            s_n = neutral_index(self.source.conditions)
            t_n = neutral_index(self.target.conditions)
            self.relative = (self.source.conditions[s_n], self.target.conditions[t_n],
                             self.source.frame_ids[s_n], self.target.frame_ids[t_n])
        self.frames_dir = self.model_dir / r.frames_dirname
        check_writable(self.model_dir)
        print(f"[render] {self.avatar.embedding.describe()}")

    def condition(self, i: int) -> Tensor:
        c = self.source.condition(i)
        if self.relative is not None:
            c = relative_condition(c, self.relative[0], self.relative[1])
        return c

    def _frame_functions(self) -> tuple:
        """(deform, None) where the frames' Gaussians are needed (uncertainty colours, per-frame PLYs),
        else (None, deformation + render in one), captured here (on CUDA) on the plan's first frame."""
        r = self.cfg.render
        if r.uncertainty or r.export_ply_frames:
            return inference_deformer(self.avatar, self.cfg.run.cuda_graphs), None
        fast = self._frame_renderer()
        i = self.plan[0][0]
        fast(self.condition(i), self.source.camera(i))
        return None, fast

    def _render_frames(self, out: Path, functions: tuple, writer: ImageWriter,
                       video: VideoStream | None) -> list[dict]:
        """Render the plan into ``out`` with ``functions`` (:meth:`_frame_functions`), queueing the PNGs on
        ``writer`` and the renders on ``video``; the frames (their images decoded from disk) are read
        ahead on a thread pool. One record per frame."""
        r = self.cfg.render
        deform, fast = functions
        records: list[dict] = []
        # the frames' images are decoded only where they are written or compared (a turntable of one
        # held frame would otherwise decode the same PNGs rotate_frames times)
        needs_images = r.has_ground_truth or r.error
        # decoded on reader threads, moved to the device here (no CUDA work off the main thread: a capture
        # in progress, as for a frame that needs more pairs than the last capture held, would refuse it)
        images = (prefetched(lambda step: self.source.frame_images(step[0]), self.plan) if needs_images
                  else (None for _ in self.plan))

        def inputs():  # (tag, condition, camera) per planned frame
            for k, ((i, angle), raw) in enumerate(zip(self.plan, images)):
                fr = self.source.frame_from(i, raw) if needs_images else None
                base = fr.camera if fr is not None else self.source.camera(i)
                cam = base.turned_about_y(angle) if r.rotate else base
                yield (k, i, angle, fr), self.condition(i), cam

        if fast is not None:  # deformation and rasterizer in one replay, the next frame queued meanwhile
            rendered = ((tag, out.image, None) for tag, out in fast.stream(inputs()))
        else:
            rendered = (self._render_deformed(deform, tag, condition, cam)
                        for tag, condition, cam in inputs())
        for (k, i, angle, fr), img, gaussians in tqdm(rendered, total=len(self.plan),
                                                      desc=f"render {self.frames_dir.name}"):
            if r.error:
                img = error_map(img, fr.image, fr.head_mask, self.background)
            name = f"{k:05d}.png"
            data = writer.submit(out / "renders" / name, img)
            if video is not None:
                video.append(data)
            if r.has_ground_truth:
                writer.submit(out / "gt" / name, fr.image)
                writer.submit(out / "mask" / name, fr.head_mask)
            if r.export_ply_frames:
                write_ply(out / "ply" / f"{k:05d}.ply", gaussians)
            records.append({"index": k, "file": name, "source_subject": self.source.idname,
                            "source_frame": int(self.source.frame_ids[i]),
                            "rotation_deg": angle if r.rotate else None})
        return records

    def _render_deformed(self, deform, tag, condition: Tensor, cam) -> tuple:
        """(tag, image, Gaussians) of a frame through ``deform`` and ``render`` (uncertainty colours where
        asked)."""
        gaussians, extras = deform(condition, cam)
        colors = None
        if self.cfg.render.uncertainty:
            if extras.uncertainty is None:
                raise RenderSetupError("--uncertainty needs a HyperGaussians model (--ours)")
            colors = uncertainty_colors(extras.uncertainty)
        img = render(cam, gaussians, self.background, override_color=colors,
                     backend=self.cfg.run.backend).image
        return tag, img, gaussians

    def frame_map(self, records: list[dict]) -> dict:
        """What the frames folder holds: mode, options, checkpoint, one record per frame."""
        r = self.cfg.render
        options = {k: v for k, v in asdict(r).items() if k not in ("checkpoint", "fps", "no_video")}
        info = {"mode": r.frames_dirname, "options": options, "checkpoint": str(self.checkpoint),
                "iteration": self.iteration, "method": self.avatar.method,
                "embedding": self.avatar.embedding.counts(), "target_subject": self.target.idname,
                "source_subject": self.source.idname, "cross_mode": r.cross_mode if r.cross else None,
                "has_ground_truth": r.has_ground_truth, "frames": records}
        if self.relative is not None:
            info["source_neutral_frame"] = int(self.relative[2])
            info["target_neutral_frame"] = int(self.relative[3])
        return info

    def _frame_renderer(self):
        """deformation + render of one frame, one CUDA-graph replay where it can be."""
        return frame_renderer(self.avatar, self.background.to(self.device), self.cfg.run.backend,
                              self.cfg.run.cuda_graphs)

    def _render_novel_views(self, out: Path, writer: ImageWriter) -> dict:
        """Every view of the novel-view split into ``out/<view>/{renders,gt,mask}``, each with its
        frame_map.json; returns the split's summary."""
        views = {}
        fast = self._frame_renderer()
        for view in self.novel.views:
            records = []
            for k, (i, fid) in enumerate(zip(self.novel_indices, self.novel.frames)):
                cam = self.target.camera(i).turned(view.yaw_deg, view.pitch_deg)
                img = fast(self.target.condition(i), cam).image
                raw, alpha, head = self.novel.ground_truth(view, fid)
                alpha, head = (x.to(img.device).float() / 255.0 for x in (alpha, head))
                if raw.shape[-2:] != img.shape[-2:]:
                    raise RenderSetupError(f"novel view '{view.name}' of frame {fid}: its image, "
                                           f"{tuple(raw.shape)}, does not match the camera's "
                                           f"{tuple(img.shape)}")
                gt = self.target.composite(raw.to(img.device).float() / 255.0, alpha, head)
                name = f"{k:05d}.png"
                writer.submit(out / view.name / "renders" / name, img)
                writer.submit(out / view.name / "gt" / name, gt)
                writer.submit(out / view.name / "mask" / name, head)
                records.append({"index": k, "file": name, "source_subject": self.target.idname,
                                "source_frame": int(fid), "yaw_deg": view.yaw_deg,
                                "pitch_deg": view.pitch_deg})
            info = self.frame_map(records) | {"mode": f"novel view {view.name}", "yaw_deg": view.yaw_deg,
                                              "pitch_deg": view.pitch_deg, "has_ground_truth": True}
            write_json(out / view.name / "frame_map.json", info)
            views[view.name] = {"yaw_deg": view.yaw_deg, "pitch_deg": view.pitch_deg, "frames": len(records)}
        return views

    @torch.no_grad()
    def run(self) -> list[Path]:
        """Render and export what the options ask for; returns the paths written (also printed)."""
        r = self.cfg.render
        written: list[Path] = []
        if self.novel is not None:
            with staged_dir(self.frames_dir) as out:
                with ImageWriter() as writer:
                    views = self._render_novel_views(out, writer)
                write_json(out / "frame_map.json", self.frame_map([]) | {"views": views})
            print(f"[render] novel views {', '.join(views)} ({len(self.novel.frames)} frames each) -> "
                  f"{self.frames_dir}/<view>/{{renders,gt,mask}}/NNNNN.png")
            written.append(self.frames_dir)
        if self.plan:
            functions = self._frame_functions()  # any capture happens before the timing
            t0 = time.perf_counter()
            with staged_dir(self.frames_dir) as out:
                # PNG encoding (a thread pool) and the video (ffmpeg through a pipe) overlap rendering
                with ImageWriter() as writer, _maybe_video(out / "renders.mp4", r) as video:
                    records = self._render_frames(out, functions, writer, video)
                write_json(out / "frame_map.json", self.frame_map(records))
            seconds = time.perf_counter() - t0
            print(f"[render] {len(records)} frames rendered and written in {seconds:.2f} s "
                  f"({len(records) / max(seconds, 1e-9):.0f} frames/s)")
            subs = ["renders"] + (["gt", "mask"] if r.has_ground_truth else []) + \
                (["ply"] if r.export_ply_frames else [])
            listing = ", ".join(f"{sub}/NNNNN.{'ply' if sub == 'ply' else 'png'}" for sub in subs)
            print(f"[render] {len(records)} frames ({r.frames_dirname}) -> {self.frames_dir}: {listing}")
            written += [self.frames_dir / s for s in subs] + [self.frames_dir / "frame_map.json"]
            if not r.no_video:
                written.append(self.frames_dir / "renders.mp4")
                print(f"[render] video -> {self.frames_dir / 'renders.mp4'} ({len(records)} frames at "
                      f"{r.fps:g} fps)")
            print(f"[render] frame map -> {self.frames_dir / 'frame_map.json'}")
        if r.export_ply:
            cam = self.source.camera(self.indices[0]) if self.indices else None
            path = self.model_dir / "ply" / "canonical.ply"
            self.avatar.export_ply(path, canonical_condition(self.device), cam)
            print(f"[render] canonical Gaussians -> {path}")
            written.append(path)
        return written
