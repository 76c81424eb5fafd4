"""Masked PSNR / SSIM / LPIPS of a rendered frames folder (docs/maths.md section 10), the work of
``metrics.py``: find the folder, check it has ground truth, score every view, write the JSON files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.atomic import write_json
from utils.errors import InputError
from utils.image_io import read_image, read_mask
from utils.image_metrics import masked, psnr, ssim
from utils.lpips_loader import LPIPSVGG
from utils.prefetch import prefetched

LPIPS_ORIGINAL_SCALE = 0.05
LPIPS_ORIGINAL_KEY = "LPIPS_x0.05_original_scale"


class MetricsInputError(InputError):
    """A model folder without the renders / gt / mask images metrics.py needs."""


def find_frames_dir(model_dir: Path) -> Path:
    """``model_dir/frames`` when it holds renders/, else ``model_dir`` itself when it does."""
    for cand in (model_dir / "frames", model_dir):
        if (cand / "renders").is_dir():
            return cand
    raise MetricsInputError(f"{model_dir}: no renders/ folder in {model_dir / 'frames'} or {model_dir}; "
                            "run render.py for this model first (it writes frames/{renders,gt,mask}/)")


def read_frame_map(frames_dir: Path) -> dict:
    """The folder's frame_map.json (render.py's record of mode, checkpoint and frames); {} when absent.
    Refuses a folder whose renders have no ground truth (turned views, another subject's motion,
    visualisations): scoring them against the subject's frames would be meaningless."""
    fmap = frames_dir / "frame_map.json"
    if not fmap.is_file():
        return {}  # a folder not written by render.py: judged by its gt/ and mask/ alone
    try:
        info = json.loads(fmap.read_text())
    except (OSError, ValueError) as exc:
        raise MetricsInputError(f"{fmap} cannot be read ({exc}); re-render with render.py") from exc
    if info.get("has_ground_truth") is False:
        mode = info.get("mode", frames_dir.name)
        raise MetricsInputError(f"{frames_dir} holds '{mode}' renders, which have no ground truth; metrics "
                                "score the plain test split: run render.py without --rotate/--cross/"
                                "--uncertainty/--error and pass the run folder")
    return info


def list_views(frames_dir: Path) -> list[str]:
    """Names of the PNGs in renders/ that have a gt/ and mask/ partner; missing partners are an error."""
    names = sorted(p.name for p in (frames_dir / "renders").glob("*.png"))
    if not names:
        raise MetricsInputError(f"{frames_dir / 'renders'}: no PNG images; run render.py first")
    for sub in ("gt", "mask"):
        missing = [n for n in names if not (frames_dir / sub / n).is_file()]
        if missing:
            raise MetricsInputError(
                f"{frames_dir / sub}: {len(missing)} of {len(names)} images missing (first: {missing[0]}); "
                "metrics need ground truth and masks: render the test split (not --cross without gt)")
    return names


def evaluate_views(frames_dir: Path, names: list[str], lpips_model: LPIPSVGG | None,
                   device: torch.device, progress: bool = True) -> dict[str, dict[str, float | None]]:
    """Per-view PSNR, SSIM, LPIPS on mask-multiplied images read back from the PNGs."""
    keys = ("SSIM", "PSNR", "LPIPS", LPIPS_ORIGINAL_KEY)
    per_view: dict[str, dict[str, float | None]] = {k: {} for k in keys}

    def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (read_image(frames_dir / "renders" / name), read_image(frames_dir / "gt" / name),
                read_mask(frames_dir / "mask" / name))

    views = prefetched(load, names)  # PNG decoding (zlib releases the GIL) overlaps the metrics
    for name, (r_np, g_np, m_np) in tqdm(zip(names, views), total=len(names), desc=f"metrics {frames_dir}",
                                         disable=not progress):
        render = torch.from_numpy(r_np).permute(2, 0, 1).to(device)
        gt = torch.from_numpy(g_np).permute(2, 0, 1).to(device)
        mask = torch.from_numpy(m_np).to(device)
        if render.shape != gt.shape or render.shape[1:] != mask.shape:
            raise MetricsInputError(f"{frames_dir}/{{renders,gt,mask}}/{name}: sizes differ "
                                    f"({tuple(render.shape)}, {tuple(gt.shape)}, {tuple(mask.shape)})")
        r, g = masked(render, mask), masked(gt, mask)
        per_view["PSNR"][name] = float(psnr(r, g))
        per_view["SSIM"][name] = float(ssim(r, g))
        if lpips_model is not None:
            with torch.no_grad():
                value = float(lpips_model(r, g))
            per_view["LPIPS"][name] = value
            per_view[LPIPS_ORIGINAL_KEY][name] = value * LPIPS_ORIGINAL_SCALE
        else:
            per_view["LPIPS"][name] = None
            per_view[LPIPS_ORIGINAL_KEY][name] = None
    return per_view


def summarise(per_view: dict[str, dict[str, float | None]], lpips_reason: str | None) -> dict:
    """Means of the per-view values (PSNR mean over views in dB, as the original)."""
    def mean(values: dict[str, float | None]) -> float | None:
        vals = [v for v in values.values() if v is not None]
        return float(np.mean(vals)) if vals and len(vals) == len(values) else None

    out: dict = {key: mean(per_view[key]) for key in ("SSIM", "PSNR", "LPIPS", LPIPS_ORIGINAL_KEY)}
    out["num_views"] = len(per_view["PSNR"])
    out["notes"] = ("All metrics on mask-multiplied images read back from the PNGs. LPIPS is the plain "
                    f"LPIPS-VGG value; {LPIPS_ORIGINAL_KEY} is it times 0.05, the scale the original "
                    "FlashAvatar script reports.")
    if lpips_reason is not None:
        out["LPIPS_unavailable_reason"] = lpips_reason
    return out


def evaluate_model_dir(model_dir: Path, lpips_model: LPIPSVGG | None, lpips_reason: str | None,
                       device: torch.device, progress: bool = True) -> dict:
    """Compute and write ``results.json`` and ``per_view.json`` for one folder; returns the results."""
    frames_dir = find_frames_dir(model_dir)
    info = read_frame_map(frames_dir)
    names = list_views(frames_dir)
    t0 = time.perf_counter()
    per_view = evaluate_views(frames_dir, names, lpips_model, device, progress)
    results = summarise(per_view, lpips_reason)
    results["seconds"] = round(time.perf_counter() - t0, 3)
    results["frames_dir"] = str(frames_dir)
    results["checkpoint"], results["iteration"] = info.get("checkpoint"), info.get("iteration")
    novel = evaluate_novel_views(model_dir / NOVEL_FRAMES_DIR, lpips_model, lpips_reason, device, progress)
    if novel:
        results["novel_views"] = novel
    write_json(model_dir / "per_view.json", per_view)
    write_json(model_dir / "results.json", results)
    return results


NOVEL_FRAMES_DIR = "frames_novel_views"  # render.py --novel_views: one sub-folder per view


def evaluate_novel_views(folder: Path, lpips_model: LPIPSVGG | None, lpips_reason: str | None,
                         device: torch.device, progress: bool = True) -> dict:
    """{view: PSNR / SSIM / LPIPS means, its yaw and pitch, frame count} of render.py --novel_views'
    output, ordered by yaw then pitch; {} when there is none."""
    if not folder.is_dir():
        return {}
    out = {}
    for view_dir in sorted(p for p in folder.iterdir() if (p / "renders").is_dir()):
        info = read_frame_map(view_dir)
        res = summarise(evaluate_views(view_dir, list_views(view_dir), lpips_model, device, progress),
                        lpips_reason)
        res.pop("notes", None)
        out[view_dir.name] = {"yaw_deg": info.get("yaw_deg"), "pitch_deg": info.get("pitch_deg"), **res}
    return dict(sorted(out.items(), key=lambda kv: (kv[1]["yaw_deg"] or 0.0, kv[1]["pitch_deg"] or 0.0)))


def summary_line(model_dir: Path, res: dict) -> str:
    """The console line of one folder's results (LPIPS null when it was not computed)."""
    lp = "null" if res["LPIPS"] is None else f"{res['LPIPS']:.4f}"
    ckpt = f", checkpoint {res['checkpoint']}" if res.get("checkpoint") else ""
    line = (f"{model_dir}: PSNR {res['PSNR']:.3f}  SSIM {res['SSIM']:.4f}  LPIPS {lp}  "
            f"({res['num_views']} views in {res.get('seconds', float('nan')):.2f} s{ckpt}) -> "
            f"{model_dir / 'results.json'}")
    for name, v in res.get("novel_views", {}).items():
        line += (f"\n  novel view {name:>9}: PSNR {v['PSNR']:.3f}  SSIM {v['SSIM']:.4f}  "
                 f"({v['num_views']} frames)")
    return line
