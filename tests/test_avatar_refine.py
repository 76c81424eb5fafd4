"""The tracker's avatar stage (preprocessing/track/avatar_refine.py): per-frame cameras knocked off the truth
are pulled back by an avatar trained on it (the frames rendered side by side through
gaussian_renderer.strip, whose own tests show a strip equals the moved cameras' renders)."""

from __future__ import annotations

import math

import pytest
import torch

from flame.assets import load_flame_assets
from flame.landmarks import load_landmark_embedding
from flame.model import FLAME
from preprocessing.synthetic_subject import make_synthetic_subject
from preprocessing.track.avatar_refine import AvatarRefineConfig, camera_corrections, set_cameras, small_turn
from preprocessing.track.evaluate import _stack, consistency_px, load_sequence, observations_from_tracking
from preprocessing.track.model import TrackParams, project
from preprocessing.track.run import TrackConfig, track_subject
from scene.assemble import open_subject
from scene.data.tracking import save_tracked_frame
from scene.trainer import Trainer
from utils.options import parse_train_args
from utils.rotations import (
    matrix_to_rot6d,
    quaternion_multiply,
    quaternion_to_matrix,
    rot6d_to_matrix,
    rotation_angle_deg,
    unit_quaternion_to_matrix,
)


def _axis_angle(axis: torch.Tensor, angle: float) -> torch.Tensor:
    """Rodrigues' rotation (3,3) about unit ``axis`` by ``angle`` radians."""
    k = torch.nn.functional.normalize(axis, dim=0)
    K = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return torch.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def test_unit_quaternion_matrices_as_one_quadratic_form():
    """unit_quaternion_to_matrix (the stage's inner loop) equals quaternion_to_matrix, batched or not, and
    the turn of a Hamilton product is the matrices' product."""
    g = torch.Generator().manual_seed(2)
    q, p = (torch.nn.functional.normalize(torch.randn(7, 4, generator=g, dtype=torch.float64), dim=-1)
            for _ in range(2))
    want = quaternion_multiply(q, p)
    assert torch.allclose(quaternion_to_matrix(want), quaternion_to_matrix(q) @ quaternion_to_matrix(p),
                          atol=1e-12)
    assert torch.allclose(unit_quaternion_to_matrix(q), quaternion_to_matrix(q), atol=1e-12)  # quadratic form
    assert torch.allclose(unit_quaternion_to_matrix(q[3]), quaternion_to_matrix(q[3]), atol=1e-12)


def test_small_turn_is_the_rotation_vector_to_second_order():
    """small_turn(v) turns by |v| about v/|v| up to O(|v|^3): at 1 degree the matrices agree to 1e-6, and
    the error falls eightfold when the angle halves."""
    axis = torch.nn.functional.normalize(torch.tensor([0.2, -1.0, 0.5]), dim=0)
    errs = []
    for deg in (1.0, 0.5):
        a = math.radians(deg)
        got = quaternion_to_matrix(small_turn(axis * a).double())
        assert abs(float(rotation_angle_deg(got, torch.eye(3, dtype=torch.float64))) - deg) < 1e-3
        assert torch.allclose(small_turn(torch.stack([axis * a, -axis * a]))[1], small_turn(-axis * a))
        errs.append(float((got - _axis_angle(axis, a).double()).abs().max()))
    assert errs[0] < 1e-6 and 5 < errs[0] / errs[1] < 11


def test_set_cameras_round_trips_through_the_track_parameters():
    g = torch.Generator().manual_seed(1)
    params = TrackParams(5, 3.0)
    with torch.no_grad():
        params.rotation.copy_(matrix_to_rot6d(rot6d_to_matrix(torch.randn(5, 6, generator=g))))
    R = torch.stack([_axis_angle(torch.randn(3, generator=g), 0.3) for _ in range(5)])
    t = torch.randn(5, 3, generator=g)
    set_cameras(params, R, t)
    R2, t2, _ = params.cameras((64, 64))
    assert torch.allclose(R2, R, atol=1e-5) and torch.equal(t2, t)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small avatar trained on the true tracking of a 12-frame synthetic subject at 96 px."""
    root = tmp_path_factory.mktemp("avatar_refine")
    make_synthetic_subject(root / "d", root / "truth", "s", n_frames=12, image_size=96, seed=3, resolution=32)
    argv = ["--idname", "s", "--data_root", str(root / "d"), "--tracking_root", str(root / "truth"),
            "--log_root", str(root / "logs"), "--iterations", "700", "--skip_test", "--lambda_lpips", "0",
            "--grid_every", "0", "--eval_every", "0", "--device", "cpu", "--uv_size", "40",
            "--hidden_dim", "64", "--hidden_layers", "3", "--max_sh_degree", "0"]
    cfg = parse_train_args(argv)
    cfg.data.test_num = cfg.data.eval_num = 0
    trainer = Trainer(cfg)
    trainer.run()
    return root, trainer


def test_avatar_pulls_knocked_cameras_back(trained):
    """Every frame's true camera turned by 0.8 degrees about a random axis and shifted by 4 mm (about 5 px
    of image motion at 96 px): refined against the avatar trained on the truth, the avatar's Gaussians
    land within a fifth of that of where the true camera draws them. (Pixels, not angles: a turn of the
    camera and a sideways shift move the image alike, and only the image is observed.)"""
    root, trainer = trained
    truth = load_sequence(root / "truth" / "s" / "checkpoint")
    g = torch.Generator().manual_seed(5)
    out = root / "knocked" / "s" / "checkpoint"
    out.mkdir(parents=True)
    for fr in truth:
        dR = _axis_angle(torch.randn(3, generator=g), math.radians(0.8)).double()
        dt = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0).double() * 0.004
        save_tracked_frame(out / f"{fr.frame_id:05d}.frame", shape=fr.shape.numpy(),
                           expression=fr.expression.numpy(), R=(dR @ fr.R.double()).numpy(),
                           t=(dR @ fr.t.double() + dt).numpy(), K=fr.K.double().numpy(), img_size=fr.img_size,
                           jaw=fr.jaw.numpy(), eyes=fr.eyes.numpy(), eyelids=fr.eyelids.numpy(),
                           frame_id=fr.frame_id)
    data = trainer.cfg.data
    data.test_num = 0
    knocked = open_subject(root / "d", root / "knocked", "s", data, torch.device("cpu"))
    R_k = torch.stack([knocked.frame(i).camera.R for i in range(len(knocked))])
    t_k = torch.stack([knocked.frame(i).camera.t for i in range(len(knocked))])
    R_new, t_new = camera_corrections(trainer.avatar, knocked, trainer.background,
                                      AvatarRefineConfig(steps=40, batch=5))  # batches of 5, 5 and 2
    R_one, t_one = camera_corrections(trainer.avatar, knocked, trainer.background,
                                      AvatarRefineConfig(steps=40, batch=1, strip=False))  # one call a frame

    def pixel_error(R: torch.Tensor, t: torch.Tensor, R_ref=None, t_ref=None) -> float:
        """Mean image distance of each frame's Gaussians drawn by (R, t) from where the truth (or the
        cameras R_ref, t_ref) draws them."""
        errs = []
        for i, fr in enumerate(truth):
            with torch.no_grad():
                X = trainer.avatar.deform(knocked.frame(i).condition)[0].means
            K = fr.K.float()
            ref = ((fr.R.float()[None], fr.t.float()[None]) if R_ref is None
                   else (R_ref[i:i + 1], t_ref[i:i + 1]))
            errs.append((project(X[None], R[i:i + 1], t[i:i + 1], K) - project(X[None], *ref, K))
                        .norm(dim=-1).mean())
        return float(torch.stack(errs).mean())

    # the same fit: strips of 5 frames and frames one by one differ only in float32 rounding, which Adam's
    # last steps follow by a few thousandths of a pixel
    assert pixel_error(R_new, t_new, R_one, t_one) < 0.02
    before, after = pixel_error(R_k, t_k), pixel_error(R_new, t_new)
    print(f"image error of the cameras {before:.2f} -> {after:.2f} px")
    assert before > 3.0
    assert after < before / 5


def test_tracker_runs_the_avatar_stage_and_resumes_it(trained, capfd):
    """track_subject with --avatar_refine on the 12-frame subject (landmarks + 1 px noise, no photometric
    stage, to stay quick): the stage moves the cameras, leaves the rest of the tracking, writes frames that
    train.py reads, checkpoints itself and is skipped by a rerun with the same settings. Without progress
    bars (``--quiet``) its avatar's training draws none either."""
    root, _ = trained
    flame_dir = root / "d" / "s" / "flame"
    assets, emb = load_flame_assets(flame_dir), load_landmark_embedding(flame_dir)
    truth = load_sequence(root / "truth" / "s" / "checkpoint")
    obs = observations_from_tracking(truth, assets, emb, noise_px=1.0)
    cfg = TrackConfig(focal=3.5, photometric=False, show_progress=False,
                      refine=AvatarRefineConfig(iterations=700, steps=30, uv_size=40, hidden_dim=64,
                                                hidden_layers=3))
    cfg.fit.rigid_steps, cfg.fit.steps = 200, 800
    track_subject(root / "d", root / "lmk", "s", cfg, observations=obs)
    cfg.avatar_refine = True
    capfd.readouterr()
    summary = track_subject(root / "d", root / "ref", "s", cfg, observations=obs)
    assert "train:" not in capfd.readouterr().err  # the stage avatar's bar honours show_progress
    lmk = load_sequence(root / "lmk" / "s" / "checkpoint")
    ref = load_sequence(root / "ref" / "s" / "checkpoint")
    flame = FLAME(assets)
    before = consistency_px(_stack(truth), _stack(lmk), flame)
    after = consistency_px(_stack(truth), _stack(ref), flame)
    print(f"consistency {before:.3f} -> {after:.3f} px; {summary['avatar_stage']}")
    moved = summary["avatar_stage"]["rounds"][0]
    assert 0.01 < moved["rotation_deg"] < 2.0 and moved["translation_mm"] > 0.01
    for a, b in zip(lmk, ref):  # only the cameras change
        assert torch.equal(a.expression, b.expression) and torch.equal(a.jaw, b.jaw)
        assert torch.equal(a.shape, b.shape) and torch.equal(a.K, b.K)
    assert after < before
    assert (root / "d" / "s" / "track" / "stage3.pt").is_file()
    again = track_subject(root / "d", root / "ref", "s", cfg, observations=obs)
    assert again["avatar_stage"] == summary["avatar_stage"]
    assert again["timings"]["avatar_refine_s"] < 2.0  # resumed from its checkpoint, nothing trained
    assert torch.equal(load_sequence(root / "ref" / "s" / "checkpoint")[3].R, ref[3].R)



def test_avatar_stage_needs_the_training_masks_before_any_work(trained, tmp_path):
    """A subject with frames but no mattes: --avatar_refine stops at once, naming the missing files."""
    from preprocessing.frames_io import PreprocessError
    from preprocessing.track.avatar_refine import check_trainable

    root, _ = trained
    check_trainable(root / "d" / "s", list(range(12)))  # the synthetic subject has them all
    sub = tmp_path / "bare"
    (sub / "imgs").mkdir(parents=True)
    with pytest.raises(PreprocessError, match=r"alpha matte \(alpha/NNNNN.png, e.g. 00003\)"):
        check_trainable(sub, [3, 4])


def test_avatar_stage_default_runs_on_a_gpu_where_the_masks_are(trained, tmp_path):
    """TrackConfig.avatar_refine None (the default): the stage runs on CUDA when every frame has its mattes
    and masks, is skipped (saying why) when one lacks them or on the CPU; True / False are obeyed."""
    from preprocessing.track.run import stage_on

    root, _ = trained
    full, bare = root / "d" / "s", tmp_path / "bare"
    (bare / "imgs").mkdir(parents=True)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only the device's type is read
    frames = list(range(12))
    assert stage_on(None, cuda, full, frames) == (True, "")
    on, why = stage_on(None, cuda, bare, [3, 4])
    assert not on and "alpha matte (alpha/NNNNN.png, e.g. 00003)" in why
    on, why = stage_on(None, cpu, full, frames)
    assert not on and "CPU" in why
    assert stage_on(True, cpu, full, frames)[0] and not stage_on(False, cuda, full, frames)[0]


def test_quaternion_product_matches_the_component_formula_and_its_gradient():
    """quaternion_multiply's vector form equals the Hamilton product written out component by component,
    broadcasting over batch dimensions, and its gradients pass gradcheck."""
    g = torch.Generator().manual_seed(5)
    q1 = torch.randn(5, 1, 4, generator=g, dtype=torch.float64)
    q2 = torch.randn(1, 3, 4, generator=g, dtype=torch.float64)
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, x2, y2, z2 = q2.unbind(-1)
    want = torch.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], dim=-1)
    got = quaternion_multiply(q1, q2)
    assert got.shape == (5, 3, 4) and torch.allclose(got, want, atol=1e-14)
    i, j = torch.tensor([0.0, 1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert torch.equal(quaternion_multiply(i, j), torch.tensor([0.0, 0.0, 0.0, 1.0]))  # i j = k
    assert torch.equal(quaternion_multiply(j, i), torch.tensor([0.0, 0.0, 0.0, -1.0]))  # j i = -k
    a = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(quaternion_multiply, (a, b))
