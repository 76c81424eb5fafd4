"""Issue 12's table: every bad input a user can give the scripts, with the exit code, the first line of the
message and what was on disk before and after (CPU, a small synthetic subject in a temporary folder).

    python bench/reliability_table.py [--work /tmp/reliability]

Each case runs the real script in a subprocess on a fresh copy of the subject and run folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL = ["--device", "cpu", "--backend", "torch", "--hidden_dim", "32", "--hidden_layers", "2", "--uv_size",
         "16", "--test_num", "4", "--eval_num", "4", "--lambda_lpips", "0", "--grid_every", "0"]


def listing(run: Path) -> str:
    """What the run folder holds that matters: checkpoints, frames folders, the log, stray files."""
    if not run.is_dir():
        return "no run folder"
    parts = sorted(p.name for p in (run / "ckpt").glob("*")) if (run / "ckpt").is_dir() else []
    parts += sorted(p.name + "/" for p in run.iterdir() if p.is_dir() and p.name.startswith("frames"))
    parts += sorted(p.name for p in run.iterdir() if p.name in ("train_log.json", ".lock", "results.json"))
    parts += sorted(p.name for p in run.rglob(".*.tmp"))
    return ", ".join(parts) or "empty"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="reliability_"))
    from preprocessing.synthetic_subject import make_synthetic_subject
    from scene.data.tracking import load_tracked_frame, save_tracked_frame

    base = work / "base"
    if not (base / "data" / "s").is_dir():
        make_synthetic_subject(base / "data", base / "track", "s", n_frames=12, image_size=48, seed=0,
                               resolution=16)
    env = os.environ | {"GAUSSIAN_NO_DOWNLOAD": "1", "TORCH_HOME": str(work / "empty_torch_home")}
    rows = []

    def case(name: str, script: str, extra: list[str], setup=None, preexec=None,
             signal_after: float | None = None, trained: bool = True) -> None:
        root = work / name.replace(" ", "_").replace("/", "_")
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(base, root)
        data, track, logs = root / "data", root / "track", root / "logs"
        run = logs / "s_baseline"
        common = ["--idname", "s", "--data_root", str(data), "--tracking_root", str(track), "--log_root",
                  str(logs)]
        if trained:
            subprocess.run([sys.executable, str(REPO / "train.py"), *common, *SMALL, "--iterations", "4",
                            "--skip_test"], env=env, capture_output=True, check=True)
        if setup is not None:
            setup(root, data / "s", track / "s" / "checkpoint", run)
        before = listing(run)
        cmd = [sys.executable, str(REPO / script)]
        if script == "train.py":
            cmd += [*common, *SMALL]
        elif script == "render.py":
            cmd += ["-m", str(run), "--device", "cpu", "--no_video"]
        elif script == "preprocessing/validate.py":
            cmd = [sys.executable, "-m", "preprocessing.validate", "--idname", "s", "--data_root", str(data),
                   "--tracking_root", str(track)]
        cmd += [a.replace("{run}", str(run)).replace("{root}", str(root)) for a in extra]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=preexec)
        if signal_after is not None:
            time.sleep(signal_after)
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=600)
        text = [x.strip() for x in (err + "\n" + out).replace("\r", "\n").splitlines()]
        lines = [x for x in text if ": error:" in x or x.startswith("PROBLEM:")]
        lines += [x for x in text
                  if x.startswith(("train.py:", "render.py:", "metrics.py:", "[train] interrupted"))]
        first = lines[0] if lines else (err.strip().splitlines() or ["(no message)"])[-1]
        tb = " (traceback!)" if "Traceback" in err else ""
        rows.append((name, f"{script} {' '.join(extra)}".strip(), proc.returncode, first[:230] + tb, before,
                     listing(run)))
        print(f"{name}: exit {proc.returncode}: {first[:120]}", flush=True)

    def nan_frame(root, subj, tracks, run):
        f = load_tracked_frame(tracks / "00003.frame")
        save_tracked_frame(tracks / "00003.frame", shape=f.shape.numpy(),
                           expression=f.expression.numpy() * 0 + 1e30, R=f.R.numpy(), t=f.t.numpy(),
                           K=f.K.numpy(), img_size=f.img_size, jaw=f.jaw.numpy(), eyes=f.eyes.numpy(),
                           eyelids=f.eyelids.numpy(), frame_id=3)

    def truncated_png(root, subj, tracks, run):
        img = subj / "imgs" / "00005.png"
        img.write_bytes(img.read_bytes()[:100])

    def no_image(root, subj, tracks, run):
        (subj / "imgs" / "00007.png").unlink()

    def no_flame(root, subj, tracks, run):
        (subj / "flame" / "generic_model.pkl").unlink()

    def locked(root, subj, tracks, run):
        (run / ".lock").write_text(f"1 {os.uname().nodename}\n")

    def nan_ckpt(root, subj, tracks, run):
        import torch

        state = torch.load(run / "ckpt" / "ckpt4.pth", weights_only=False)
        key = next(iter(state["gaussians"]))
        state["gaussians"][key] = torch.full_like(state["gaussians"][key], float("nan"))
        torch.save(state, root / "nan.pth")

    def rendered(root, subj, tracks, run):
        subprocess.run([sys.executable, str(REPO / "render.py"), "-m", str(run), "--device", "cpu",
                        "--no_video", "--rotate", "--rotate_frames", "2"], env=env, capture_output=True,
                       check=True)

    def full_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    case("loss overflows (NaN/Inf)", "train.py", ["--iterations", "8", "--resume", "--skip_test",
                                                  "--lambda_opacity_reg", "1e39", "--log_every", "2"])
    case("expression 1e30 in a .frame", "train.py", ["--iterations", "2"], nan_frame, trained=False)
    case("truncated PNG, --preload none", "train.py", ["--iterations", "2", "--preload", "none"],
         truncated_png, trained=False)
    case("truncated PNG", "preprocessing/validate.py", [], truncated_png, trained=False)
    case("tracked frame without image", "train.py", ["--iterations", "2"], no_image, trained=False)
    case("no generic_model.pkl", "preprocessing/validate.py", [], no_flame, trained=False)
    case("second writer (live .lock)", "train.py", ["--iterations", "2", "--resume"], locked)
    case("fresh run into a used folder", "train.py", ["--iterations", "2"])
    case("--eval_num above --test_num", "train.py", ["--eval_num", "9"], trained=False)
    case("full disk at a checkpoint", "train.py", ["--iterations", "8", "--resume", "--skip_test",
                                                   "--ckpt_every", "8"], preexec=full_disk)
    case("Ctrl-C during training", "train.py", ["--iterations", "100000", "--resume", "--skip_test"],
         signal_after=12.0)
    case("NaN checkpoint", "render.py", ["--checkpoint", "{root}/nan.pth"], nan_ckpt)
    case("metrics of a turntable", "metrics.py", ["-m", "{run}/frames_rotate", "--no_lpips"], rendered)

    print("\n| input | command | exit | first line of the message | on disk before | after |")
    print("| --- | --- | ---: | --- | --- | --- |")
    for name, cmd, rc, first, before, after in rows:
        print(f"| {name} | `{cmd}` | {rc} | {first} | {before} | {after} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
