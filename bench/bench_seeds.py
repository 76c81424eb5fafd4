"""Held-out quality over seeds: how much a method's result depends on its random start (issue 11).

Makes (once) a synthetic subject with a novel-view split, trains every requested run kind for every seed
with the same schedule, and reports the held-out masked PSNR / SSIM on the whole test split per seed with
mean and standard deviation, and the PSNR of every novel view (the test frames' expressions seen with the
head turned by yaw +-15/30/45 and pitch +-15 degrees). Kinds: ``baseline`` (zero-offset start, the
default), ``baseline_original`` (``--original_init``, PyTorch's random start as in the original code),
``ours`` (HyperGaussians); ``<kind>+<flag>`` adds a train.py flag (``baseline+--lambda_opacity_reg=0.1``).
Results go to ``--out`` after every run, so a run cut short keeps what it finished. ``--paired KIND``
adds every other kind minus KIND seed by seed (a fast path against its plain one: issue 13's "quality must
not move"). ``--merge A.json B.json`` trains nothing: it joins the runs of earlier ``--out`` files (seeds
run in separate calls) into one summary.

    python bench/bench_seeds.py --device cuda --frames 300 --size 512 --test_num 100 --novel_views 30 \\
        --iterations 10000 --seeds 0 1 2 3 --kinds baseline baseline_original ours --out seeds.json
    python bench/bench_seeds.py --device cpu --frames 40 --size 64 --test_num 8 --novel_views 4 \\
        --iterations 300 --seeds 0 1 --model_size demo               # a smoke run on a CPU
    L=+--lambda_lpips=0.05+--lpips_start=9000  # the runs use no LPIPS unless a kind turns it on
    P="ours+--precision=fp32+--no_fused_kernels$L"  # the plain path, against the default fast one
    python bench/bench_seeds.py --iterations 10000 --seeds 0 1 2 3 --no_novel --kinds "$P" "ours$L" \
        --paired "$P"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from preprocessing.synthetic_subject import make_synthetic_subject, read_marker  # noqa: E402
from scene.rendering import Renderer  # noqa: E402
from scene.trainer import Trainer  # noqa: E402
from utils.atomic import write_json  # noqa: E402
from utils.frame_metrics import evaluate_novel_views  # noqa: E402
from utils.options import parse_render_args, parse_train_args  # noqa: E402

KIND_FLAGS = {"baseline": [], "baseline_original": ["--original_init"], "ours": ["--ours"]}


def kind_flags(kind: str) -> list[str]:
    base, *extra = kind.split("+")
    if base not in KIND_FLAGS:
        raise SystemExit(f"unknown kind {kind!r}: use {sorted(KIND_FLAGS)} with optional +--flag=value")
    return KIND_FLAGS[base] + [x for e in extra for x in e.split("=", 1)]


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def paired_differences(runs: dict[str, dict], reference: str, kind: str) -> dict | None:
    """``kind`` minus ``reference`` in test PSNR seed by seed, over the seeds both finished: a fast path
    against its plain one starts from the same random state, so the per-seed differences take out the part
    of the seed-to-seed spread that the start decides. Training on a GPU is not bit-exact, and what that
    leaves is not small: two runs of one configuration from one seed differed by sd 0.46 dB (HyperGaussians,
    10k iterations, H200, session 23). -> {seeds, per_seed, mean, sd, se} (se: sd / sqrt(n)), or None
    without a common seed."""
    ref = {r["seed"]: r["PSNR"] for r in runs.values() if r["kind"] == reference}
    other = {r["seed"]: r["PSNR"] for r in runs.values() if r["kind"] == kind}
    seeds = sorted(set(ref) & set(other))
    if not seeds:
        return None
    diffs = [other[k] - ref[k] for k in seeds]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return {"seeds": seeds, "per_seed": diffs, "mean": statistics.mean(diffs), "sd": sd,
            "se": sd / len(diffs) ** 0.5}


def summarize(runs: dict[str, dict], kinds: list[str], paired: str | None) -> dict:
    """Per kind with finished runs: test PSNR / SSIM mean and sd, PSNR per seed, novel-view PSNR means;
    with ``paired``, each other kind's :func:`paired_differences` against it (``minus_<paired>``)."""
    summary = {}
    for kind in kinds:
        done = sorted((r for r in runs.values() if r["kind"] == kind), key=lambda r: r["seed"])
        if not done:
            continue
        novel = [r["novel_PSNR"] for r in done if r["novel_PSNR"]]  # runs cut short have none
        views = list(novel[0]) if novel else []
        summary[kind] = {"PSNR": mean_sd([r["PSNR"] for r in done]),
                         "SSIM": mean_sd([r["SSIM"] for r in done]),
                         "PSNR_per_seed": [round(r["PSNR"], 2) for r in done],
                         "novel_PSNR": {v: mean_sd([n[v] for n in novel]) for v in views}}
        if paired and kind != paired:
            summary[kind]["minus_" + paired] = paired_differences(runs, paired, kind)
    return summary


def print_summary(summary: dict, paired: str | None) -> None:
    """One line per kind (test PSNR mean +- sd, per seed, SSIM, novel views) and per paired difference."""
    for kind, s in summary.items():
        novel = ", ".join(f"{v} {m['mean']:.2f}" for v, m in s["novel_PSNR"].items())
        novel = f"; novel views: {novel}" if novel else ""
        print(f"{kind:>20}: test PSNR {s['PSNR']['mean']:.2f} +- {s['PSNR']['sd']:.2f} (seeds "
              f"{s['PSNR_per_seed']}), SSIM {s['SSIM']['mean']:.4f}{novel}")
        d = s.get("minus_" + str(paired))
        if d is not None:
            per_seed = ", ".join(f"{x:+.3f}" for x in d["per_seed"])
            print(f"{kind} - {paired}: test PSNR {d['mean']:+.3f} dB (sd {d['sd']:.3f}, "
                  f"se {d['se']:.3f}; seeds {d['seeds']}: {per_seed})")


# Settings that decide a run's result: files merged must agree on them.
SCHEDULE = ("frames", "size", "test_num", "novel_views", "iterations", "model_size", "device")
RUN_KEYS = {"kind", "seed", "PSNR", "SSIM"}


def read_out_file(path: Path) -> tuple[dict, dict, dict]:
    """(file, runs, settings) of a ``--out`` file; SystemExit naming the file where it is not one."""
    try:
        part = json.loads(Path(path).read_text())
        runs, settings = part["runs"], part["settings"]
        if not isinstance(runs, dict) or not isinstance(settings, dict):
            raise TypeError("'runs' and 'settings' must be objects")
        for name, run in runs.items():
            if not isinstance(run, dict) or not RUN_KEYS <= set(run):
                raise KeyError(f"run {name!r} lacks one of {sorted(RUN_KEYS)}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--merge: {path} is not a bench_seeds.py --out file ({exc})") from exc
    return part, runs, settings


def merge_results(paths: list[Path], paired: str | None) -> dict:
    """The runs of earlier ``--out`` files joined (seeds run in separate calls; a later file's run of the
    same kind and seed replaces an earlier one) and summarized with their kinds, in first-seen order, and
    ``paired`` (else the first ``--paired`` a file names). The files must share their schedule
    (:data:`SCHEDULE`): a pair from another schedule would compare unlike with like."""
    runs: dict[str, dict] = {}
    kinds: list[str] = []
    devices: list[str] = []
    schedule: dict | None = None
    for path in paths:
        part, part_runs, settings = read_out_file(path)
        this = {k: settings.get(k) for k in SCHEDULE}
        if schedule is None:
            schedule = this
        elif this != schedule:
            differ = ", ".join(f"{k} {this[k]!r} (first file {schedule[k]!r})" for k in SCHEDULE
                               if this[k] != schedule[k])
            raise SystemExit(f"--merge: {path} ran another schedule: {differ}")
        runs.update(part_runs)
        kinds += [k for k in settings.get("kinds", []) if k not in kinds]
        devices += [part.get("device")] if part.get("device") not in devices else []
        if paired is None:
            paired = settings.get("paired")
    if paired is not None and paired not in kinds:
        raise SystemExit(f"--merge: --paired {paired!r} is not one of the merged kinds {kinds}")
    return {"device": ", ".join(map(str, devices)), "merged": [str(p) for p in paths],
            "settings": (schedule or {}) | {"kinds": kinds, "paired": paired}, "runs": runs,
            "summary": summarize(runs, kinds, paired)}

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--test_num", type=int, default=100)
    ap.add_argument("--novel_views", type=int, default=30, help="test frames with novel views (the last N)")
    ap.add_argument("--iterations", type=int, default=10000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--kinds", nargs="+", default=["baseline", "baseline_original", "ours"])
    ap.add_argument("--model_size", choices=["demo", "full"], default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", type=Path, default=REPO / ".devbuild" / "seeds")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--paired", metavar="KIND", default=None,
                    help="also report every other kind minus KIND in test PSNR, seed by seed (a fast path "
                         "against its plain one)")
    ap.add_argument("--no_novel", action="store_true", help="skip the novel-view renders and their PSNR")
    ap.add_argument("--subject_only", action="store_true",
                    help="make the subject (where --work lacks it) and stop: for runs side by side")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON", default=None,
                    help="train nothing: join the runs of earlier --out files (seeds run in separate calls), "
                         "print their summary (with --paired, else the first file's) and write it to --out")
    args = ap.parse_args(argv)
    if args.merge:
        merged = merge_results(args.merge, args.paired)
        print_summary(merged["summary"], merged["settings"]["paired"])
        if args.out:
            write_json(args.out, merged)
        return
    if args.paired is not None and args.paired not in args.kinds:
        ap.error(f"--paired {args.paired!r} is not one of --kinds {args.kinds}")

    data, track = args.work / "data", args.work / "track"
    want = {"n_frames": args.frames, "image_size": args.size, "novel_views": args.novel_views}
    marker = read_marker(data / "s") or {}
    if not marker.get("complete") or any(marker.get(k) != v for k, v in want.items()):
        t0 = time.perf_counter()
        make_synthetic_subject(data, track, "s", n_frames=args.frames, image_size=args.size, seed=0,
                               novel_views=args.novel_views)
        print(f"subject: {args.frames} frames + novel views at {args.size} px in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    if args.subject_only:
        return
    demo_model = ["--uv_size", "64", "--hidden_dim", "128", "--hidden_layers", "4"]
    model = demo_model if args.model_size == "demo" else []
    result: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
                    "settings": vars(args) | {"work": str(args.work), "out": str(args.out)}, "runs": {},
                    "summary": {}}

    def record(name: str, run: dict) -> None:  # the summary and --out rewritten after every run
        result["runs"][name] = run
        result["summary"] = summarize(result["runs"], args.kinds, args.paired)
        if args.out:
            write_json(args.out, result)

    for seed in args.seeds:  # seeds outer: a call cut short keeps whole pairs (--paired)
        for kind in args.kinds:
            name = f"{kind}_seed{seed}".replace("+", "_").replace("=", "").replace("--", "")
            argv = ["--idname", "s", "--data_root", str(data), "--tracking_root", str(track),
                    "--log_root", str(args.work / "logs"), "--logname", name,
                    "--test_num", str(args.test_num), "--eval_num", str(args.test_num),
                    "--iterations", str(args.iterations), "--eval_every", "0", "--lambda_lpips", "0",
                    "--grid_every", "0", "--ckpt_every", "0", "--seed", str(seed), "--overwrite",
                    "--device", args.device, *model, *kind_flags(kind)]
            t0 = time.perf_counter()
            trainer = Trainer(parse_train_args(argv))
            res = trainer.run()
            train_s = time.perf_counter() - t0
            run = {"kind": kind, "seed": seed, "PSNR": res["PSNR"], "SSIM": res["SSIM"], "train_s": train_s,
                   "novel_PSNR": None}
            record(name, run)  # kept if the call ends here
            if args.no_novel or not args.novel_views:
                print(json.dumps(run), flush=True)
                continue
            renderer = Renderer(parse_render_args(["-m", str(trainer.run_dir), "--novel_views", "--device",
                                                   args.device]))
            renderer.run()
            novel = evaluate_novel_views(trainer.run_dir / "frames_novel_views", None, "not computed",
                                         torch.device(args.device), progress=False)
            run = run | {"novel_PSNR": {v: r["PSNR"] for v, r in novel.items()}}
            record(name, run)
            print(json.dumps(run), flush=True)
    print_summary(result["summary"], args.paired)


if __name__ == "__main__":
    main()
