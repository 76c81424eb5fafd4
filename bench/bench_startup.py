"""What a train.py process spends outside its training steps: interpreter and imports, building the
Trainer (subject, model, LPIPS, optimisers), preparing it, a few steps, and the exit after the last line --
and whether anything imported ``torch._dynamo`` (torch's optimisers do; ours should not: its import is
seconds on a machine without cached bytecode).

Runs ``train.py``'s own code in a child process, which writes its clock readings (seconds since the parent
started it); the parent adds the exit (the child's last reading to its end).

    python bench/bench_startup.py --idname demo --uv_size 64 --test_num 8 --device cpu
    python bench/bench_startup.py --idname s16 --data_root ... --tracking_root ... --json startup.json
Any train.py option is accepted (``--iterations`` defaults to 20 here; evaluation is skipped).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(out: Path, argv: list[str]) -> None:
    """In the child: time each phase from the parent's start time (``BENCH_T0``, epoch seconds)."""
    t0 = float(os.environ["BENCH_T0"])
    marks = {"interpreter": time.time() - t0}
    sys.path.insert(0, str(REPO))
    import torch

    marks["import torch"] = time.time() - t0
    from utils.options import parse_train_args

    cfg = parse_train_args(argv)
    from scene.trainer import Trainer

    marks["import scene.trainer"] = time.time() - t0
    trainer = Trainer(cfg)
    marks["Trainer built"] = time.time() - t0
    trainer.run()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    marks["trained"] = time.time() - t0
    out.write_text(json.dumps({"marks": marks, "dynamo_imported": "torch._dynamo" in sys.modules,
                               "device": str(trainer.device), "iterations": cfg.train.iterations}))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        child(Path(argv[1]), argv[2:])
        from utils.errors import exit_without_teardown

        exit_without_teardown(0)  # as train.py ends
    json_out = None
    if "--json" in argv:
        k = argv.index("--json")
        json_out = Path(argv[k + 1])
        del argv[k:k + 2]
    if "--iterations" not in argv:
        argv += ["--iterations", "20"]
    logs = Path(tempfile.gettempdir()) / "bench_startup"
    argv += ["--skip_test", "--overwrite", "--quiet", "--log_root", str(logs)]
    with tempfile.TemporaryDirectory() as tmp:
        readings = Path(tmp) / "marks.json"
        t0 = time.time()
        proc = subprocess.run([sys.executable, __file__, "--child", str(readings), *argv], cwd=REPO,
                              env={**os.environ, "BENCH_T0": repr(t0)})
        total = time.time() - t0
        if proc.returncode != 0:
            print(f"bench_startup: the child failed (exit {proc.returncode})")
            return proc.returncode
        res = json.loads(readings.read_text())
    marks = res["marks"]
    res["process_s"] = total
    res["exit_s"] = total - marks["trained"]
    previous = 0.0
    print(f"device {res['device']}, {res['iterations']} iterations; torch._dynamo imported: "
          f"{res['dynamo_imported']}")
    for name, t in marks.items():
        print(f"  {name:24s} at {t:7.2f} s  (+{t - previous:.2f} s)")
        previous = t
    print(f"  {'process ended':24s} at {total:7.2f} s  (exit +{res['exit_s']:.2f} s)")
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
