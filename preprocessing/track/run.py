"""The tracker end to end: frames -> landmarks -> landmark fit -> photometric refinement -> (optionally) the
cameras refined against a quickly trained avatar -> ``.frame`` files.

``track_subject`` reads ``<data_root>/<id>/imgs`` (and ``alpha/``, ``parsing/*_neckhead.png`` where
present) and writes ``<tracking_root>/<id>/checkpoint/NNNNN.frame`` in metrical-tracker's layout
(:func:`scene.data.tracking.save_tracked_frame`), so ``train.py`` runs on it unchanged. Work is kept
under ``<data_root>/<id>/track/``: the landmark cache (``landmarks.npz``) and the fitted parameters
after each stage (``stage1.pt``, ``stage2.pt``, ``stage3.pt``), so a rerun skips what is done
(``--restart`` redoes it); the avatar stage's scratch (its avatar's run and the tracking it trained on) is
``<tracking_root>/<id>/avatar_stage/``. All input problems are found before any work starts; the
``.frame`` files are written at the end, each atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flame.assets import load_flame_assets, resolve_flame_dir
from flame.landmarks import load_landmark_embedding
from preprocessing.face_landmarks import FaceLandmarker
from preprocessing.frames_io import PREPROCESS_SETTINGS, PreprocessError
from preprocessing.track.avatar_refine import (
    AvatarRefineConfig,
    avatar_refine_config,
    check_trainable,
    missing_training_masks,
    refine_with_avatar,
)
from preprocessing.track.fit import FitConfig, fit_landmarks
from preprocessing.track.model import LandmarkModel, Observations, TrackParams
from preprocessing.track.observe import observations_from_arrays
from preprocessing.track.photometric import (
    FrameImages,
    PhotometricConfig,
    photometric_config,
    refine_photometric,
    resize_uint8,
)
from scene.data.tracking import save_tracked_frame
from utils.atomic import atomic_open, write_json
from utils.image_io import IMAGE_SUFFIXES, find_image, read_image_uint8, read_mask_uint8

MIN_FRAMES = 5


@dataclass
class TrackConfig:
    """Everything ``python -m preprocessing.track`` can set (see its --help)."""

    focal: float = 2.5            # initial fx / image width (fitted, with a weak prior)
    no_face: str = "interpolate"  # frames without a face: "interpolate" | "drop" | "error"
    photometric: bool = True      # the pixel stage after the landmark fit (see --no_photometric)
    fit: FitConfig = field(default_factory=FitConfig)
    photo: PhotometricConfig | None = None  # None: photometric_config(device) when tracking (the full
    # settings on a GPU, a light preset on the CPU); set it to choose them yourself
    avatar_refine: bool | None = None  # stage 3: cameras refined against an avatar trained on the tracking;
    # None: on a GPU where the subject has its training masks (alpha, neck-head, mouth), off on the CPU,
    # where it takes minutes (stage_on() decides)
    refine: AvatarRefineConfig | None = None  # None: avatar_refine_config(device)
    face_model_dir: Path | None = None
    workers: int = 0              # landmark detection processes (0: up to 8, one per core)
    restart: bool = False
    show_progress: bool = True


def list_frames(img_dir: Path) -> dict[int, Path]:
    """``NNNNN.png|jpg`` in ``img_dir`` by frame number; clear errors for a missing folder or odd names."""
    if not img_dir.is_dir():
        raise PreprocessError(f"{img_dir} not found: the tracker reads the subject's frames from "
                              "<data_root>/<idname>/imgs (make them with preprocessing/video_to_subject.py)")
    frames, odd = {}, []
    for p in sorted(img_dir.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.isdigit():
            frames[int(p.stem)] = p
        elif not p.name.startswith("."):
            odd.append(p.name)
    if odd:
        raise PreprocessError(f"{img_dir} holds files that are not NNNNN.png|jpg frames: {odd[:5]}; move "
                              "them away (organize.py names frames 00000, 00001, ...)")
    return frames


def detect_landmarks(frames: dict[int, Path], cache: Path, cfg: TrackConfig) -> Observations:
    """Face-mesh landmarks and irises of every frame, from ``cache`` where it has them (resumable)."""
    numbers = sorted(frames)
    data: dict[int, tuple[np.ndarray, np.ndarray, bool]] = {}
    if cache.is_file() and not cfg.restart:
        with np.load(cache) as z:
            for n, pts, iris, found in zip(z["numbers"], z["points"], z["irises"], z["found"]):
                data[int(n)] = (pts, iris, bool(found))
    todo = [n for n in numbers if n not in data]
    first = read_image_uint8(frames[numbers[0]])
    if todo:
        workers = cfg.workers or min(8, os.cpu_count() or 1)
        FaceLandmarker(cfg.face_model_dir, irises=True, threads=1)  # missing models: one clear error, here
        jobs = [(frames[n], first.shape[:2]) for n in todo]
        with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(cfg.face_model_dir,)) as pool:
            results = pool.map(_detect_one, jobs, chunksize=8)
            bar = tqdm(zip(todo, results), total=len(todo), desc="landmarks", unit="frame",
                       disable=not cfg.show_progress, dynamic_ncols=True, mininterval=1.0)
            for k, (n, res) in enumerate(bar):
                data[n] = res
                if (k + 1) % 200 == 0 or k + 1 == len(todo):
                    _save_cache(cache, data)
    pts = np.stack([data[n][0] for n in numbers])
    iris = np.stack([data[n][1] for n in numbers])
    found = np.array([data[n][2] for n in numbers])
    return observations_from_arrays(numbers, pts, iris, found, first.shape[:2])


_WORKER: dict = {}


def _start_worker(face_model_dir: Path | None) -> None:
    torch.set_num_threads(1)
    _WORKER["landmarker"] = FaceLandmarker(face_model_dir, irises=True, threads=1)


def _detect_one(job: tuple[Path, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, bool]:
    """One frame's 468 mesh points, irises and whether a face was found (in a worker process)."""
    path, size = job
    rgb = read_image_uint8(path)
    if rgb.shape[:2] != size:
        raise PreprocessError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]}, other frames {size[1]}x{size[0]}: "
                              "all frames of a subject must have one size")
    res = _WORKER["landmarker"](rgb, refine=1)
    if res is None:
        return np.full((468, 2), np.nan), np.full((2, 2), np.nan), False
    return res.points[:, :2], res.irises, True


def _save_cache(path: Path, data: dict) -> None:
    numbers = sorted(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, numbers=np.array(numbers), points=np.stack([data[n][0] for n in numbers]),
                 irises=np.stack([data[n][1] for n in numbers]),
                 found=np.array([data[n][2] for n in numbers]))


def handle_missing_faces(obs: Observations, mode: str, img_dir: Path) -> Observations:
    """Name the frames without a face; keep them (interpolated by the fit), drop them, or stop."""
    missing = [n for n, ok in zip(obs.frame_numbers, obs.valid.tolist()) if not ok]
    if not missing:
        return obs
    if len(missing) == len(obs):
        raise PreprocessError(f"no face found in any frame of {img_dir}: the tracker needs a visible, "
                              "roughly frontal face")
    names = ", ".join(f"{n:05d}" for n in missing[:20]) + (" ..." if len(missing) > 20 else "")
    if mode == "error":
        raise PreprocessError(f"no face found in {len(missing)} frame(s) of {img_dir}: {names}. Remove them, "
                              "or pass --no_face interpolate (fill from the neighbours) or --no_face drop")
    if mode == "drop":
        warnings.warn(f"no face in {len(missing)} frame(s), left untracked (--no_face drop): {names}; train "
                      "with those images removed", stacklevel=2)
        keep = obs.valid
        return Observations([n for n, k in zip(obs.frame_numbers, keep.tolist()) if k], obs.landmarks[keep],
                            obs.irises[keep], obs.confidence[keep], obs.valid[keep], obs.img_size)
    warnings.warn(f"no face in {len(missing)} frame(s), filled in from their neighbours (--no_face "
                  f"interpolate): {names}", stacklevel=2)
    return obs


def load_images(frames: dict[int, Path], numbers: list[int], subject_dir: Path, size: int,
                device: torch.device, show_progress: bool) -> FrameImages:
    """The matted frames on white and where the photometric stage compares them (the head inside the
    matte, and the background outside it) at ``size`` (longer side), uint8 on ``device``."""
    imgs, masks = [], []
    for n in tqdm(numbers, desc="images", unit="frame", disable=not show_progress, dynamic_ncols=True,
                  mininterval=1.0):
        rgb = torch.from_numpy(read_image_uint8(frames[n])).permute(2, 0, 1).float()
        alpha_p = find_image(subject_dir / "alpha", f"{n:05d}")
        alpha = (torch.from_numpy(read_mask_uint8(alpha_p)).float()[None] if alpha_p
                 else torch.full_like(rgb[:1], 255.0))
        head_p = subject_dir / "parsing" / f"{n:05d}_neckhead.png"
        head = torch.from_numpy(read_mask_uint8(head_p)).float()[None] if head_p.is_file() else alpha
        comp = rgb * alpha / 255.0 + 255.0 * (1.0 - alpha / 255.0)
        imgs.append(comp.round().to(torch.uint8))
        masks.append((head * alpha / 255.0 + (255.0 - alpha)).clamp(max=255.0).round().to(torch.uint8))
    h, w = imgs[0].shape[1:]
    size = min(size, max(h, w))  # never above the frames' own size
    hw = (size, round(size * w / h)) if h >= w else (round(size * h / w), size)
    return FrameImages(resize_uint8(torch.stack(imgs), hw).to(device),
                       resize_uint8(torch.stack(masks), hw).to(device))


def write_frames(params: TrackParams, obs: Observations, out_dir: Path) -> list[Path]:
    """One ``.frame`` per tracked frame (metrical-tracker's layout), each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        R, t, K = (x.detach().cpu().double().numpy() for x in params.cameras(obs.img_size))
        shape = params.full_shape().detach().cpu().numpy()
        expr = params.full_expression().detach().cpu().numpy()
        jaw, eyes, lids = (x.detach().cpu().numpy() for x in (params.jaw, params.eyes, params.eyelids))
    paths = []
    for k, n in enumerate(obs.frame_numbers):
        paths.append(save_tracked_frame(out_dir / f"{n:05d}.frame", shape=shape, expression=expr[k], R=R[k],
                                        t=t[k], K=K, img_size=obs.img_size, jaw=jaw[k], eyes=eyes[k],
                                        eyelids=lids[k], frame_id=n))
    return paths


def track_subject(data_root: Path, tracking_root: Path, idname: str, cfg: TrackConfig, *,
                  flame_dir: Path | None = None, device: torch.device | str = "cpu",
                  observations: Observations | None = None) -> dict:
    """Track subject ``idname``; returns a summary (errors, timings, paths). ``observations`` replaces the
    landmark detection (tests feed known landmarks)."""
    device = torch.device(device)
    subject_dir = Path(data_root) / idname
    work = subject_dir / "track"
    out_dir = Path(tracking_root) / idname / "checkpoint"
    assets = load_flame_assets(resolve_flame_dir(flame_dir, subject_dir))
    embedding = load_landmark_embedding(assets.flame_dir)
    frames = list_frames(subject_dir / "imgs")
    if len(frames) < MIN_FRAMES:
        raise PreprocessError(f"{subject_dir / 'imgs'} has {len(frames)} frame(s); tracking needs at least "
                              f"{MIN_FRAMES} (and an avatar far more: a few hundred)")
    avatar_stage, why_not = stage_on(cfg.avatar_refine, device, subject_dir, sorted(frames))
    if cfg.avatar_refine:
        check_trainable(subject_dir, sorted(frames))
    if cfg.no_face not in ("interpolate", "drop", "error"):
        raise ValueError(f"no_face must be interpolate, drop or error, got {cfg.no_face!r}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    obs = observations if observations is not None else detect_landmarks(frames, work / "landmarks.npz", cfg)
    timings["landmarks_s"] = time.perf_counter() - t0
    obs = handle_missing_faces(obs, cfg.no_face, subject_dir / "imgs").to(device)
    model = LandmarkModel(assets, embedding).to(device)
    summary: dict = {"frames": len(obs), "device": str(device)}

    principal = crop_principal_point(subject_dir, obs.img_size)
    summary["principal_point"] = list(principal) if principal is not None else "image centre"
    params = TrackParams(len(obs), cfg.focal, principal=principal).to(device)
    t1 = time.perf_counter()
    key = _digest(obs, cfg.focal, asdict(cfg.fit), principal)
    stage1 = _resume(work / "stage1.pt", params, obs, key, cfg.restart)
    if stage1 is None:
        bar = tqdm(total=cfg.fit.rigid_steps + cfg.fit.steps, desc="fit landmarks", unit="step",
                   disable=not cfg.show_progress, dynamic_ncols=True, mininterval=1.0)
        stage1 = fit_landmarks(params, model, obs, cfg.fit, progress=bar.update)
        bar.close()
        _checkpoint(work / "stage1.pt", params, obs, key, stage1)
    summary["landmark_stage"] = stage1
    timings["landmark_fit_s"] = time.perf_counter() - t1
    photo = cfg.photo if cfg.photo is not None else photometric_config(device)
    if cfg.photometric:
        t2 = time.perf_counter()
        key = _digest(obs, cfg.focal, asdict(cfg.fit), principal, asdict(photo))
        stage2 = _resume(work / "stage2.pt", params, obs, key, cfg.restart)
        if stage2 is None:
            images = load_images(frames, obs.frame_numbers, subject_dir, photo.size, device,
                                 cfg.show_progress)
            bar = tqdm(total=photo.steps, desc="fit pixels", unit="step",
                       disable=not cfg.show_progress, dynamic_ncols=True, mininterval=1.0)
            stage2 = refine_photometric(params, model, obs, images, assets, cfg.fit, photo,
                                        progress=bar.update)
            bar.close()
            _checkpoint(work / "stage2.pt", params, obs, key, stage2)
        summary["photometric_stage"] = stage2
        timings["photometric_fit_s"] = time.perf_counter() - t2
    if not avatar_stage:
        summary["avatar_stage_skipped"] = why_not
        if cfg.show_progress and device.type == "cuda" and cfg.avatar_refine is None:
            print(f"[track] avatar stage skipped: {why_not}")
    if avatar_stage:
        t3 = time.perf_counter()
        refine = cfg.refine if cfg.refine is not None else avatar_refine_config(device)
        key = _digest(obs, cfg.focal, asdict(cfg.fit), principal, asdict(photo) if cfg.photometric else None,
                      asdict(refine))
        stage3 = _resume(work / "stage3.pt", params, obs, key, cfg.restart)
        if stage3 is None:
            bar = tqdm(total=refine.rounds * len(obs), desc="refine cameras", unit="frame",
                       disable=not cfg.show_progress, dynamic_ncols=True, mininterval=1.0)
            stage3 = refine_with_avatar(params, obs, Path(data_root), idname, assets.flame_dir,
                                        out_dir.parent / "avatar_stage", write_frames, refine, device,
                                        progress=bar.update, quiet=not cfg.show_progress)
            bar.close()
            _checkpoint(work / "stage3.pt", params, obs, key, stage3)
        summary["avatar_stage"] = stage3
        timings["avatar_refine_s"] = time.perf_counter() - t3
    paths = write_frames(params, obs, out_dir)
    timings["total_s"] = time.perf_counter() - t0
    summary.update(timings=timings, output=str(out_dir), focal=float(params.log_focal.detach().exp()),
                   config={k: v for k, v in asdict(cfg).items() if k not in ("face_model_dir",)})
    summary["config"]["face_model_dir"] = str(cfg.face_model_dir) if cfg.face_model_dir else None
    write_json(work / "summary.json", summary)
    summary["paths"] = paths
    return summary


def stage_on(requested: bool | None, device: torch.device, subject_dir: Path,
             numbers: list[int]) -> tuple[bool, str]:
    """Whether the avatar stage runs, and why not when it does not. ``requested`` None (the default): on a
    GPU where every frame has its training masks; not on the CPU, where its avatar takes minutes. At 512 px
    on the H200 it raised the held-out PSNR of avatars trained on the tracking from 32.67 +- 0.35 to
    32.85 +- 0.04 dB for 43 s on 1000 frames (bench/NOTES.md, session 13)."""
    if requested is not None:
        return requested, "" if requested else "--no_avatar_refine"
    if device.type != "cuda":
        return False, "off by default on the CPU (--avatar_refine runs it)"
    problem = missing_training_masks(subject_dir, numbers)
    return problem is None, problem or ""


def crop_principal_point(subject_dir: Path, img_size: tuple[int, int]) -> tuple[float, float] | None:
    """Where the uncropped video's centre (its principal point, for an ordinary camera) lands in the
    subject's frames, from video_to_subject.py's record of the crop box and the source size; None when the
    subject has no such record (frames made elsewhere: the image centre is assumed). A face crop away from
    the frame's centre moves it by hundreds of pixels; assuming the centre would turn that into a head
    rotation."""
    path = Path(subject_dir) / PREPROCESS_SETTINGS
    try:
        record = json.loads(path.read_text())
        x, y, bw, bh = (float(v) for v in record["crop_box_xywh"])
        src_h, src_w = (float(v) for v in record["source_size_hw"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    h, w = img_size
    if bw <= 0 or bh <= 0:
        return None
    return ((src_w / 2.0 - x) * w / bw, (src_h / 2.0 - y) * h / bh)


def _digest(obs: Observations, *settings: object) -> str:
    """What a stage's result depends on: the observations and the settings."""
    h = hashlib.sha256(repr((obs.frame_numbers, obs.img_size, settings)).encode())
    for t in (obs.landmarks, obs.irises, obs.confidence):
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _checkpoint(path: Path, params: TrackParams, obs: Observations, key: str, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in params.state_dict().items()}
    with atomic_open(path, "wb") as f:
        torch.save({"frames": list(obs.frame_numbers), "key": key, "params": state, "result": result}, f)


def _resume(path: Path, params: TrackParams, obs: Observations, key: str, restart: bool) -> dict | None:
    """Load a finished stage's parameters when they were made from these observations and settings;
    None: run the stage."""
    if restart or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("key") != key:
        return None  # other frames, landmarks or settings: redo
    params.load_state_dict(state["params"])
    return state["result"]
