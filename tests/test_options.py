"""The shared option groups: documented defaults, overridable roots, derived names, refused combinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.options import (
    DEFAULT_LOG_ROOT,
    REPO_ROOT,
    build_parser,
    parse_metrics_args,
    parse_render_args,
    parse_train_args,
)


def test_train_defaults_follow_spec():
    cfg = parse_train_args(["--idname", "nf_01"])
    t = cfg.train
    assert (t.iterations, t.lpips_start, t.eval_every, t.ckpt_every) == (30000, 15000, 1250, 5000)
    assert t.lambda_lpips == 0.05 and t.lambda_opacity_reg == 0.0 and t.seed == 0
    m = cfg.model
    assert (m.ours, m.latent_dim, m.hidden_dim, m.hidden_layers, m.uv_size) == (False, 32, 256, 6, 128)
    d = cfg.data
    assert (d.frame_delta, d.test_num, d.eval_num, d.max_train) == (0, 500, 50, 10000)
    assert d.background == "white"
    assert cfg.paths.logname == "baseline"
    assert cfg.paths.model_dir == DEFAULT_LOG_ROOT / "nf_01_baseline"
    assert cfg.paths.data_root == REPO_ROOT / "dataset"
    assert cfg.paths.tracking_root == REPO_ROOT / "metrical-tracker" / "output"
    assert cfg.paths.flame_dir is None
    assert t.needs_lpips_loss


def test_ours_logname_and_overridden_roots(tmp_path):
    cfg = parse_train_args(["--idname", "a", "--ours", "--data_root", str(tmp_path / "d"),
                            "--tracking_root", str(tmp_path / "t"), "--flame_dir", str(tmp_path / "f"),
                            "--log_root", str(tmp_path / "l"), "--device", "cpu", "--green_background"])
    assert cfg.paths.logname == "ours"
    assert cfg.paths.model_dir == tmp_path / "l" / "a_ours"
    assert cfg.paths.data_root == tmp_path / "d" and cfg.paths.tracking_root == tmp_path / "t"
    assert cfg.paths.flame_dir == tmp_path / "f"
    assert cfg.run.device == "cpu"
    assert cfg.data.background == "green"
    assert parse_train_args(["--idname", "a", "--ours", "--logname", "x"]).paths.logname == "x"


@pytest.mark.parametrize("argv,weight,surface", [
    ([], 1000.0, True),  # the baseline's default prior (bench/NOTES.md, session 9)
    (["--ours"], 0.0, False),
    (["--lambda_normal_offset", "0"], 0.0, False),
    (["--ours", "--lambda_normal_offset", "5"], 5.0, True),
    (["--lambda_normal_offset", "0", "--lambda_thickness", "1"], 0.0, True),
])
def test_normal_offset_default_depends_on_the_method(argv, weight, surface):
    t = parse_train_args(["--idname", "a", *argv]).train
    assert t.lambda_normal_offset == weight
    assert t.uses_surface is surface


@pytest.mark.parametrize("argv,needs", [
    (["--iterations", "15000"], False),
    (["--iterations", "15001"], True),
    (["--iterations", "30000", "--lambda_lpips", "0"], False),
    (["--iterations", "100", "--lpips_start", "10"], True),
])
def test_needs_lpips_loss(argv, needs):
    assert parse_train_args(["--idname", "a", *argv]).train.needs_lpips_loss is needs


@pytest.mark.parametrize("argv", [
    ["--white_background", "--green_background"],
    ["--iterations", "0"],
    ["--lambda_lpips", "-1"],
    ["--preload", "gpu"],
    ["--max_sh_degree", "4"],
    ["--ema_decay", "1"],
    ["--ema_decay", "-0.1"],
])
def test_train_refuses_bad_values(argv, capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--idname", "a", *argv])


def test_combinations_refused(capsys):
    assert parse_train_args(["--idname", "a", "--conditional_appearance"]).model.conditional_appearance
    with pytest.raises(SystemExit) as exc:
        parse_train_args(["--idname", "a", "--ours", "--camera_conditioning"])
    assert exc.value.code == 2 and "needs --conditional_appearance" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        parse_render_args(["--idname", "a", "--uncertainty"])
    assert exc.value.code == 2 and "HyperGaussians" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        parse_render_args(["--idname", "a", "--ours", "--uncertainty", "--error"])
    assert exc.value.code == 2 and "exclusive" in capsys.readouterr().err


def test_render_frames_dirname():
    def name(*flags):
        return parse_render_args(["--idname", "a", "--ours", *flags]).render.frames_dirname

    assert name() == "frames"
    assert name("--rotate") == "frames_rotate"
    assert name("--uncertainty") == "frames_uncertainty"
    assert name("--error", "--cross", "b") == "frames_error_cross_b"
    assert name("--rotate", "--uncertainty", "--cross", "b") == "frames_rotate_uncertainty_cross_b"
    assert name("--rotate", "--rotate_hold") == "frames_rotate_hold"
    # every mode and option its own folder (issue 16.1): absolute and relative, split and all
    cross = {name("--cross", "b", *m) for m in ([], ["--cross_mode", "relative"], ["--cross_all"],
                                                  ["--cross_all", "--cross_mode", "relative"])}
    assert cross == {"frames_cross_b", "frames_cross_b_relative", "frames_cross_b_all",
                     "frames_cross_b_relative_all"}
    cfg = parse_render_args(["--idname", "a", "--cross", "b", "--cross_mode", "relative",
                             "--checkpoint", "x.pth"])
    assert cfg.render.cross == "b" and cfg.render.cross_mode == "relative"
    assert cfg.render.checkpoint == Path("x.pth")


def test_metrics_args(tmp_path):
    cfg = parse_metrics_args(["-m", str(tmp_path / "a"), str(tmp_path / "b")])
    assert cfg.model_dirs == [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(ValueError):
        build_parser("nope")
