"""bench/speed_table.py (issue 13's one table): figures from several calls merge, each row is judged against
its target (fixed, or relative to the baseline's figure), and the linked 2000-frame subject cycles the
source's frames."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import speed_table  # noqa: E402


def _row(rows: list[dict], start: str) -> dict:
    return next(r for r in rows if r["figure"].startswith(start))


def test_table_merges_calls_and_judges_each_target(tmp_path, capsys):
    early, late = tmp_path / "call1", tmp_path / "call2"
    early.mkdir()
    late.mkdir()
    stamp = {"device": "NVIDIA H200", "commit": "abc1234"}
    (early / "raster.json").write_text(json.dumps({"forward_ms": 0.35, "forward_backward_ms": 0.95, **stamp}))
    (early / "steps.json").write_text(json.dumps({"baseline_step_ms": 9.0, **stamp}))  # replaced below
    (late / "steps.json").write_text(json.dumps({
        "baseline_step_ms": 1.9, "ours_step_ms": 2.2, "baseline_inference_fps": 2600.0,
        "ours_inference_fps": 2300.0, **stamp}))
    (late / "train.json").write_text(json.dumps({
        "baseline_wall_s": 80.0, "baseline_trained_inference_fps": 3000.0,
        "ours_trained_inference_fps": 2750.0, **stamp}))
    out = tmp_path / "table"
    assert speed_table.main(["--out", str(out), "--table_only", "--merge", str(early), str(late)]) == 0
    saved = json.loads((out / "speed_table.json").read_text())
    rows = saved["rows"]
    assert _row(rows, "4. rasterizer forward,")["measured"] == 0.35
    assert _row(rows, "4. rasterizer forward,")["met"] is False          # target 0.2 ms
    assert _row(rows, "3. training step before LPIPS, baseline")["met"] is True    # 1.9 <= 2.0 (later call)
    ours_step = _row(rows, "3. training step before LPIPS, ours")
    assert abs(ours_step["target"] - 1.9 * 1.1) < 1e-12 and ours_step["met"] is False  # 2.2 > 2.09
    ours_fps = _row(rows, "2. inference, ours")
    assert abs(ours_fps["target"] - 2340.0) < 1e-9 and ours_fps["met"] is False        # 2300 < 0.9 * 2600
    trained = _row(rows, "2. inference, ours, 30k-trained")  # judged against the trained baseline's figure
    assert abs(trained["target"] - 2700.0) < 1e-9 and trained["met"] is True            # 2750 >= 0.9 * 3000
    assert _row(rows, "2. inference, baseline, 30k-trained")["met"] is True
    assert _row(rows, "1. train.py 30k iterations, baseline")["measured"] == 80.0
    assert _row(rows, "1. train.py 30k iterations, ours")["measured"] is None
    assert _row(rows, "1. train.py 30k iterations, ours")["met"] is None
    printed = capsys.readouterr().out
    assert "device: NVIDIA H200; commit: abc1234" in printed and "NO" in printed and "yes" in printed


def test_linked_subject_cycles_the_source_frames(tmp_path):
    src = tmp_path / "ds" / "a"
    for sub in ("imgs", "alpha", "parsing", "flame"):
        (src / sub).mkdir(parents=True)
    track = tmp_path / "tr" / "a" / "checkpoint"
    track.mkdir(parents=True)
    for k in range(3):
        for path in (src / "imgs" / f"{k:05d}.png", src / "alpha" / f"{k:05d}.png",
                     src / "parsing" / f"{k:05d}_neckhead.png", src / "parsing" / f"{k:05d}_mouth.png",
                     track / f"{k:05d}.frame"):
            path.write_text(str(k))
    speed_table._link_subject(tmp_path, "a", "b", 7)
    dst = tmp_path / "ds" / "b"
    assert sorted(p.name for p in (dst / "imgs").iterdir()) == [f"{k:05d}.png" for k in range(7)]
    assert (dst / "imgs" / "00005.png").read_text() == "2"  # 5 mod 3
    assert (tmp_path / "tr" / "b" / "checkpoint" / "00006.frame").read_text() == "0"
    assert (dst / "parsing" / "00004_mouth.png").read_text() == "1"
    speed_table._link_subject(tmp_path, "a", "b", 7)  # a second call leaves it as it is


def test_inference_figures_take_the_stream_for_frames_and_the_call_for_latency():
    """A sequence of frames is timed on the whole-frame graph's stream where it ran; the latency row is the
    whole-frame call (one frame waited for); without whole-frame modes (CPU), the fastest path there was."""
    cuda = {"eager": 3.0, "CUDA graph": 0.6, "whole-frame CUDA graph": 0.45,
            "whole-frame CUDA graph, streamed": 0.32}
    got = speed_table._inference_figures(cuda, "ours_")
    assert got == {"ours_inference_ms": 0.32, "ours_inference_fps": 1000.0 / 0.32,
                   "ours_inference_latency_ms": 0.45}
    cpu = speed_table._inference_figures({"eager": 30.0}, "")
    assert cpu == {"inference_ms": 30.0, "inference_fps": 1000.0 / 30.0, "inference_latency_ms": 30.0}
