"""Issue 13's speed figures in one table, against their targets, with the device and the commit.

Each stage runs the project's own benchmark or command-line script on the GPU and writes
``<out>/<stage>.json`` as soon as it has its figures (so a call cut short keeps what it finished); the
table gathers every figure found in ``--out`` and the ``--merge`` folders (figures from earlier calls), prints
it and writes ``<out>/speed_table.json``. Stages:

- ``raster``: bench_rasterizer.py on the raster oracle scene (CUDA extension: captured fixed-capacity
  calls, as training and inference run it, against the target; the eager ``render_cuda`` call beside);
- ``lpips``: bench_lpips.py, LPIPS-VGG forward+backward at 512x512 per precision (a seeded random VGG16
  when the real weights are not in torch's hub cache: the cost does not depend on the weights' values);
- ``steps``: bench_train_step.py per method, without and with the LPIPS term, and inference (FLAME + head +
  rasterizer, CUDA graph, synced, no I/O) on the avatar it trained a hundred-odd steps: a sequence of frames
  (the whole-frame graph's stream: each frame's pair count read back one frame behind) and the latency of
  one frame waited for;
- ``render``: train.py 2000 iterations on a 600-frame subject, then ``render.py`` (500 test frames, PNGs and
  mp4) and ``metrics.py`` on them;
- ``memory``: peak GPU memory of train.py on a 2000-frame subject with the frames cached on the GPU;
- ``train``: ``train.py --iterations 30000`` wall clock (LPIPS from 15000, evaluation off) per method, then
  bench_inference.py's inference on each trained avatar's test split (what render.py and the viewer draw:
  a trained avatar's Gaussian sizes set the rasterizer's share of a frame).

    python bench/speed_table.py --out speed --stages raster lpips steps render memory train
    python bench/speed_table.py --out table --table_only --merge call1/ call2/    # the table only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.atomic import write_json  # noqa: E402

STAGES = ("raster", "lpips", "steps", "render", "memory", "train")
METHODS = ("baseline", "ours")
SIZE = 512


def _method_flags(method: str) -> list[str]:
    return ["--ours"] if method == "ours" else []


class Runner:
    """Runs the stages' commands from the repository root; logs go to ``<work>/logs``."""

    def __init__(self, work: Path, out: Path, precision: str, device: str, commit: str,
                 train_frames: int = 600) -> None:
        self.work, self.out, self.precision = work, out, precision
        self.train_frames = train_frames
        self.stamp = {"device": device, "commit": commit}
        self.logs = work / "logs_speed"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.roots = ["--data_root", str(work / "ds"), "--tracking_root", str(work / "tr")]

    def run(self, name: str, argv: list[str], env: dict | None = None) -> tuple[str, float]:
        """Run ``python argv`` and return (its output, wall seconds); a failure stops with its log's tail."""
        log = self.logs / f"{name}.log"
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            rc = subprocess.call([sys.executable, *argv], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        seconds = time.perf_counter() - t0
        text = log.read_text(errors="replace")
        if rc != 0:
            raise SystemExit(f"speed_table: {name} failed (exit {rc}); the end of {log}:\n{text[-2000:]}")
        return text, seconds

    def subject(self, idname: str, frames: int) -> None:
        """A synthetic subject of ``frames`` frames at 512x512 (made once)."""
        marker = self.work / "ds" / idname / "synthetic.json"
        if not (marker.is_file() and json.loads(marker.read_text()).get("complete")):
            self.run(f"subject_{idname}", ["-m", "preprocessing.synthetic_subject", "--idname", idname,
                                           *self.roots, "--frames", str(frames), "--size", str(SIZE)])

    def lpips_home(self) -> dict:
        """TORCH_HOME with VGG16 weights: the real ones when the hub cache has them, else seeded random."""
        sys.path.insert(0, str(REPO / "bench"))
        from bench_lpips import write_random_vgg

        from utils.lpips_loader import VGG16_FILENAME

        hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        if (hub / "hub" / "checkpoints" / VGG16_FILENAME).is_file():
            return {"TORCH_HOME": str(hub), "vgg": "torchvision VGG16"}
        home = self.work / "vgg_home"
        if not (home / "hub" / "checkpoints" / VGG16_FILENAME).is_file():
            write_random_vgg(home)
        return {"TORCH_HOME": str(home), "vgg": "random (seed 0): timing only"}

    def save(self, stage: str, figures: dict) -> None:
        write_json(self.out / f"{stage}.json", {**figures, **self.stamp})
        print(f"[speed_table] {stage}: {json.dumps(figures)}", flush=True)

    # -- stages -------------------------------------------------------------------------------------
    def stage_raster(self) -> None:
        raw = self.work / "raster_raw.json"
        self.run("raster", ["bench/bench_rasterizer.py", "--skip-torch", "--json", str(raw)])
        rows = {r["backend"]: r for r in json.loads(raw.read_text())["rows"]}
        eager, graph = rows["cuda (render_cuda)"], rows["cuda graph (capacity)"]
        self.save("raster", {"forward_ms": graph["forward_ms"],
                             "forward_backward_ms": graph["forward_backward_ms"],
                             "eager_forward_ms": eager["forward_ms"],
                             "eager_forward_backward_ms": eager["forward_backward_ms"]})

    def stage_lpips(self) -> None:
        home = self.lpips_home()
        raw = self.work / "lpips_raw.json"
        self.run("lpips", ["bench/bench_lpips.py", "--json", str(raw)], {"TORCH_HOME": home["TORCH_HOME"]})
        res = json.loads(raw.read_text())["results"]
        keep = ("fwd_bwd_ms", "fwd_bwd_ms_cuda_graph", "value_rel_diff", "grad_cosine",
                "cuda_graph_grad_rel_diff", "cuda_graph_grad_cosine")
        self.save("lpips", {"vgg": home["vgg"], **{p: {k: r[k] for k in keep} for p, r in res.items()}})

    def stage_steps(self) -> None:
        self.subject("s16", 16)
        home = self.lpips_home()
        figures: dict = {"precision": self.precision, "vgg": home["vgg"]}
        for method in METHODS:
            for lpips in (False, True):
                raw = self.work / f"step_{method}_{int(lpips)}.json"
                self.run(f"step_{method}_{int(lpips)}",
                         ["bench/bench_train_step.py", "--idname", "s16", *self.roots, "--test_num", "4",
                          "--eval_num", "4", *_method_flags(method), "--precision", self.precision,
                          "--steps", "100", "--warmup", "20", "--json", str(raw),
                          *(["--with_lpips"] if lpips else [])], {"TORCH_HOME": home["TORCH_HOME"]})
                res = json.loads(raw.read_text())
                figures[f"{method}_step_ms" + ("_lpips" if lpips else "")] = res["step_ms"]
                if not lpips:
                    figures |= _inference_figures(res["inference_ms"], f"{method}_")
                self.save("steps", figures)

    def train(self, name: str, idname: str, method: str, *extra: str) -> tuple[str, float]:
        """train.py on subject ``idname`` with ``method``'s flag, evaluation off, into <work>/logs."""
        home = self.lpips_home()
        argv = ["train.py", "--idname", idname, *self.roots, "--log_root", str(self.work / "logs"),
                *_method_flags(method), "--skip_test", "--overwrite", "--precision", self.precision, *extra]
        return self.run(name, argv, {"TORCH_HOME": home["TORCH_HOME"]})

    def stage_render(self) -> None:
        self.subject("s600", 600)
        figures: dict = {}
        for method in METHODS:
            run_dir = self.work / "logs" / f"s600_{method}"
            self.train(f"train2k_{method}", "s600", method, "--test_num", "500", "--eval_num", "50",
                       "--iterations", "2000", "--lambda_lpips", "0")
            text, wall = self.run(f"render_{method}", ["render.py", "-m", str(run_dir)])
            found = re.search(r"(\d+) frames rendered and written in ([0-9.]+) s", text)
            if found is None:
                raise SystemExit(f"speed_table: render.py printed no timing line; see {self.logs}")
            _, m_wall = self.run(f"metrics_{method}", ["metrics.py", "-m", str(run_dir)],
                                 {"TORCH_HOME": self.lpips_home()["TORCH_HOME"]})  # LPIPS scored too
            res = json.loads((run_dir / "results.json").read_text())
            figures[method] = {"frames": int(found.group(1)), "render_write_s": float(found.group(2)),
                               "render_process_s": wall, "metrics_s": res.get("seconds"),
                               "metrics_process_s": m_wall, "metrics_views": res.get("num_views")}
            self.save("render", figures)

    def stage_memory(self) -> None:
        self.subject("s600", 600)
        _link_subject(self.work, "s600", "s2000", 2000)
        figures: dict = {}
        for method in METHODS:
            text, _ = self.train(f"mem2000_{method}", "s2000", method, "--test_num", "100",
                                 "--eval_num", "10", "--preload", "device", "--iterations", "300",
                                 "--lpips_start", "100")
            found = re.search(r"peak GPU memory (\d+) MiB", text)
            figures[f"{method}_peak_mib"] = int(found.group(1)) if found else None
            self.save("memory", figures)

    def stage_train(self) -> None:
        n = self.train_frames
        self.subject(f"s{n}", n)
        figures: dict = {"precision": self.precision, "vgg": self.lpips_home()["vgg"], "frames": n}
        for method in METHODS:
            _, wall = self.train(f"train30k_{method}", f"s{n}", method, "--test_num", str(min(500, n // 4)),
                                 "--logname", f"full_{method}", "--iterations", "30000")
            figures[f"{method}_wall_s"] = wall
            run = self.work / "logs" / f"s{n}_full_{method}"
            figures[f"{method}_seconds"] = json.loads((run / "train_log.json").read_text()).get("seconds")
            # inference on the trained avatar (its test split), as render.py and the viewer draw it
            raw = self.work / f"infer30k_{method}.json"
            self.run(f"infer30k_{method}", ["bench/bench_inference.py", "-m", str(run), "--json", str(raw)])
            figures |= _inference_figures(json.loads(raw.read_text())["inference_ms"], f"{method}_trained_")
            self.save("train", figures)


def _inference_figures(inf: dict[str, float], prefix: str) -> dict[str, float]:
    """bench_inference's modes -> the table's figures: ``inference`` (a sequence of frames, the GPU's
    throughput: the whole-frame graph's stream where it ran, else the fastest path there was) and
    ``inference_latency`` (one frame, waited for: the whole-frame graph's call; without one, the per-frame
    time of the fastest path, which waits only at the end of a pass)."""
    seq = next(inf[k] for k in ("whole-frame CUDA graph, streamed", "whole-frame CUDA graph", "CUDA graph",
                                "eager") if k in inf)
    one = inf.get("whole-frame CUDA graph", seq)
    return {f"{prefix}inference_ms": seq, f"{prefix}inference_fps": 1000.0 / seq,
            f"{prefix}inference_latency_ms": one}


def _link_subject(work: Path, src: str, dst: str, frames: int) -> None:
    """A ``frames``-frame subject whose files are links to ``src``'s, cycled (memory needs only the count)."""
    s, d = work / "ds" / src, work / "ds" / dst
    ts, td = work / "tr" / src / "checkpoint", work / "tr" / dst / "checkpoint"
    if (d / "imgs" / f"{frames - 1:05d}.png").exists():
        return
    n = len(list((s / "imgs").glob("*.png")))
    for sub in ("imgs", "alpha", "parsing"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    td.mkdir(parents=True, exist_ok=True)
    if not (d / "flame").exists():
        os.symlink(s / "flame", d / "flame")
    for k in range(frames):
        a, b = f"{k % n:05d}", f"{k:05d}"
        pairs = [(s / sub / f"{a}{end}", d / sub / f"{b}{end}")
                 for sub, end in (("imgs", ".png"), ("alpha", ".png"), ("parsing", "_neckhead.png"),
                                  ("parsing", "_mouth.png"))]
        pairs.append((ts / f"{a}.frame", td / f"{b}.frame"))
        for target, link in pairs:
            if not link.exists():
                os.symlink(target, link)


# -- the table --------------------------------------------------------------------------------------
GB8_MIB = 8e9 / 2**20
# (figure, unit, where it is in the stage JSONs, target, sense); a target is a number, None (shown only), or
# (factor, where the baseline's figure is): "ours within 10% of the baseline"
ROWS: list[tuple] = [
    ("1. train.py 30k iterations, baseline (wall)", "s", ("train", "baseline_wall_s"), 90.0, "<="),
    ("1. train.py 30k iterations, ours (wall)", "s", ("train", "ours_wall_s"), 90.0, "<="),
    ("1. LPIPS-VGG fwd+bwd 512 px, tf32, CUDA graph", "ms", ("lpips", "tf32", "fwd_bwd_ms_cuda_graph"), 1.5,
     "<="),
    ("1. LPIPS-VGG fwd+bwd 512 px, bf16, CUDA graph", "ms", ("lpips", "bf16", "fwd_bwd_ms_cuda_graph"), 1.5,
     "<="),
    ("2. inference, baseline", "FPS", ("steps", "baseline_inference_fps"), 2500.0, ">="),
    ("2. inference, ours (within 10% of baseline)", "FPS", ("steps", "ours_inference_fps"),
     (0.9, ("steps", "baseline_inference_fps")), ">="),
    ("2. inference, baseline, 30k-trained avatar", "FPS", ("train", "baseline_trained_inference_fps"), 2500.0,
     ">="),
    ("2. inference, ours, 30k-trained avatar (within 10%)", "FPS", ("train", "ours_trained_inference_fps"),
     (0.9, ("train", "baseline_trained_inference_fps")), ">="),
    ("   inference latency (one frame, waited for), baseline", "ms",
     ("steps", "baseline_inference_latency_ms"), None, ""),
    ("   inference latency, ours", "ms", ("steps", "ours_inference_latency_ms"), None, ""),
    ("   inference latency, baseline, 30k-trained avatar", "ms",
     ("train", "baseline_trained_inference_latency_ms"), None, ""),
    ("   inference latency, ours, 30k-trained avatar", "ms", ("train", "ours_trained_inference_latency_ms"),
     None, ""),
    ("3. training step before LPIPS, baseline", "ms", ("steps", "baseline_step_ms"), 2.0, "<="),
    ("3. training step before LPIPS, ours (within 10%)", "ms", ("steps", "ours_step_ms"),
     (1.1, ("steps", "baseline_step_ms")), "<="),
    ("   training step with LPIPS, baseline", "ms", ("steps", "baseline_step_ms_lpips"), None, ""),
    ("   training step with LPIPS, ours", "ms", ("steps", "ours_step_ms_lpips"), None, ""),
    ("4. rasterizer forward, raster oracle scene, CUDA graph", "ms", ("raster", "forward_ms"), 0.2, "<="),
    ("4. rasterizer forward+backward, CUDA graph", "ms", ("raster", "forward_backward_ms"), 0.6, "<="),
    ("   rasterizer forward, eager render_cuda call", "ms", ("raster", "eager_forward_ms"), None, ""),
    ("   rasterizer forward+backward, eager", "ms", ("raster", "eager_forward_backward_ms"), None, ""),
    ("5. render.py 500 frames, PNGs + mp4, baseline", "s", ("render", "baseline", "render_write_s"), 5.0,
     "<="),
    ("5. render.py 500 frames, PNGs + mp4, ours", "s", ("render", "ours", "render_write_s"), 5.0, "<="),
    ("5. metrics.py 500 frames, baseline", "s", ("render", "baseline", "metrics_s"), 5.0, "<="),
    ("6. peak training memory, 2000 frames on the GPU, baseline", "MiB", ("memory", "baseline_peak_mib"),
     GB8_MIB, "<="),
    ("6. peak training memory, 2000 frames on the GPU, ours", "MiB", ("memory", "ours_peak_mib"), GB8_MIB,
     "<="),
]


def _get(figures: dict, path: tuple[str, ...]) -> float | None:
    value = figures
    for k in path:
        if not isinstance(value, dict) or k not in value:
            return None
        value = value[k]
    return value


def gather(folders: list[Path]) -> dict:
    """Every stage's figures from the folders; a later folder's stage replaces an earlier one's."""
    figures: dict = {}
    for folder in folders:
        for stage in STAGES:
            path = folder / f"{stage}.json"
            if path.is_file():
                figures[stage] = json.loads(path.read_text())
    return figures


def table(figures: dict) -> list[dict]:
    rows = []
    for label, unit, path, target, sense in ROWS:
        value = _get(figures, path)
        if isinstance(target, tuple):
            base = _get(figures, target[1])
            target = None if base is None else target[0] * base
        met = None
        if value is not None and target is not None:
            met = value <= target if sense == "<=" else value >= target
        rows.append({"figure": label, "unit": unit, "measured": value, "target": target, "sense": sense,
                     "met": met})
    return rows


def format_table(rows: list[dict], device: str, commit: str) -> str:
    lines = [
        f"device: {device}; commit: {commit}",
        f"{'figure':58s} {'unit':>4s} {'measured':>10s} {'target':>12s}  met",
    ]
    for r in rows:
        value = "-" if r["measured"] is None else f"{r['measured']:.3f}"
        goal = "" if r["target"] is None else f"{r['sense']} {r['target']:.3f}"
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        lines.append(f"{r['figure']:58s} {r['unit']:>4s} {value:>10s} {goal:>12s}  {met}")
    return "\n".join(lines)


def _commit() -> str:
    """HEAD's short hash, ``-dirty`` where the working tree differs from it (a copy of a tree whose commits
    did not travel with it, as on the device machine, says so instead of naming an older commit as its
    own); ``GIT_COMMIT`` overrides."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.check_output(
            ["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude=*"], cwd=REPO, text=True,
            stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (set GIT_COMMIT)"


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA: GPU stages need one)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the stage JSONs and the table")
    ap.add_argument("--work", type=Path, default=Path("/tmp/speed_table"), help="subjects, runs and logs")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="folders with stage JSONs of earlier calls (the --out folder's own win)",
    )
    ap.add_argument("--table_only", action="store_true", help="run no stage: only gather and print")
    ap.add_argument("--train_frames", type=int, default=600,
                    help="frames of the train stage's subject (the per-iteration cost does not depend on it; "
                         "16 reuses the steps stage's subject)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device, commit = _device(), _commit()
    if not args.table_only:
        runner = Runner(args.work, args.out, args.precision, device, commit, args.train_frames)
        for stage in args.stages:
            getattr(runner, f"stage_{stage}")()
    figures = gather([*args.merge, args.out])
    rows = table(figures)
    stamps = {(f.get("device", device), f.get("commit", commit)) for f in figures.values()} or {
        (device, commit)
    }
    device = "; ".join(sorted({d for d, _ in stamps}))
    commit = ", ".join(sorted({c for _, c in stamps}))
    print(format_table(rows, device, commit))
    write_json(
        args.out / "speed_table.json", {"device": device, "commit": commit, "rows": rows, "figures": figures}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
