"""End to end on CPU with the torch rasterizer on the small synthetic subject: train.py (both methods,
learning, exact resume, LPIPS guard, demo generation), render.py (test split, --rotate, --cross,
--uncertainty, --error, PLY export, bad inputs) and metrics.py on its output."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import metrics
import render
import train
from scene import rendering
from utils.image_io import read_image
from utils.video import read_video_frame_count

SMALL = ["--device", "cpu", "--backend", "torch", "--hidden_dim", "64", "--hidden_layers", "3",
         "--uv_size", "32", "--test_num", "4", "--eval_num", "4"]
TRAIN_ITERS = 300


@pytest.fixture(autouse=True)
def _no_vgg(tmp_path_factory, monkeypatch):
    """An empty torch hub cache: the VGG weights are absent, as on a fresh offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "empty_torch_home"))
    monkeypatch.setenv("GAUSSIAN_RENDERER_BACKEND", "torch")


def _roots(subject) -> list[str]:
    data_root, tracking_root, idname = subject
    return ["--idname", idname, "--data_root", str(data_root), "--tracking_root", str(tracking_root)]


def _train(subject, log_root: Path, *extra: str) -> int:
    return train.main([*_roots(subject), "--log_root", str(log_root), *SMALL, "--lambda_lpips", "0", *extra])


def _render(subject, log_root: Path, *extra: str) -> int:
    return render.main([*_roots(subject), "--log_root", str(log_root), *SMALL, *extra])


def _log(run_dir: Path) -> dict:
    return json.loads((run_dir / "train_log.json").read_text())


@pytest.fixture(scope="module")
def trained(synthetic_subject, tmp_path_factory):
    """Both methods trained for TRAIN_ITERS iterations, evaluated at 0, half-way and the end."""
    log_root = tmp_path_factory.mktemp("logs")
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("no_vgg")))
    try:
        half = str(TRAIN_ITERS // 2)
        # the baseline without its default surface prior and over white: the thresholds below measure the zero
        # start against the random start's 25.0 dB, measured over white (the prior's own training is
        # tests/test_surface_priors.py; at this tiny size and schedule it ends 1.2 dB lower, at full size 1 dB
        # higher: bench/NOTES.md, session 9; the random background's is tests/test_background.py: here it
        # ends 0.8 dB lower, 26.65 -> 25.85 dB, at full size level or higher: session 15). --ours: defaults.
        for extra in (["--lambda_normal_offset", "0", "--random_background", "0"], ["--ours"]):
            rc = _train(synthetic_subject, log_root, "--iterations", str(TRAIN_ITERS), "--eval_every", half,
                        "--ckpt_every", half, "--grid_every", half, *extra)
            assert rc == 0
    finally:
        mp.undo()
    return log_root


# ----------------------------------------------------------------------------- train.py
@pytest.mark.slow
@pytest.mark.parametrize("method", ["baseline", "ours"])
def test_both_methods_learn(trained, synthetic_subject, method):
    run = trained / f"{synthetic_subject.idname}_{method}"
    evals = _log(run)["evaluations"]
    assert [e["iteration"] for e in evals] == [0, TRAIN_ITERS // 2, TRAIN_ITERS]
    first, last = evals[0], evals[-1]
    # both start on the mesh (the baseline's offsets start at zero, issue 11: 20.9 dB at iteration 0 here,
    # 17.6 dB with --original_init), learn at least 5 dB, and end above what the random start reached
    # (25.0 dB after these 300 iterations)
    assert last["PSNR"] >= first["PSNR"] + 5.0 and last["PSNR"] >= 26.0, (first, last)
    assert last["SSIM"] > first["SSIM"]
    assert last["LPIPS"] is None and "vgg16-397923af.pth" in last["LPIPS_unavailable_reason"]
    assert np.isfinite(last["FPS"]) and last["FPS"] > 0
    assert {p.name for p in (run / "ckpt").glob("*.pth")} == {f"ckpt{TRAIN_ITERS}.pth",
                                                               f"ckpt{TRAIN_ITERS // 2}.pth"}
    grid = read_image(run / "train" / f"{TRAIN_ITERS:05d}.png")  # render | gt | error, labelled
    assert grid.shape[1] == 3 * 64 + 2 * 2 and grid.shape[0] > 64
    assert list(run.glob("events.out.tfevents.*"))
    losses = _log(run)["losses"]
    assert losses and all(np.isfinite(r["loss"]) for r in losses)
    assert {"iteration", "loss", "huber", "mouth", "its_per_s"} <= set(losses[-1])  # one host copy per log
    assert all(isinstance(v, (int, float)) and np.isfinite(v) for v in losses[-1].values())
    assert losses[-1]["loss"] >= losses[-1]["huber"] > 0  # the total holds the photometric term
    seconds = _log(run)["seconds"]  # where the run's time went; the phases add up to the loop's time
    assert set(seconds) == {"setup", "steps_without_lpips", "grids", "evaluations", "checkpoints"}, seconds
    loop = float(next(e for e in _log(run)["events"] if e.startswith("finished")).split(" in ")[1].split()[0])
    assert min(seconds.values()) > 0 and abs(sum(seconds.values()) - seconds["setup"] - loop) < 0.05 * loop
    ckpt = torch.load(run / "ckpt" / f"ckpt{TRAIN_ITERS}.pth", weights_only=True)
    assert ckpt["method"] == method and ckpt["iteration"] == TRAIN_ITERS
    assert ckpt["active_sh_degree"] == 0  # one degree per 500 iterations
    counts = _log(run)["config"]["embedding"]  # issue 16.4: the texel counts are logged
    assert counts["gaussians_after_neck_cut"] == ckpt["n_gaussians"] < counts["texels_covered"]
    assert counts["uv_size"] == 32 and 0 < counts["mouth_gaussians"] < ckpt["n_gaussians"]


def test_baseline_starts_on_the_mesh(synthetic_subject, tmp_path):
    """Issue 11: train.py's baseline starts with zero offsets (Gaussians on the mesh); --original_init keeps
    PyTorch's random start of the output layer (a shift of the whole head)."""
    from scene.trainer import Trainer
    from utils.options import parse_train_args

    for extra, at_rest in (([], True), (["--original_init"], False)):
        argv = [*_roots(synthetic_subject), "--log_root", str(tmp_path), *SMALL, "--lambda_lpips", "0",
                *extra]
        trainer = Trainer(parse_train_args(argv))
        with torch.no_grad():
            gaussians, extras = trainer.avatar.deform(trainer.subject.condition(0))
        offset = extras.deformation.d_xyz.norm(dim=-1)
        if at_rest:
            assert offset.max() == 0 and torch.equal(gaussians.means, extras.base_positions)
        else:
            assert offset.min() > 1e-3  # every Gaussian shifted
        trainer.close()


@pytest.mark.slow
def test_resume_is_exact(synthetic_subject, tmp_path):
    common = ["--iterations", "8", "--ckpt_every", "4", "--log_every", "1", "--skip_test",
              "--grid_every", "0", "--ours", "--ema_decay", "0.9"]
    assert _train(synthetic_subject, tmp_path / "a", *common) == 0
    run_a = tmp_path / "a" / f"{synthetic_subject.idname}_ours"
    assert _train(synthetic_subject, tmp_path / "b", *common, "--start_checkpoint",
                  str(run_a / "ckpt" / "ckpt4.pth")) == 0
    run_b = tmp_path / "b" / f"{synthetic_subject.idname}_ours"
    a = torch.load(run_a / "ckpt" / "ckpt8.pth", weights_only=True)
    b = torch.load(run_b / "ckpt" / "ckpt8.pth", weights_only=True)
    for part in ("deformation", "gaussians"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for opt in ("gaussians", "deformation"):
        sa, sb = a["optimizers"][opt]["state"], b["optimizers"][opt]["state"]
        for pid in sa:
            for k in sa[pid]:
                assert torch.equal(torch.as_tensor(sa[pid][k]), torch.as_tensor(sb[pid][k])), (opt, pid, k)
    assert a["extra"]["sampler"]["order"] == b["extra"]["sampler"]["order"]
    ea, eb = a["extra"]["ema"], b["extra"]["ema"]  # the parameter average continues exactly too
    assert ea["updates"] == eb["updates"] == 8
    for k in ea["shadow"]:
        assert torch.equal(ea["shadow"][k], eb["shadow"][k]), k
    la = {r["iteration"]: r["loss"] for r in _log(run_a)["losses"]}
    lb = {r["iteration"]: r["loss"] for r in _log(run_b)["losses"]}
    assert sorted(lb) == [5, 6, 7, 8]
    for it in (5, 6, 7, 8):
        assert la[it] == lb[it], it  # the same next losses, bit for bit


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.filterwarnings("error:CUDA-graph capture")  # the graphed run must not fall back to eager
@pytest.mark.parametrize("method", ["baseline", "ours"])
def test_cuda_train_graphed_matches_eager_and_learns(synthetic_subject, tmp_path, method):
    """train.py on the GPU with the CUDA-graphed deformation (the default) follows the eager run
    (--no_cuda_graphs): same losses up to float noise, both learn."""
    common = [*_roots(synthetic_subject), "--device", "cuda", "--backend", "cuda", "--hidden_dim", "64",
              "--hidden_layers", "3", "--uv_size", "32", "--test_num", "4", "--eval_num", "4",
              "--lambda_lpips", "0", "--iterations", "300", "--eval_every", "300", "--log_every", "25",
              "--grid_every", "0", "--ckpt_every", "0"]
    # the baseline without its default surface prior, as in test_both_methods_learn: the thresholds measure
    # the zero start (the graphed prior against eager is tests/test_avatar.py's surface test)
    common += ["--ours"] if method == "ours" else ["--lambda_normal_offset", "0", "--random_background", "0"]
    assert train.main([*common, "--log_root", str(tmp_path / "graphs")]) == 0
    assert train.main([*common, "--log_root", str(tmp_path / "eager"), "--no_cuda_graphs"]) == 0
    name = f"{synthetic_subject.idname}_{method}"
    graphs, eager = _log(tmp_path / "graphs" / name), _log(tmp_path / "eager" / name)
    first_g, first_e = graphs["losses"][0], eager["losses"][0]
    assert first_g["iteration"] == first_e["iteration"] == 25
    assert abs(first_g["loss"] - first_e["loss"]) <= 1e-3 * first_e["loss"], (first_g, first_e)
    for log in (graphs, eager):
        ev = log["evaluations"]
        assert ev[-1]["PSNR"] >= ev[0]["PSNR"] + 5.0 and ev[-1]["PSNR"] >= 26.0, ev  # as on the CPU
    assert abs(graphs["evaluations"][-1]["PSNR"] - eager["evaluations"][-1]["PSNR"]) < 1.0


@pytest.mark.slow
def test_train_says_once_why_lpips_is_null(synthetic_subject, tmp_path, capsys):
    """Issue 15.3: without the VGG file, the console says once why evaluations show LPIPS null."""
    assert _train(synthetic_subject, tmp_path, "--iterations", "4", "--eval_every", "2",
                  "--grid_every", "0") == 0
    out = capsys.readouterr().out
    why = [line for line in out.splitlines() if "LPIPS null" in line and "vgg16-397923af.pth" in line]
    assert len(why) == 1 and "[eval 4]" in out


@pytest.mark.slow
def test_train_stops_before_first_iteration_without_vgg(synthetic_subject, tmp_path, capsys):
    rc = train.main([*_roots(synthetic_subject), "--log_root", str(tmp_path), *SMALL, "--iterations", "20",
                     "--lpips_start", "10"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "vgg16-397923af.pth" in err and "--lambda_lpips 0" in err
    assert not (tmp_path / f"{synthetic_subject.idname}_baseline" / "ckpt").exists()


@pytest.mark.slow
def test_train_bad_subject_and_checkpoint(synthetic_subject, tmp_path, capsys):
    assert train.main(["--idname", "nobody", "--data_root", str(tmp_path), "--tracking_root", str(tmp_path),
                       "--log_root", str(tmp_path), *SMALL, "--lambda_lpips", "0"]) == 2
    assert "nobody" in capsys.readouterr().err
    assert _train(synthetic_subject, tmp_path, "--start_checkpoint", str(tmp_path / "missing.pth")) == 2
    assert "not found" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _train(synthetic_subject, blocker / "logs", "--iterations", "1") == 2
    assert "cannot create the output folder" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_subject_is_generated(tmp_path, capsys):
    rc = train.main(["--idname", "demo", "--data_root", str(tmp_path / "data"), "--tracking_root",
                     str(tmp_path / "track"), "--log_root", str(tmp_path / "logs"), *SMALL,
                     "--iterations", "2", "--lambda_lpips", "0", "--skip_test"])
    assert rc == 0
    assert "generating the synthetic demo subject" in capsys.readouterr().out
    assert len(list((tmp_path / "data" / "demo" / "imgs").glob("*.png"))) > 4
    assert (tmp_path / "logs" / "demo_baseline" / "ckpt" / "ckpt2.pth").is_file()


# ----------------------------------------------------------------------------- render.py + metrics.py
@pytest.mark.slow
def test_render_test_split_and_metrics(trained, synthetic_subject, capsys):
    assert _render(synthetic_subject, trained, "--export_ply", "--export_ply_frames") == 0
    out = capsys.readouterr().out
    run = trained / f"{synthetic_subject.idname}_baseline"
    frames = run / "frames"
    for what in ("UV texels covered at uv_size 32", "renders.mp4", "frame_map.json", "canonical.ply"):
        assert what in out, what  # the console says what it wrote
    names = [f"{k:05d}.png" for k in range(4)]
    for sub in ("renders", "gt", "mask"):
        assert sorted(p.name for p in (frames / sub).glob("*.png")) == names
    fmap = json.loads((frames / "frame_map.json").read_text())
    assert [f["source_frame"] for f in fmap["frames"]] == [28, 29, 30, 31]  # the last test_num frames
    assert fmap["mode"] == "frames" and fmap["has_ground_truth"] is True
    assert fmap["checkpoint"].endswith(f"ckpt{TRAIN_ITERS}.pth")
    assert fmap["embedding"] == _log(run)["config"]["embedding"]
    assert read_video_frame_count(frames / "renders.mp4") == 4
    n = torch.load(run / "ckpt" / f"ckpt{TRAIN_ITERS}.pth", weights_only=True)["n_gaussians"]
    for ply in (run / "ply" / "canonical.ply", frames / "ply" / "00000.ply"):
        header = ply.read_bytes()[:2000].split(b"end_header")[0].decode()
        assert f"element vertex {n}" in header
    # metrics.py: plausible values, equal to the training evaluation of the same frames
    assert metrics.main(["-m", str(run), "--device", "cpu"]) == 0
    res = json.loads((run / "results.json").read_text())
    per = json.loads((run / "per_view.json").read_text())
    assert 15 < res["PSNR"] < 60 and 0.5 < res["SSIM"] <= 1.0
    assert res["LPIPS"] is None and "LPIPS_unavailable_reason" in res
    assert sorted(per["PSNR"]) == names
    assert res["PSNR"] == pytest.approx(_log(run)["evaluations"][-1]["PSNR"], abs=1e-3)
    assert res["checkpoint"] == fmap["checkpoint"] and res["iteration"] == TRAIN_ITERS


@pytest.mark.slow
def test_bench_inference_times_a_trained_runs_test_split(trained, synthetic_subject, tmp_path, capsys):
    """bench/bench_inference.py (speed_table's inference on trained avatars): the run's newest checkpoint, its
    test split, each frame as render.py draws it (CPU: eagerly), the figures written as JSON."""
    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import bench_inference

    run = trained / f"{synthetic_subject.idname}_ours"
    out = tmp_path / "inference.json"
    assert bench_inference.main(["-m", str(run), "--device", "cpu", "--backend", "torch", "--json", str(out),
                                 "--min_frames", "8", "--pass_frames", "4"]) == 0
    res = json.loads(out.read_text())
    assert res["method"] == "ours" and res["iteration"] == TRAIN_ITERS and res["frames"] == 4
    assert res["checkpoint"].endswith(f"ckpt{TRAIN_ITERS}.pth")
    assert set(res["inference_ms"]) == {"eager"} and 0 < res["inference_ms"]["eager"] < 60_000
    printed = capsys.readouterr().out
    assert "inference (eager)" in printed and "median of 3 passes of 4 frames" in printed


@pytest.mark.slow
def test_export_ply_alone_renders_nothing(trained, synthetic_subject, tmp_path):
    ckpt = trained / f"{synthetic_subject.idname}_baseline" / "ckpt" / f"ckpt{TRAIN_ITERS}.pth"
    assert _render(synthetic_subject, tmp_path, "--checkpoint", str(ckpt), "--export_ply") == 0
    run = tmp_path / f"{synthetic_subject.idname}_baseline"
    assert sorted(p.name for p in run.iterdir()) == ["ply"]
    assert [p.name for p in (run / "ply").iterdir()] == ["canonical.ply"]
    assert _render(synthetic_subject, tmp_path, "--checkpoint", str(ckpt), "--export_ply", "--render") == 0
    assert len(list((run / "frames" / "renders").glob("*.png"))) == 4


@pytest.mark.slow
def test_render_rotate(trained, synthetic_subject, capsys):
    assert _render(synthetic_subject, trained, "--test_num", "9", "--rotate", "--rotate_frames", "8",
                   "--no_video") == 0
    assert _render(synthetic_subject, trained, "--test_num", "9", "--no_video") == 0
    run = trained / f"{synthetic_subject.idname}_baseline"
    rot = run / "frames_rotate"
    fmap = json.loads((rot / "frame_map.json").read_text())
    # the turn's length is its own option, over the test sequence looped
    assert [f["rotation_deg"] for f in fmap["frames"]] == [45.0 * k for k in range(8)]
    assert [f["source_frame"] for f in fmap["frames"]] == list(range(23, 31))
    assert fmap["has_ground_truth"] is False and fmap["options"]["rotate_frames"] == 8
    assert not (rot / "gt").exists() and not (rot / "mask").exists()  # turned views have no ground truth
    same = read_image(rot / "renders" / "00000.png")
    assert np.array_equal(same, read_image(run / "frames" / "renders" / "00000.png"))  # 0 degrees
    turned = read_image(rot / "renders" / "00001.png")
    assert np.abs(turned - read_image(run / "frames" / "renders" / "00001.png")).mean() > 0.01
    capsys.readouterr()
    assert metrics.main(["-m", str(rot), "--device", "cpu", "--no_lpips"]) == 2
    assert "no ground truth" in capsys.readouterr().err
    # held: one frame's expression and camera, its own folder
    assert _render(synthetic_subject, trained, "--rotate", "--rotate_hold", "--rotate_frames", "3",
                   "--no_video") == 0
    held = json.loads((run / "frames_rotate_hold" / "frame_map.json").read_text())
    assert [f["source_frame"] for f in held["frames"]] == [28, 28, 28]
    assert json.loads((rot / "frame_map.json").read_text()) == fmap  # untouched


@pytest.mark.slow
def test_failed_render_keeps_the_previous_folder(trained, synthetic_subject, monkeypatch):
    run = trained / f"{synthetic_subject.idname}_baseline"
    assert _render(synthetic_subject, trained, "--max_frames", "2", "--no_video") == 0
    before = sorted(p.relative_to(run) for p in (run / "frames").rglob("*"))

    class BrokenVideo(rendering.VideoStream):
        def close(self):  # every frame rendered and encoded, then finishing the video fails
            super().close()
            raise RuntimeError("encoder died")

    monkeypatch.setattr(rendering, "VideoStream", BrokenVideo)
    with pytest.raises(RuntimeError, match="encoder died"):
        _render(synthetic_subject, trained)  # 4 frames rendered, then the video fails
    assert sorted(p.relative_to(run) for p in (run / "frames").rglob("*")) == before  # no mix of runs
    assert not list(run.glob(".frames*"))  # no staging folder left behind


@pytest.fixture(scope="module")
def cross_source(tmp_path_factory):
    """Another synthetic subject (other seed, 48x48 images) with tracking only: no ground truth."""
    from preprocessing.synthetic_subject import make_synthetic_subject

    root = tmp_path_factory.mktemp("cross_src")
    make_synthetic_subject(root / "data", root / "track", "src", n_frames=6, image_size=48, seed=5,
                           resolution=16)
    shutil.rmtree(root / "data" / "src" / "imgs")  # tracking without images must work
    return root


@pytest.mark.slow
def test_render_cross(trained, synthetic_subject, cross_source):
    folders = {}
    for mode in ("absolute", "relative"):
        rc = _render(synthetic_subject, trained, "--cross", "src", "--cross_data_root",
                     str(cross_source / "data"), "--cross_tracking_root", str(cross_source / "track"),
                     "--cross_all", "--cross_mode", mode)
        assert rc == 0
        name = "frames_cross_src_all" if mode == "absolute" else "frames_cross_src_relative_all"
        folders[mode] = trained / f"{synthetic_subject.idname}_baseline" / name
    for mode, frames in folders.items():  # each mode in its own folder: the second did not replace the first
        renders = sorted((frames / "renders").glob("*.png"))
        assert len(renders) == 6
        assert read_image(renders[0]).shape == (48, 48, 3)  # SRC's cameras and image size
        assert not (frames / "gt").exists()
        fmap = json.loads((frames / "frame_map.json").read_text())
        assert [f["source_frame"] for f in fmap["frames"]] == list(range(6))
        assert fmap["source_subject"] == "src" and fmap["cross_mode"] == mode
        assert fmap["has_ground_truth"] is False
        assert ("source_neutral_frame" in fmap) == (mode == "relative")
        assert read_video_frame_count(frames / "renders.mp4") == 6
    a, b = (read_image(sorted((f / "renders").glob("*.png"))[3]) for f in folders.values())
    assert not np.array_equal(a, b)


@pytest.mark.slow
def test_render_uncertainty_and_error(trained, synthetic_subject, capsys):
    from utils.visualize import viridis

    assert _render(synthetic_subject, trained, "--ours", "--uncertainty") == 0
    run = trained / f"{synthetic_subject.idname}_ours"
    assert len(list((run / "frames_uncertainty" / "renders").glob("*.png"))) == 4
    assert not (run / "frames_uncertainty" / "gt").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _render(synthetic_subject, trained, "--uncertainty")  # the baseline has no uncertainty
    assert exc.value.code == 2 and "HyperGaussians" in capsys.readouterr().err
    assert _render(synthetic_subject, trained, "--error") == 0
    err_dir = trained / f"{synthetic_subject.idname}_baseline" / "frames_error"
    assert not (err_dir / "gt").exists() and not (err_dir / "mask").exists()
    img = read_image(err_dir / "renders" / "00000.png")
    white = np.all(img > 1 - 1e-6, axis=-1)
    lut = viridis(torch.linspace(0, 1, 1024)).numpy()
    px = img[~white].reshape(-1, 3)[::7]
    assert 0.05 < 1 - white.mean() < 0.9  # the head region is coloured, the rest white
    dist = np.abs(px[:, None, :] - lut[None]).max(-1).min(-1)
    assert np.quantile(dist, 0.99) < 3 / 255  # head pixels are viridis colours (edges blend with white)


@pytest.mark.slow
def test_render_bad_inputs(trained, synthetic_subject, tmp_path, capsys):
    run = trained / f"{synthetic_subject.idname}_baseline"
    ckpt = run / "ckpt" / f"ckpt{TRAIN_ITERS}.pth"
    # the other method's checkpoint
    rc = _render(synthetic_subject, trained, "--ours", "--logname", "baseline", "--checkpoint", str(ckpt))
    assert rc == 2
    assert "drop --ours" in capsys.readouterr().err
    # other sizes
    assert _render(synthetic_subject, trained, "--checkpoint", str(ckpt), "--hidden_dim", "32") == 2
    assert "hidden_dim" in capsys.readouterr().err
    # truncated
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert _render(synthetic_subject, trained, "--checkpoint", str(bad)) == 2
    assert "truncated" in capsys.readouterr().err
    # missing checkpoint, and a run folder without any
    assert _render(synthetic_subject, trained, "--checkpoint", str(tmp_path / "nope.pth")) == 2
    assert "not found" in capsys.readouterr().err
    assert _render(synthetic_subject, tmp_path) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # --cross naming a missing subject
    assert _render(synthetic_subject, trained, "--cross", "nobody") == 2
    assert "--cross nobody" in capsys.readouterr().err
    # an output folder that cannot be written (its parent is a file)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _render(synthetic_subject, blocker / "logs", "--checkpoint", str(ckpt)) == 2
    assert "cannot write the output folder" in capsys.readouterr().err


@pytest.mark.slow
def test_render_reads_the_run_options(trained, synthetic_subject, capsys):
    """Issue 15.1: the run's recorded options fill every model, data and path flag not given."""
    run = trained / f"{synthetic_subject.idname}_ours"
    fast = ["--device", "cpu", "--backend", "torch", "--no_video"]
    assert render.main(["-m", str(run), *fast]) == 0  # no model, split or root flags at all
    out = capsys.readouterr().out
    assert "uv_size=32" in out and "hidden_dim=64" in out and "ours=True" in out and "test_num=4" in out
    fmap = json.loads((run / "frames" / "frame_map.json").read_text())
    assert fmap["method"] == "ours" and [f["source_frame"] for f in fmap["frames"]] == [28, 29, 30, 31]
    # --idname/--logname/--log_root find the same run; a flag given overrides the record
    assert render.main(["--idname", synthetic_subject.idname, "--logname", "ours", "--log_root", str(trained),
                        "--test_num", "2", *fast]) == 0
    fmap = json.loads((run / "frames" / "frame_map.json").read_text())
    assert [f["source_frame"] for f in fmap["frames"]] == [30, 31]
    # a model flag that contradicts the checkpoint is still refused, by name
    capsys.readouterr()
    assert render.main(["-m", str(run), "--hidden_dim", "32", *fast]) == 2
    assert "hidden_dim" in capsys.readouterr().err
    assert render.main(["-m", str(run), "--max_sh_degree", "0", *fast]) == 2
    assert "--max_sh_degree: checkpoint 3" in capsys.readouterr().err
    # metrics needs nothing but the folder
    assert metrics.main(["-m", str(run), "--device", "cpu", "--no_lpips"]) == 0
    # -m on a folder that is not a run
    with pytest.raises(SystemExit) as exc:
        render.main(["-m", str(trained), *fast])
    assert exc.value.code == 2 and "not a train.py run folder" in capsys.readouterr().err


def test_help_does_not_import_torch():
    """Issue 15.6: --help answers from the option parser alone (torch takes seconds to import)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    for script in ("train", "render", "metrics"):
        code = (f"import sys; import {script}\ntry:\n    {script}.main(['--help'])\nexcept SystemExit:\n"
                "    pass\nprint('TORCH', 'torch' in sys.modules)")
        res = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                             timeout=60)
        assert "usage:" in res.stdout and "TORCH False" in res.stdout, (script, res.stdout[-300:], res.stderr)


@pytest.mark.slow
def test_novel_view_split_render_and_metrics(trained, synthetic_subject, tmp_path, monkeypatch, capsys):
    """Issue 11: the synthetic subject's novel-view split (turned views of the last frames, with ground
    truth), render.py --novel_views and metrics.py's per-view block. A view at yaw 0 is added to the split
    for the test: its images equal the test frames' and its renders equal the test renders."""
    from conftest import SYNTHETIC_FRAMES, SYNTHETIC_RESOLUTION, SYNTHETIC_SEED, SYNTHETIC_SIZE

    from preprocessing import synthetic_subject as gen
    from scene.data.cameras import Camera

    views = {"yaw+0": (0.0, 0.0), "yaw+30": (30.0, 0.0), "pitch-15": (0.0, -15.0)}
    monkeypatch.setattr(gen, "NOVEL_VIEWS", views)
    data, track = tmp_path / "data", tmp_path / "track"
    gen.make_synthetic_subject(data, track, "synth", n_frames=SYNTHETIC_FRAMES, image_size=SYNTHETIC_SIZE,
                               seed=SYNTHETIC_SEED, resolution=SYNTHETIC_RESOLUTION, novel_views=4, workers=2)
    src = synthetic_subject.data_root / "synth"
    novel = data / "synth" / "novel_views"
    spec = json.loads((novel / "novel_views.json").read_text())
    assert spec["frames"] == [28, 29, 30, 31] and set(spec["views"]) == set(views)
    for n in spec["frames"]:  # the same subject as the fixture's (per-frame random streams), and yaw 0 = it
        same = read_image(src / "imgs" / f"{n:05d}.png")
        assert np.array_equal(same, read_image(data / "synth" / "imgs" / f"{n:05d}.png"))
        assert np.array_equal(same, read_image(novel / "yaw+0" / "imgs" / f"{n:05d}.png"))
        assert not np.array_equal(same, read_image(novel / "yaw+30" / "imgs" / f"{n:05d}.png"))
    # the views' cameras: R (Rx(pitch) Ry(yaw))^T, t unchanged, in the generator and in Camera.turned
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]])
    R = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    cam = Camera(R, torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64), K.double(), 64, 64)
    for yaw, pitch in ((30.0, 0.0), (0.0, -15.0), (45.0, 15.0)):
        a, b = np.deg2rad(yaw), np.deg2rad(pitch)
        ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        expect = R.numpy() @ (rx @ ry).T
        assert np.allclose(gen.turned_pose(R.numpy(), yaw, pitch), expect, atol=1e-12)
        assert np.allclose(cam.turned(yaw, pitch).R.numpy(), expect, atol=1e-6)
        assert torch.equal(cam.turned(yaw, pitch).t, cam.t)
    # render.py --novel_views with the trained avatar; metrics.py reports every view
    run = trained / "synth_baseline"
    common = ["--data_root", str(data), "--tracking_root", str(track), "--device", "cpu", "--backend",
              "torch"]
    assert render.main(["-m", str(run), *common, "--novel_views"]) == 0
    assert render.main(["-m", str(run), *common, "--no_video"]) == 0
    out = run / "frames_novel_views"
    for k in range(4):
        assert np.array_equal(read_image(out / "yaw+0" / "renders" / f"{k:05d}.png"),
                              read_image(run / "frames" / "renders" / f"{k:05d}.png"))
        assert np.array_equal(read_image(out / "yaw+0" / "gt" / f"{k:05d}.png"),
                              read_image(run / "frames" / "gt" / f"{k:05d}.png"))
    assert metrics.main(["-m", str(run), "--device", "cpu", "--no_lpips"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert list(res["novel_views"]) == ["pitch-15", "yaw+0", "yaw+30"]  # by yaw, then pitch
    assert res["novel_views"]["yaw+0"]["PSNR"] == pytest.approx(res["PSNR"], abs=1e-9)
    assert res["novel_views"]["yaw+30"]["yaw_deg"] == 30.0 and res["novel_views"]["yaw+30"]["num_views"] == 4
    assert "novel view    yaw+30" in capsys.readouterr().out
    shutil.rmtree(out)  # leave the shared run as the other tests expect it


# ----------------------------------------------------------------------------- fast helpers
def test_frame_sampler_epochs_and_resume():
    from utils.training import FrameSampler

    s = FrameSampler([3, 5, 7, 9], seed=1)
    first = [s.next() for _ in range(4)]
    second = [s.next() for _ in range(4)]
    assert sorted(first) == sorted(second) == [3, 5, 7, 9]  # every frame once per epoch
    assert s.epoch == 2
    state = s.state_dict()
    expected = [s.next() for _ in range(6)]
    t = FrameSampler([3, 5, 7, 9], seed=99)
    t.load_state_dict(state)
    assert [t.next() for _ in range(6)] == expected
    with pytest.raises(ValueError, match="split"):
        FrameSampler([1, 2], seed=0).load_state_dict(state)


def test_turn_angles_and_turned_camera():
    from scene.data.cameras import Camera

    assert rendering.turn_angles(3) == [0.0, 120.0, 240.0]
    assert rendering.turn_angles(8) == [45.0 * k for k in range(8)]
    # the turn's length does not depend on the split's: 120 steps over 10 frames looped, or one held
    from utils.options import RenderOptions

    plan = rendering.render_plan(list(range(50, 60)), RenderOptions(rotate=True))
    assert len(plan) == 120 and plan[13] == (53, 39.0)
    held = rendering.render_plan([7, 8], RenderOptions(rotate=True, rotate_frames=4, rotate_hold=True))
    assert held == [(7, 0.0), (7, 90.0), (7, 180.0), (7, 270.0)]
    assert rendering.render_plan([1, 2, 3], RenderOptions(max_frames=2)) == [(1, 0.0), (2, 0.0)]
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]])
    cam = Camera(torch.eye(3), torch.tensor([0.0, 0.0, 2.0]), K, 64, 64)
    turned = cam.turned_about_y(90.0)
    # R -> R Ry(90)^T: the point +x of the head goes to where +z was: x_cam = R Ry^T p
    p = torch.tensor([1.0, 0.0, 0.0])
    q = turned.R @ p + turned.t
    assert torch.allclose(q, torch.tensor([0.0, 0.0, 1.0]) + torch.tensor([0.0, 0.0, 2.0]), atol=1e-6)
    assert torch.equal(turned.t, cam.t) and torch.equal(turned.K, cam.K)


def test_neutral_and_relative_condition():
    from flame.condition import canonical_condition, neutral_index, relative_condition
    from utils.rotations import matrix_to_rot6d, rot6d_to_matrix, rotation_about_y

    base = canonical_condition()
    assert torch.equal(base[100:106], torch.tensor([1.0, 0, 0, 0, 1, 0]))
    conds = base.repeat(3, 1)
    conds[0, :100] = 0.5
    conds[1, :100] = 0.1  # smallest expression, jaw at rest: the neutral frame
    conds[2, :100] = 0.09  # 0.81 + jaw term 0.245 > 1.0 of frame 1
    conds[2, 100:106] = matrix_to_rot6d(rotation_about_y(0.5))
    assert neutral_index(conds) == 1
    src = conds[2].clone()
    src_n, tgt_n = conds[1].clone(), base.clone()
    tgt_n[:100] = -0.2
    tgt_n[100:106] = matrix_to_rot6d(rotation_about_y(0.2))
    out = relative_condition(src, src_n, tgt_n)
    assert torch.allclose(out[:100], torch.full((100,), -0.2 + 0.09 - 0.1))
    # the jaw turns by the source's 0.5 rad relative to its neutral (at rest), on top of the target's 0.2
    assert torch.allclose(rot6d_to_matrix(out[100:106]), rotation_about_y(0.7), atol=1e-6)
    assert torch.allclose(out[106:118], base[106:118], atol=1e-6)  # eyes at rest stay at rest
    # source == its neutral -> the target's neutral exactly
    assert torch.allclose(relative_condition(src_n, src_n, tgt_n), tgt_n, atol=1e-6)


def test_video_writer(tmp_path):
    from utils.video import write_video

    frames = [torch.full((3, 33, 41), k / 10.0) for k in range(5)]  # odd sizes are padded, not scaled
    path = write_video(tmp_path / "v.mp4", frames, fps=10)
    assert read_video_frame_count(path) == 5
    import imageio.v2 as imageio

    first = imageio.get_reader(str(path), format="FFMPEG").get_data(0)
    assert first.shape == (34, 42, 3)
    assert abs(float(first.mean()) - 0.0) < 3  # frame 0 is black (lossy codec: a few levels)
    with pytest.raises(ValueError, match="expected"):
        write_video(tmp_path / "w.mp4", [np.zeros((8, 8, 3), np.uint8), np.zeros((10, 8, 3), np.uint8)])
    assert not (tmp_path / "w.mp4").exists()  # nothing half-written
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "e.mp4", [])


def test_visualize_helpers():
    from matplotlib import colormaps

    from utils.visualize import error_map, image_grid, uncertainty_colors, viridis

    x = torch.tensor([0.0, 0.25, 1.0, 2.0, -1.0])
    lut = colormaps["viridis"].resampled(256)
    got = viridis(x)
    assert np.allclose(got[0].numpy(), lut(0)[:3], atol=1e-6)
    assert np.allclose(got[2].numpy(), lut(255)[:3], atol=1e-6)
    assert torch.equal(got[3], got[2]) and torch.equal(got[4], got[0])  # clamped
    mid = 0.25 * 255  # between LUT entries 63 and 64: linear interpolation
    expect = np.array(lut(63)[:3]) * (1 - (mid - 63)) + np.array(lut(64)[:3]) * (mid - 63)
    assert np.allclose(got[1].numpy(), expect, atol=1e-6)
    u = torch.tensor([0.0, 10.0])
    assert torch.allclose(uncertainty_colors(u), viridis(torch.sigmoid(2.5 * u)))
    render_img = torch.zeros(3, 4, 4)
    gt = torch.zeros(3, 4, 4)
    gt[:, 0, 0] = 0.3
    mask = torch.zeros(1, 4, 4)
    mask[:, :2] = 1
    em = error_map(render_img, gt, mask)
    assert torch.allclose(em[:, 0, 0], viridis(torch.sigmoid(torch.tensor(3.0))))  # 10 * 0.3
    assert torch.allclose(em[:, 1, 1], viridis(torch.tensor(0.5)))  # zero error -> sigmoid(0)
    assert torch.equal(em[:, 3, 3], torch.ones(3))  # outside the head: background
    grid = image_grid([torch.zeros(3, 2, 3), torch.ones(3, 2, 3) * 0.5, torch.ones(3, 2, 3)], ncols=2, pad=1)
    assert grid.shape == (3, 5, 7)
    assert torch.equal(grid[:, 0:2, 4:7], torch.full((3, 2, 3), 0.5))
    assert torch.equal(grid[:, 3:5, 0:3], torch.ones(3, 2, 3))
    assert torch.equal(grid[:, 3:5, 4:7], torch.ones(3, 2, 3))  # empty cell keeps the pad value
    # labelled panels (issue 15.5): a caption strip above each image, the images themselves unchanged
    panels = [torch.full((3, 40, 90), v) for v in (0.2, 0.5, 0.8)]
    labelled = image_grid(panels, pad=2, labels=["render", "ground truth", "error"])
    strip = labelled.shape[1] - 40
    assert strip >= 10 and labelled.shape[2] == 3 * 90 + 2 * 2
    for k, p in enumerate(panels):
        x = k * 92
        assert torch.equal(labelled[:, strip:, x:x + 90], p)
        text = labelled[:, :strip, x:x + 90]
        assert (text < 0.3).sum() > 20 and (text > 0.9).float().mean() > 0.6  # dark glyphs on white
    with pytest.raises(ValueError, match="labels"):
        image_grid(panels, labels=["one"])
