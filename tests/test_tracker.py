"""The built-in FLAME tracker (preprocessing/track): landmark embedding, the fit against known ground
truth, the photometric stage, the .frame output that training reads, resume, bad input, and a real
portrait clip through the offline face mesh."""

from __future__ import annotations

import io
import pickle
import shutil

import numpy as np
import pytest
import torch

from flame.assets import FlameAssetError, load_flame_assets
from flame.landmarks import (
    LANDMARK_FILE,
    iris_vertices,
    load_landmark_embedding,
    write_landmark_embedding,
    yaw_bins,
)
from flame.model import FLAME
from preprocessing.frames_io import PreprocessError
from preprocessing.synthetic_subject import make_synthetic_subject
from preprocessing.track.__main__ import main as track_main
from preprocessing.track.evaluate import (
    _stack,
    compare_tracking,
    consistency_px,
    load_sequence,
    observations_from_tracking,
)
from preprocessing.track.fit import FitConfig, acceleration, frame_gaps, regularisers
from preprocessing.track.model import TrackParams
from preprocessing.track.photometric import PhotometricConfig
from preprocessing.track.run import TrackConfig, track_subject
from scene.data.subject import Subject
from utils.rotations import rotation_about_y

N_FRAMES, SIZE = 24, 256


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """A synthetic subject at 256 px with known tracking (its .frame files are the truth)."""
    root = tmp_path_factory.mktemp("track_subject")
    make_synthetic_subject(root / "d", root / "truth", "s", n_frames=N_FRAMES, image_size=SIZE, seed=1,
                           resolution=40)
    flame_dir = root / "d" / "s" / "flame"
    assets, emb = load_flame_assets(flame_dir), load_landmark_embedding(flame_dir)
    truth = load_sequence(root / "truth" / "s" / "checkpoint")
    return root, assets, emb, truth


def _config(**photo) -> TrackConfig:
    cfg = TrackConfig(focal=3.5, show_progress=False, photometric=bool(photo), photo=PhotometricConfig())
    cfg.fit.rigid_steps, cfg.fit.steps = 200, 800
    for k, v in photo.items():
        setattr(cfg.photo, k, v)
    return cfg


# ----------------------------------------------------------------------------- embedding
def test_landmark_embedding_file_roundtrip_and_refusals(tmp_path, subject):
    _, assets, emb, _ = subject
    path = write_landmark_embedding(tmp_path / LANDMARK_FILE, emb)
    back = load_landmark_embedding(tmp_path)
    np.testing.assert_array_equal(back.dynamic_faces, emb.dynamic_faces)
    np.testing.assert_allclose(back.static_bary, emb.static_bary)
    faces, bary = back.frontal()
    assert faces.shape == (68,) and bary.shape == (68, 3) and np.allclose(bary.sum(1), 1.0)
    assert path.is_file()
    with pytest.raises(FlameAssetError, match=LANDMARK_FILE):
        load_landmark_embedding(tmp_path / "nowhere")
    # a pickle that asks for a class outside the allow list is refused, not run

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    pickle.dump(np.array(Evil(), dtype=object), buf, protocol=2)
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / LANDMARK_FILE).write_bytes(buf.getvalue())
    with pytest.raises(FlameAssetError, match="cannot be read"):
        load_landmark_embedding(tmp_path / "evil")
    # the synthetic irises are the front poles of the eyeballs, the subject's right eye (-x) first
    ids = iris_vertices(assets)
    v = np.asarray(assets.v_template)[ids]
    assert v[0, 0] < 0 < v[1, 0]


def test_yaw_bins_follow_the_file_convention():
    yaw = torch.tensor([0.0, -10.0, 10.0, -60.0, 60.0])
    R = torch.stack([rotation_about_y(float(np.radians(a))) for a in yaw])
    assert yaw_bins(R).tolist() == [0, 10, 49, 39, 78]


def test_flame_restricted_to_vertices_matches_the_full_model(subject):
    _, assets, _, truth = subject
    full = FLAME(assets)
    ids = np.array([3, 100, 7, 250])
    f = truth[5]
    args = (f.shape[None], f.expression[None])
    kw = dict(jaw=f.jaw[None], eyes=f.eyes[None], eyelids=f.eyelids[None])
    torch.testing.assert_close(full.restricted_to(ids)(*args, **kw), full(*args, **kw)[:, ids])


# ----------------------------------------------------------------------------- known ground truth
@pytest.fixture(scope="module")
def landmark_fit(subject):
    root, assets, emb, truth = subject
    obs = observations_from_tracking(truth, assets, emb, noise_px=1.0, seed=0)
    summary = track_subject(root / "d", root / "fit", "s", _config(), observations=obs)
    fit = load_sequence(root / "fit" / "s" / "checkpoint")
    return summary, compare_tracking(truth, fit, assets, emb), obs


def test_landmark_fit_recovers_known_tracking(landmark_fit, subject):
    summary, err, _ = landmark_fit
    print("landmark stage vs truth:", err)
    assert summary["landmark_stage"]["landmark_error_px"] < 1.6  # 1 px noise: ~1.25 px is the floor
    assert err["reprojection_px"] < 1.2       # against the noise-free landmarks
    # FLAME vertices in model space, nothing aligned: the per-frame motion is recovered to well under a
    # millimetre; the whole error is the identity, which 68 landmarks barely see (the back of the head
    # and the neck count too), and it moves the eyeballs, which costs the gaze
    assert err["motion_vertex_mm"] < 1.0
    assert err["vertex_mm"] < 10.0 and err["vertex_mm"] - err["shape_vertex_mm"] < 1.0
    assert err["jaw_deg"] < 3.0
    assert err["gaze_deg"] < 15.0
    # the expression is not shrunk away by its prior: the avatar's network takes it as its condition (the
    # coefficients themselves are not comparable: one region's blendshapes are nearly collinear, and the jaw
    # trades with the chin's). At 256 px its landmarks move 0.147 mm against the truth's 0.380 (0.024 with
    # the old flat 1e-5 prior)
    assert 0.25 * err["expression_landmark_truth_mm"] < err["expression_landmark_fit_mm"] \
        < 2.0 * err["expression_landmark_truth_mm"]
    assert abs(err["focal_rel"]) < 0.02
    # cameras one static head explains (what the avatar needs): 1.19 px with the weak shape prior and the
    # acceleration term, 1.35 px with the old strong prior on this fast clip (bench/NOTES.md, session 10)
    assert err["consistency_px"] < 1.28
    # the .frame files are what the project's reader and train.py's Subject read
    root = subject[0]
    sub = Subject(root / "d", root / "fit", "s", test_num=4, eval_num=4)
    assert len(sub) == N_FRAMES and sub.img_size == (SIZE, SIZE)
    assert torch.isfinite(sub.conditions).all()


def test_acceleration_term_spares_steady_motion_and_charges_jitter():
    """The pose's acceleration penalty: zero for motion at constant velocity (also across a frame gap),
    the square for small jitter, linear growth for large accelerations (the pseudo-Huber)."""
    steady = torch.arange(6.0, dtype=torch.float64)[:, None] * torch.tensor([[0.01, -0.02]]).double()
    gaps = torch.ones(5, dtype=torch.float64)
    assert acceleration(steady, gaps, 0.003) == pytest.approx(0.0, abs=1e-15)
    skipped = steady[[0, 1, 3, 4, 5]]  # frame 2 missing: the velocity over the gap is still the same
    assert acceleration(skipped, frame_gaps([0, 1, 3, 4, 5], torch.device("cpu")).double(), 0.003) == \
        pytest.approx(0.0, abs=1e-15)
    bump = torch.zeros(5, 1, dtype=torch.float64)
    bump[2] = 1e-5  # second differences 1e-5, -2e-5, 1e-5 (far below the scale: quadratic)
    assert acceleration(bump, gaps[:4], 0.003) == pytest.approx((1 + 4 + 1) * 1e-10 / 3, rel=1e-3)
    big = bump * 1e3  # second differences 1e-2 .. 2e-2: well above the scale, about 2 c |a|
    c = 0.003
    expected = sum(2 * c * c * (np.sqrt(1 + (a / c) ** 2) - 1) for a in (1e-2, 2e-2, 1e-2)) / 3
    assert acceleration(big, gaps[:4], c) == pytest.approx(expected, rel=1e-9)
    assert acceleration(big, gaps[:4], c) < 0.4 * (1 + 4 + 1) * 1e-4 / 3  # a third of the square


def test_consistency_charges_per_frame_pose_errors_not_gauge_freedoms(subject):
    """consistency_px: 0 for the truth, 0 for cameras moved by one rigid motion of the world (a static head
    absorbs it), and about the pixels a per-frame rotation error moves the head by."""
    _, assets, _, truth = subject
    g = _stack(truth)
    flame = FLAME(assets)
    assert consistency_px(g, g, flame) < 1e-6
    q, c = rotation_about_y(0.2), torch.tensor([0.01, -0.02, 0.03])  # the world turned 11.5 deg and moved
    moved = dict(g, R=g["R"] @ q.T, t=g["t"] - g["R"] @ q.T @ c)
    assert consistency_px(g, moved, flame) < 1e-3
    # every frame turned by its own 1 degree about y, alternating in sign: no static head explains that
    turn = torch.stack([rotation_about_y(np.deg2rad(1.0 if k % 2 else -1.0)) for k in range(len(truth))])
    jittered = dict(g, R=turn @ g["R"])
    px = consistency_px(g, jittered, flame)
    # reference: with the turns alternating in sign the best static head is the true one (to first order),
    # so what stays is how far the turns move the rigid vertices' pixels
    posed = flame(g["shape"][None], g["expression"], jaw=g["jaw"], eyes=g["eyes"], eyelids=g["eyelids"])
    neutral = flame(g["shape"][None], torch.zeros_like(g["expression"][:1]))[0]
    rigid = neutral[(posed - neutral).norm(dim=-1).amax(0) < 5e-4]

    def pixels(R):
        cam = rigid[None] @ R.transpose(1, 2) + g["t"][:, None]
        return cam[..., :2] / cam[..., 2:3] * g["K"][0, 0]

    moved_px = float((pixels(jittered["R"]) - pixels(g["R"])).norm(dim=-1).mean())
    print("consistency of the jittered cameras", px, "px; pixels moved", moved_px)
    assert 0.8 * moved_px < px < 1.02 * moved_px, (px, moved_px)


def test_crop_record_gives_the_principal_point(subject, landmark_fit, tmp_path):
    """A subject made by video_to_subject.py records its crop box and the video's size; the tracker puts
    the principal point where the video's centre lands in the crop (not at the image centre), and the
    .frame files carry it. The synthetic truth has its principal point off-centre, at (130.56, 125.44)
    px of 256: a 1000x1000 video cropped at (245, 255) with a 500-pixel box puts it exactly there."""
    import json

    from preprocessing.frames_io import PREPROCESS_SETTINGS
    from preprocessing.track.run import crop_principal_point

    root, assets, emb, truth = subject
    data = tmp_path / "d"
    shutil.copytree(root / "d" / "s", data / "s")
    assert crop_principal_point(data / "s", (SIZE, SIZE)) is None  # no record: the image centre
    record = {"crop_box_xywh": [245, 255, 500, 500], "source_size_hw": [1000, 1000], "size": SIZE}
    (data / "s" / PREPROCESS_SETTINGS).write_text(json.dumps(record))
    cx, cy = crop_principal_point(data / "s", (SIZE, SIZE))
    assert cx == pytest.approx(float(truth[0].K[0, 2])) and cy == pytest.approx(float(truth[0].K[1, 2]))
    _, err_centred, obs = landmark_fit
    summary = track_subject(data, tmp_path / "fit", "s", _config(), observations=obs)
    assert summary["principal_point"] == pytest.approx([cx, cy])
    fit = load_sequence(tmp_path / "fit" / "s" / "checkpoint")
    assert all(float(f.K[0, 2]) == pytest.approx(cx) and float(f.K[1, 2]) == pytest.approx(cy) for f in fit)
    err = compare_tracking(truth, fit, assets, emb)
    print("principal point from the crop:", err["rotation_deg"], "deg; image centre:",
          err_centred["rotation_deg"], "deg")
    assert err["reprojection_px"] <= err_centred["reprojection_px"] + 0.05
    assert err["rotation_deg"] <= err_centred["rotation_deg"] + 0.1


def test_photometric_stage_refines_against_the_pixels(subject, landmark_fit):
    root, assets, emb, truth = subject
    _, before, obs = landmark_fit
    cfg = _config(size=64, uv_size=40, steps=8, colour_steps=60, batch=6)
    summary = track_subject(root / "d", root / "fit", "s", cfg, observations=obs)  # resumes stage 1
    after = compare_tracking(truth, load_sequence(root / "fit" / "s" / "checkpoint"), assets, emb)
    print("after the photometric stage:", after)
    st = summary["photometric_stage"]
    assert st["photometric_l1"] < st["photometric_l1_start"]  # the splat head learnt the colours
    assert after["vertex_mm"] < before["vertex_mm"] + 0.5
    assert after["reprojection_px"] < 2.0
    assert summary["timings"]["landmark_fit_s"] < 2.0  # stage 1 came from its checkpoint
    assert "avatar_stage" not in summary and "CPU" in summary["avatar_stage_skipped"]  # the default, on a CPU


def test_photometric_stage_can_keep_the_nonrigid_fit(subject, landmark_fit):
    """PhotometricConfig.nonrigid=False (the GPU preset): the stage moves the cameras and the identity only;
    expression, jaw, eyes and eyelids stay exactly where the landmark fit put them. True (the CPU preset):
    they move too."""
    root, _, _, _ = subject
    _, _, obs = landmark_fit
    work = root / "d" / "s" / "track"  # the stages' checkpoints: stage 1 resumes
    before = torch.load(work / "stage1.pt", weights_only=True)["params"]
    cfg = _config(size=64, uv_size=40, steps=8, colour_steps=20, batch=6, nonrigid=False)
    track_subject(root / "d", root / "fit_rigid", "s", cfg, observations=obs)
    after = torch.load(work / "stage2.pt", weights_only=True)["params"]
    for name in ("expression", "jaw", "eyes", "eyelids"):
        assert torch.equal(after[name], before[name]), name
    for name in ("rotation", "translation", "shape"):
        assert (after[name] - before[name]).abs().max() > 1e-5, name
    cfg.photo.nonrigid = True
    track_subject(root / "d", root / "fit_nonrigid", "s", cfg, observations=obs)
    after = torch.load(work / "stage2.pt", weights_only=True)["params"]
    for name in ("expression", "jaw", "eyes", "eyelids", "rotation"):
        assert (after[name] - before[name]).abs().max() > 1e-5, name


def test_photometric_intrinsics_follow_the_area_resize():
    """A point that projects to the centre of a bright block lands, with the resized intrinsics, where the
    block's centroid is after the area resize the photometric stage applies to the frames."""
    from preprocessing.track.model import project
    from preprocessing.track.photometric import resize_uint8, resized_intrinsics

    img = torch.zeros(1, 1, 64, 48, dtype=torch.uint8)
    img[..., 20:24, 8:12] = 255  # centre (x, y) = (9.5, 21.5) in source pixels
    small = resize_uint8(img, (16, 12)).double()[0, 0]
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(12.0), indexing="ij")
    centroid = torch.stack([(small * xs).sum(), (small * ys).sum()]) / small.sum()
    K = torch.tensor([[100.0, 0.0, 20.0], [0.0, 100.0, 30.0], [0.0, 0.0, 1.0]])
    z = 2.0
    point = torch.tensor([[[(9.5 - 20.0) * z / 100.0, (21.5 - 30.0) * z / 100.0, z]]])
    eye, zero = torch.eye(3)[None], torch.zeros(1, 3)
    assert torch.allclose(project(point, eye, zero, K)[0, 0], torch.tensor([9.5, 21.5]), atol=1e-5)
    uv = project(point, eye, zero, resized_intrinsics(K, (64, 48), (16, 12)))[0, 0]
    assert torch.allclose(uv.double(), centroid, atol=1e-4)  # (2, 5); u s alone: (2.375, 5.375)


# ----------------------------------------------------------------------------- missing faces, bad input
def test_frames_without_a_face(subject, tmp_path):
    root, assets, emb, truth = subject
    obs = observations_from_tracking(truth, assets, emb, noise_px=0.5)
    obs.valid[[5, 6]] = False
    obs.landmarks[[5, 6]] = 0.0  # what the detector leaves there
    cfg = _config()
    track_subject(root / "d", tmp_path / "interp", "s", cfg, observations=obs)
    seq = load_sequence(tmp_path / "interp" / "s" / "checkpoint")
    assert len(seq) == N_FRAMES
    t = torch.stack([f.t for f in seq])
    step = (t[7] - t[4]) / 3  # the smoothness term fills the gap along the line between the neighbours
    assert torch.allclose(t[5], t[4] + step, atol=0.01) and torch.allclose(t[6], t[4] + 2 * step, atol=0.01)
    with pytest.warns(UserWarning, match="00005, 00006"):
        cfg = _config()
        cfg.no_face = "drop"
        track_subject(root / "d", tmp_path / "drop", "s", cfg, observations=obs)
    assert sorted(f.frame_id for f in load_sequence(tmp_path / "drop" / "s" / "checkpoint")) == \
        [n for n in range(N_FRAMES) if n not in (5, 6)]
    cfg.no_face = "error"
    with pytest.raises(PreprocessError, match="00005, 00006"):
        track_subject(root / "d", tmp_path / "err", "s", cfg, observations=obs)
    assert not (tmp_path / "err").exists()


def test_bad_input_names_the_problem(subject, tmp_path, capsys):
    root = subject[0]
    # missing landmark embedding: a clear error before anything is written
    flame_copy = tmp_path / "flame"

    shutil.copytree(root / "d" / "s" / "flame", flame_copy)
    (flame_copy / LANDMARK_FILE).unlink()
    with pytest.raises(FlameAssetError, match=LANDMARK_FILE):
        track_subject(root / "d", tmp_path / "t", "s", _config(), flame_dir=flame_copy)
    assert not (tmp_path / "t").exists()
    # too few frames
    few = tmp_path / "few" / "f"
    shutil.copytree(root / "d" / "s" / "flame", few / "flame")
    (few / "imgs").mkdir()
    for k in range(3):
        shutil.copy(root / "d" / "s" / "imgs" / f"{k:05d}.png", few / "imgs")
    with pytest.raises(PreprocessError, match="needs at least"):
        track_subject(tmp_path / "few", tmp_path / "t", "f", _config())
    # the command line: one line, exit 2
    assert track_main(["--idname", "nobody", "--data_root", str(tmp_path), "--tracking_root",
                       str(tmp_path / "t"), "--device", "cpu", "--flame_dir",
                       str(root / "d" / "s" / "flame")]) == 2
    assert "imgs" in capsys.readouterr().err


def _capture_track_configs(monkeypatch):
    """(the command line's main, the list each TrackConfig it would track with is appended to)."""
    import preprocessing.track.__main__ as cli

    seen: list[TrackConfig] = []

    def fake_track(data_root, tracking_root, idname, cfg, **kw):
        seen.append(cfg)
        return {"frames": 5, "device": "cpu", "focal": 2.5, "output": str(tracking_root),
                "landmark_stage": {"landmark_error_px": 1.0}, "timings": {"total_s": 0.0}}

    monkeypatch.setattr(cli, "track_subject", fake_track)
    return cli, seen


def test_command_line_runs_the_photometric_stage_by_default(monkeypatch, tmp_path):
    """The pixel stage is on unless --no_photometric; the CPU gets the light settings, a GPU the full ones,
    and --photo_* override either."""
    from preprocessing.track.photometric import photometric_config

    cli, seen = _capture_track_configs(monkeypatch)
    base = ["--idname", "s", "--data_root", str(tmp_path), "--device", "cpu"]
    assert cli.main(base) == 0
    assert cli.main(base + ["--no_photometric"]) == 0
    assert cli.main(base + ["--photometric", "--photo_steps", "7", "--photo_size", "96"]) == 0
    assert cli.main(base + ["--no_photo_nonrigid"]) == 0
    cpu, gpu = photometric_config("cpu"), photometric_config("cuda")
    assert [c.photometric for c in seen] == [True, False, True, True]
    assert seen[0].photo == cpu
    assert (seen[2].photo.steps, seen[2].photo.size, seen[2].photo.batch) == (7, 96, cpu.batch)
    # the non-rigid refinement: on in the CPU preset, off in the GPU one, switchable
    assert cpu.nonrigid and not gpu.nonrigid and seen[2].photo.nonrigid and not seen[3].photo.nonrigid
    # the CPU preset is the lighter one in every dimension that costs time
    assert cpu.steps * cpu.batch * cpu.size ** 2 < gpu.steps * gpu.batch * gpu.size ** 2 / 10
    assert TrackConfig().photometric and TrackConfig().photo is None  # the device's preset, when tracking


def test_command_line_switches_the_avatar_stage(monkeypatch, tmp_path):
    """--avatar_refine / --no_avatar_refine switch the stage (TrackConfig's default otherwise); the device's
    preset is used, and --refine_* override it."""
    from preprocessing.track.avatar_refine import avatar_refine_config

    cli, seen = _capture_track_configs(monkeypatch)
    base = ["--idname", "s", "--data_root", str(tmp_path), "--device", "cpu"]
    assert cli.main(base) == 0
    assert cli.main(base + ["--avatar_refine", "--refine_iterations", "50", "--refine_rounds", "2"]) == 0
    assert cli.main(base + ["--no_avatar_refine"]) == 0
    assert [c.avatar_refine for c in seen] == [None, True, False]  # None: the device and masks decide
    assert TrackConfig().avatar_refine is None
    cpu, gpu = avatar_refine_config("cpu"), avatar_refine_config("cuda")
    assert seen[0].refine == cpu
    assert (seen[1].refine.iterations, seen[1].refine.rounds, seen[1].refine.steps) == (50, 2, cpu.steps)
    assert cpu.iterations * cpu.uv_size ** 2 < gpu.iterations * gpu.uv_size ** 2 / 4  # lighter on the CPU

def test_library_default_takes_the_devices_preset(subject, landmark_fit, tmp_path, monkeypatch):
    """TrackConfig() from Python (no command line) on the CPU gets the light preset, not the GPU settings
    (591 s instead of 76 s for 24 frames at 512 px, session 7)."""
    import preprocessing.track.run as run_mod
    from preprocessing.track.photometric import photometric_config

    root, _, _, _ = subject
    _, _, obs = landmark_fit
    seen = []

    def fake_refine(params, model, obs, images, assets, fit_cfg, cfg, **kw):
        seen.append((cfg, tuple(images.images.shape[-2:])))
        return {"photometric_l1_start": 1.0, "photometric_l1": 0.5, "landmark_error_px": 1.0}

    monkeypatch.setattr(run_mod, "refine_photometric", fake_refine)
    cfg = _config()
    cfg.photometric, cfg.photo = True, None
    track_subject(root / "d", tmp_path / "fit", "s", cfg, observations=obs, device="cpu")
    cpu = photometric_config("cpu")
    assert seen == [(cpu, (cpu.size, cpu.size))]


# ----------------------------------------------------------------------------- a real face
def test_real_portrait_clip(tmp_path):
    """A clip made from a real portrait (skimage's astronaut, moved, turned and zoomed) through the offline
    face mesh and the landmark fit, with the synthetic head model (no licensed FLAME here)."""
    pytest.importorskip("ai_edge_litert", reason="the offline face mesh needs ai-edge-litert")
    from PIL import Image
    from skimage import data

    from flame.synthetic import write_synthetic_flame
    from utils.image_io import write_image

    sub = tmp_path / "d" / "astro"
    img = Image.fromarray(data.astronaut())
    n = 8
    for k in range(n):
        s = 1.0 + 0.2 * np.sin(2 * np.pi * k / n)
        cx, cy = 228 + 20 * np.sin(2 * np.pi * k / n + 1), 150 + 12 * np.cos(2 * np.pi * k / n)
        half = 130 / s
        frame = img.rotate(5 * np.sin(2 * np.pi * k / n + 2), center=(cx, cy), resample=Image.BILINEAR)
        frame = frame.crop((cx - half, cy - half, cx + half, cy + half)).resize((256, 256), Image.BILINEAR)
        write_image(sub / "imgs" / f"{k:05d}.png", np.asarray(frame, dtype=np.float32) / 255.0)
    write_synthetic_flame(sub / "flame", resolution=40)
    cfg = _config()
    summary = track_subject(tmp_path / "d", tmp_path / "t", "astro", cfg)
    print("astronaut clip:", summary["landmark_stage"])
    assert (sub / "track" / "landmarks.npz").is_file()
    # a synthetic head on a real face: a few pixels at 256 px, and the irises on the pupils
    assert summary["landmark_stage"]["landmark_error_px"] < 6.0
    assert summary["landmark_stage"]["iris_error_px"] < 4.0
    assert len(load_sequence(tmp_path / "t" / "astro" / "checkpoint")) == n


def test_expression_prior_follows_the_frame_height():
    """The expression prior is FitConfig.w_expression for 512-px frames and w_expression_128 for 128-px
    ones (log-linear between, constant beyond); only that term of the regularisers changes with the
    height."""
    p = TrackParams(5, 2.5)
    with torch.no_grad():
        p.expression.normal_()
    gaps = torch.ones(4)
    cfg, free = FitConfig(), FitConfig(w_expression=0.0, w_expression_128=0.0)  # a prior switched off
    e2 = p.expression.detach().pow(2).sum(-1).mean()
    for height, weight in ((1024, cfg.w_expression), (512, cfg.w_expression),
                           (256, (cfg.w_expression * cfg.w_expression_128) ** 0.5),
                           (128, cfg.w_expression_128), (64, cfg.w_expression_128)):
        term = regularisers(p, cfg, gaps, height) - regularisers(p, free, gaps, height)
        assert torch.allclose(term, weight * e2, rtol=1e-4), height
