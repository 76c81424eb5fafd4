"""bench/bench_seeds.py: held-out quality over seeds, and the paired fast-minus-plain comparison issue 13's
"quality must not move" check reads (seed by seed: the part of the spread that the start decides taken
out), and the merge of runs made in separate calls."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_seeds  # noqa: E402


def test_paired_differences_are_per_common_seed():
    psnr = {("plain", 0): 30.0, ("plain", 1): 32.0, ("plain", 2): 31.0,
            ("fast", 0): 30.1, ("fast", 1): 31.7, ("fast", 3): 40.0}  # seed 3 has no plain run, 2 no fast one
    runs = {f"{k}{s}": {"kind": k, "seed": s, "PSNR": v} for (k, s), v in psnr.items()}
    d = bench_seeds.paired_differences(runs, "plain", "fast")
    assert d["seeds"] == [0, 1]
    assert d["per_seed"] == pytest.approx([0.1, -0.3])
    assert d["mean"] == pytest.approx(-0.1)
    assert d["sd"] == pytest.approx(0.4 / 2 ** 0.5)  # stdev of (0.1, -0.3)
    assert d["se"] == pytest.approx(0.2)
    assert bench_seeds.paired_differences(runs, "plain", "other") is None


@pytest.mark.slow
def test_paired_run_of_one_path_against_itself_differs_by_nothing(tmp_path, capsys):
    """On the CPU ``--precision fp32`` and the default are the same arithmetic: trained from the same seed,
    each pair ends at the same PSNR (difference exactly 0), while the two seeds end apart."""
    out = tmp_path / "seeds.json"
    bench_seeds.main(["--device", "cpu", "--frames", "10", "--size", "32", "--test_num", "3",
                      "--novel_views", "0", "--iterations", "20", "--seeds", "0", "1", "--model_size", "demo",
                      "--kinds", "baseline", "baseline+--precision=fp32", "--paired", "baseline",
                      "--work", str(tmp_path / "work"), "--out", str(out), "--no_novel"])
    res = json.loads(out.read_text())
    assert len(res["runs"]) == 4
    d = res["summary"]["baseline+--precision=fp32"]["minus_baseline"]
    assert d["seeds"] == [0, 1] and d["per_seed"] == [0.0, 0.0]
    first, second = (res["runs"][f"baseline_seed{k}"]["PSNR"] for k in (0, 1))
    assert first != second  # the seeds end apart: the pairs take that spread out
    assert "baseline+--precision=fp32 - baseline: test PSNR +0.000 dB" in capsys.readouterr().out


def test_paired_kind_must_be_one_of_the_kinds(tmp_path):
    with pytest.raises(SystemExit):
        bench_seeds.main(["--device", "cpu", "--frames", "10", "--size", "32", "--test_num", "3",
                          "--novel_views", "0", "--kinds", "baseline", "ours", "--paired", "basline",
                          "--work", str(tmp_path / "work")])


def _out_file(path: Path, psnr: dict, paired: str | None = "plain", iterations: int = 10000) -> Path:
    """A bench_seeds --out file holding runs of the given {(kind, seed): PSNR}."""
    runs = {f"{k}_seed{s}": {"kind": k, "seed": s, "PSNR": v, "SSIM": 0.9, "train_s": 1.0, "novel_PSNR": None}
            for (k, s), v in psnr.items()}
    kinds = list(dict.fromkeys(k for k, _ in psnr))
    settings = {"kinds": kinds, "paired": paired, "iterations": iterations, "frames": 300, "size": 512}
    path.write_text(json.dumps({"device": "gpu", "settings": settings, "runs": runs, "summary": {}}))
    return path


def test_merge_joins_calls_into_one_paired_summary(tmp_path, capsys):
    """Seeds run in two calls, merged: the same summary as all runs in one file (seeds 0-2 and 3-4 of the
    session-23 quality check were two device calls)."""
    first = {("plain", 0): 30.0, ("fast", 0): 30.5, ("plain", 1): 31.0, ("fast", 1): 30.8}
    second = {("plain", 2): 29.0, ("fast", 2): 29.3, ("plain", 1): 31.2}  # plain seed 1 re-run: replaces
    a, b = _out_file(tmp_path / "a.json", first), _out_file(tmp_path / "b.json", second)
    out = tmp_path / "merged.json"
    bench_seeds.main(["--merge", str(a), str(b), "--out", str(out)])
    merged = json.loads(out.read_text())
    d = merged["summary"]["fast"]["minus_plain"]
    assert d["seeds"] == [0, 1, 2]
    assert d["per_seed"] == pytest.approx([0.5, -0.4, 0.3])
    assert d["mean"] == pytest.approx(0.4 / 3)
    assert merged["summary"]["plain"]["PSNR_per_seed"] == [30.0, 31.2, 29.0]  # by seed
    assert merged["settings"]["iterations"] == 10000 and merged["settings"]["kinds"] == ["plain", "fast"]
    assert "fast - plain: test PSNR +0.133 dB" in capsys.readouterr().out


def test_merge_names_the_file_it_cannot_read(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json"):
        bench_seeds.main(["--merge", str(bad)])
    good = _out_file(tmp_path / "good.json", {("plain", 0): 30.0, ("fast", 0): 30.5})
    with pytest.raises(SystemExit, match="not one of the merged kinds"):
        bench_seeds.main(["--merge", str(good), "--paired", "slow"])


def test_merge_refuses_runs_of_another_schedule_or_malformed_runs(tmp_path):
    a = _out_file(tmp_path / "a.json", {("plain", 0): 30.0, ("fast", 0): 30.5})
    b = _out_file(tmp_path / "b.json", {("plain", 1): 31.0, ("fast", 1): 31.5}, iterations=2000)
    with pytest.raises(SystemExit, match=r"b\.json ran another schedule: iterations 2000"):
        bench_seeds.main(["--merge", str(a), str(b)])
    broken = json.loads(a.read_text())
    del broken["runs"]["fast_seed0"]["PSNR"]
    c = tmp_path / "c.json"
    c.write_text(json.dumps(broken))
    with pytest.raises(SystemExit, match=r"c\.json is not a bench_seeds.py --out file.*fast_seed0"):
        bench_seeds.main(["--merge", str(a), str(c)])
    with pytest.raises(SystemExit, match="missing.json"):
        bench_seeds.main(["--merge", str(tmp_path / "missing.json")])
