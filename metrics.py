"""Masked PSNR / SSIM / LPIPS of rendered frames (docs/maths.md section 10).

    python metrics.py -m logs/nf_01_ours [more run folders or frames folders ...]

Reads ``DIR/frames/{renders,gt,mask}/NNNNN.png`` (or ``DIR/{renders,gt,mask}`` when DIR is itself a
frames folder), multiplies render and ground truth by the mask, and writes ``DIR/results.json`` (means)
and ``DIR/per_view.json`` (per image). LPIPS is the plain LPIPS-VGG value; the original script's
x0.05 value is reported separately under ``LPIPS_x0.05_original_scale``. Without the VGG weights LPIPS
is null and the reason is written next to it.
"""

from __future__ import annotations

import sys

from utils.options import parse_metrics_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_metrics_args(argv)  # --help answers here, before torch is imported
    from utils.device import resolve_device
    from utils.errors import InputError, one_line
    from utils.frame_metrics import evaluate_model_dir, summary_line
    from utils.lpips_loader import try_load_lpips_vgg

    device = resolve_device(cfg.device)
    missing = [d for d in cfg.model_dirs if not d.is_dir()]
    if missing:
        print(f"metrics.py: not a folder: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    if cfg.no_lpips:
        lpips_model, reason = None, "LPIPS skipped: --no_lpips was given"
    else:
        lpips_model, reason = try_load_lpips_vgg(device)
        if reason is not None:
            print(f"metrics.py: {reason}", file=sys.stderr)
    status = 0
    for model_dir in cfg.model_dirs:
        try:
            res = evaluate_model_dir(model_dir, lpips_model, reason, device)
        except (InputError, OSError) as exc:  # one line per folder; the other folders still count
            print(f"metrics.py: {one_line(exc)}", file=sys.stderr)
            status = 2
            continue
        print(summary_line(model_dir, res))
    return status


if __name__ == "__main__":
    sys.exit(main())
