"""view.py: browser cameras, expression edits, the rendered views, and the page in a real browser.

The browser test starts the viewer on a checkpoint trained here on the synthetic subject (CPU), opens the
page in headless Chromium (Debian's chromium + chromium-driver, driven through selenium) and checks that
a frame of the head arrives, that the jaw slider changes the mouth region and the timeline the frame.
"""

from __future__ import annotations

import math
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flame.condition import EXPRESSION, EYELIDS, JAW, LEFT_EYE, edited_condition
from scene.data.cameras import Camera
from utils.rotations import rot6d_to_matrix, rotation_about_x

# ------------------------------------------------------------------------------ pure functions


def test_pose_round_trip_and_intrinsics():
    from scene.viewer import camera_of_pose, pose_of_camera

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, dtype=torch.float64), dim=0)
    from utils.rotations import quaternion_to_matrix

    R = quaternion_to_matrix(q).float()
    K = torch.tensor([[300.0, 0, 64.0], [0, 300.0, 48.0], [0, 0, 1]])
    cam = Camera(R, torch.tensor([0.01, -0.02, 1.1]), K, 128, 96)
    pose = pose_of_camera(cam)
    assert math.isclose(pose.fov_y, 2 * math.atan(48 / 300), rel_tol=1e-9)
    back = camera_of_pose(pose, 128, 96)
    torch.testing.assert_close(back.R, cam.R, atol=1e-6, rtol=0)
    torch.testing.assert_close(back.t, cam.t, atol=1e-6, rtol=0)
    torch.testing.assert_close(back.K, K, atol=1e-4, rtol=0)  # square pixels, centred principal point
    # a point projects to the same pixel through both
    p = torch.tensor([[0.03, 0.02, 0.0]])
    torch.testing.assert_close(back.project(p), cam.project(p), atol=1e-4, rtol=0)


def test_edited_condition():
    from flame.condition import canonical_condition

    c = canonical_condition(dtype=torch.float64)
    c[EXPRESSION] = torch.randn(100, dtype=torch.float64)
    assert torch.equal(edited_condition(c), c)  # no edit: the same condition
    e = edited_condition(c, jaw_open_rad=0.2, eyelids=0.5, expression=[1.0, -2.0], eye_pitch_rad=0.1)
    torch.testing.assert_close(rot6d_to_matrix(e[JAW]), rotation_about_x(0.2, dtype=torch.float64))
    torch.testing.assert_close(rot6d_to_matrix(e[LEFT_EYE]), rotation_about_x(0.1, dtype=torch.float64))
    assert torch.allclose(e[EYELIDS], c[EYELIDS] + 0.5)
    assert torch.allclose(e[:2], c[:2] + torch.tensor([1.0, -2.0], dtype=torch.float64))
    assert torch.equal(e[2:100], c[2:100])
    # edits compose with the frame's own jaw: R -> Rx(a) R
    c2 = edited_condition(c, jaw_open_rad=0.1)
    torch.testing.assert_close(rot6d_to_matrix(edited_condition(c2, jaw_open_rad=0.1)[JAW]),
                               rotation_about_x(0.2, dtype=torch.float64))


def test_fit_height_and_fit_size():
    from scene.viewer import fit_height, fit_size

    assert fit_size(2000, 1000, 1024) == (1024, 512)
    assert fit_size(300, 200, 1024) == (300, 200)
    img = torch.rand(3, 10, 10)
    out = fit_height(img, 30, 10, torch.ones(3))  # a wide panel: padded at the sides
    assert out.shape == (3, 10, 30)
    torch.testing.assert_close(out[:, :, 10:20], img)
    assert torch.all(out[:, :, :10] == 1) and torch.all(out[:, :, 20:] == 1)
    narrow = fit_height(img, 4, 10, torch.ones(3))  # a narrow panel: the middle columns, same scale
    torch.testing.assert_close(narrow, img[:, :, 3:7])
    up = fit_height(img, 20, 20, torch.ones(3))  # scaled with the panel's height
    assert up.shape == (3, 20, 20) and torch.allclose(up.mean(), img.mean(), atol=0.05)


# ------------------------------------------------------------------------------ a trained run
@pytest.fixture(scope="module")
def viewer_run(synthetic_subject, tmp_path_factory):
    """A short HyperGaussians run on the synthetic subject (CPU): the checkpoint the viewer shows. Trained
    over white: after these 150 steps of a tiny model over random backgrounds (the default) the first and
    last frames' renders differ in too few pixels for the timeline check below; the viewer is tested here,
    not the training (the random background's own test is tests/test_background.py)."""
    import train

    data_root, tracking_root, idname = synthetic_subject
    logs = tmp_path_factory.mktemp("viewer_logs")
    args = ["--idname", idname, "--data_root", str(data_root), "--tracking_root", str(tracking_root),
            "--log_root", str(logs), "--ours", "--test_num", "4", "--eval_num", "4", "--uv_size", "32",
            "--hidden_dim", "32", "--hidden_layers", "2", "--latent_dim", "8", "--iterations", "150",
            "--skip_test", "--lambda_lpips", "0", "--grid_every", "0", "--device", "cpu",
            "--random_background", "0"]
    rc = train.main(args)
    assert rc == 0
    return logs / f"{idname}_ours"


def _model(run: Path, *extra: str):
    from scene.viewer import ViewerModel
    from utils.options import parse_view_args

    return ViewerModel(parse_view_args(["-m", str(run), "--device", "cpu", *extra]))


def test_viewer_model_renders_the_tracked_view(viewer_run):
    """At the tracked camera and canvas size the view is the avatar's render of that frame; ground truth
    beside it is the frame's image; the jaw edit changes the picture."""
    from gaussian_renderer import render
    from scene.viewer import ViewRequest, camera_of_pose, pose_of_camera
    from utils.image_io import to_uint8

    m = _model(viewer_run)
    k = 3
    cam = m.tracked_camera(k)
    req = ViewRequest(k, pose_of_camera(cam), cam.image_width, cam.image_height)
    view = m.render(req)
    centred = camera_of_pose(req.pose, cam.image_width, cam.image_height)  # the browser's pinhole model
    torch.testing.assert_close(centred.R, cam.R, atol=1e-6, rtol=0)
    with torch.no_grad():
        gs, _ = m.main.avatar.deform(m.subject.condition(k), centred)
        ref = to_uint8(render(centred, gs, m.background).image)
    assert view.shape == ref.shape == (cam.image_height, cam.image_width, 3)
    assert np.abs(view.astype(int) - ref.astype(int)).max() <= 1
    both = m.render(ViewRequest(k, req.pose, 2 * cam.image_width, cam.image_height, ground_truth=True))
    assert both.shape == (cam.image_height, 2 * cam.image_width, 3)
    gt = to_uint8(m.subject.frame(k).image)
    top = 10  # the caption strip over each side-by-side panel (64 px wide: 10 rows)
    assert np.abs(both[top:, cam.image_width:].astype(int) - gt[top:].astype(int)).max() <= 1
    assert both[:top].min() < 128 and both[:top].mean() > 200  # dark text on a white strip
    from scene.viewer import Edits

    opened = m.render(ViewRequest(k, req.pose, cam.image_width, cam.image_height, Edits(jaw_open_deg=25.0)))
    assert np.abs(opened.astype(int) - view.astype(int)).max() > 20
    unc = m.render(ViewRequest(k, req.pose, cam.image_width, cam.image_height, uncertainty=True))
    assert np.abs(unc.astype(int) - view.astype(int)).mean() > 5


def test_viewer_compare_and_orbit(viewer_run, synthetic_subject):
    """--compare renders a second run beside the first with the same camera; the orbit starts at the view
    and turns the head (the half-turn shows another side)."""
    import train
    from scene.viewer import ViewRequest, pose_of_camera

    data_root, tracking_root, idname = synthetic_subject
    args = ["--idname", idname, "--data_root", str(data_root), "--tracking_root", str(tracking_root),
            "--log_root", str(viewer_run.parent), "--test_num", "4", "--eval_num", "4", "--uv_size", "32",
            "--hidden_dim", "32", "--hidden_layers", "2", "--iterations", "60", "--skip_test",
            "--lambda_lpips", "0", "--grid_every", "0", "--device", "cpu"]
    assert train.main(args) == 0
    other = viewer_run.parent / f"{idname}_baseline"
    single, both = _model(viewer_run), _model(viewer_run, "--compare", str(other))
    assert both.labels == ["ours @ 150", "baseline @ 60"]
    cam = single.tracked_camera(2)
    w, h = cam.image_width, cam.image_height
    pose = pose_of_camera(cam)
    alone = single.render(ViewRequest(2, pose, w, h))
    pair = both.render(ViewRequest(2, pose, 2 * w, h))
    assert pair.shape == (h, 2 * w, 3)
    top = 10  # below the panels' caption strips
    assert np.abs(pair[top:, :w].astype(int) - alone[top:].astype(int)).max() <= 1  # the run, same camera
    assert np.abs(pair[top:, w:].astype(int) - alone[top:].astype(int)).mean() > 1  # the other run
    frames = single.orbit(ViewRequest(2, pose, w, h), 4)
    assert len(frames) == 4 and np.array_equal(frames[0], alone)
    assert np.abs(frames[2].astype(int) - alone.astype(int)).mean() > 3


def test_viewer_plays_another_subjects_sequence(viewer_run, synthetic_subject, tmp_path):
    """--cross SRC: the timeline runs over SRC's tracked frames (expressions and cameras), with no ground
    truth (SRC's images are not the avatar's)."""
    from preprocessing.synthetic_subject import make_synthetic_subject
    from scene.viewer import ViewRequest, pose_of_camera

    make_synthetic_subject(tmp_path / "data", tmp_path / "track", "src", n_frames=5, image_size=48, seed=5,
                           resolution=16)
    shutil.rmtree(tmp_path / "data" / "src" / "imgs")  # tracking only
    m = _model(viewer_run, "--cross", "src", "--cross_data_root", str(tmp_path / "data"),
               "--cross_tracking_root", str(tmp_path / "track"))
    assert m.n_frames == 5 and not m.has_ground_truth(0)
    torch.testing.assert_close(m.tracked_camera(1).K, m.source.camera(1).K)
    pose = pose_of_camera(m.subject.camera(0))
    a = m.render(ViewRequest(0, pose, 64, 64, ground_truth=True))
    b = m.render(ViewRequest(3, pose, 64, 64, ground_truth=True))
    assert a.shape == (64, 64, 3)  # no ground-truth panel for another subject's motion
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0  # its expressions move the avatar


def test_view_script_refuses_bad_input(viewer_run, tmp_path, capsys):
    import view

    assert view.main(["-m", str(viewer_run), "--device", "cpu", "--compare", str(tmp_path)]) == 2
    assert "not a train.py run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        view.main(["-m", str(tmp_path)])  # not a run folder: argparse's error
    assert "train_log.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the page in Chromium
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _browser_missing() -> str | None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    for module in ("selenium", "viser"):
        try:
            __import__(module)
        except ImportError:
            return f"needs {module} (pip install -e '.[test,view]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _screenshot(driver) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)


def _wait_for(predicate, timeout: float = 60.0, every: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value is not None:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


def _slider(driver, label: str):
    """The slider thumb of the control labelled ``label`` (viser's sliders have no accessible name)."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, f"//*[normalize-space(text())='{label}']/ancestor::*"
                                         f"[.//*[@role='slider']][1]//*[@role='slider']")


@pytest.mark.slow
@pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")
def test_viewer_in_headless_chromium(viewer_run, tmp_path):
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.keys import Keys

    from scene.viewer_app import ViewerApp

    model = _model(viewer_run, "--max_size", "400")
    app = ViewerApp(model, port=_free_port(), out_dir=tmp_path / "viewer")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--window-size=1400,900", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(app.url)
        bg = np.asarray(model.background.cpu()) * 255

        def middle(shot: np.ndarray) -> np.ndarray:  # the head's part of the canvas, clear of the controls
            h, w, _ = shot.shape
            return shot[h // 5: 4 * h // 5, w // 4: 3 * w // 4]

        def head_pixels(shot: np.ndarray) -> np.ndarray:
            """Pixels of the middle of the canvas that differ from the avatar's background."""
            h, w, _ = shot.shape
            mid = shot[h // 5: 4 * h // 5, w // 4: 3 * w // 4]
            return np.abs(mid - bg).sum(-1) > 60

        def frame_arrived():
            shot = _screenshot(driver)
            return shot if head_pixels(shot).mean() > 0.05 and app._rendered else None

        _wait_for(frame_arrived)

        def settled():  # the page fades a new background image in: wait until two shots agree
            a = _screenshot(driver)
            time.sleep(0.5)
            b = _screenshot(driver)
            return b if (np.abs(middle(a) - middle(b)).sum(-1) > 30).sum() < 10 else None

        first = _wait_for(settled)
        Image.fromarray(first.astype(np.uint8)).save(tmp_path / "first.png")
        mask = head_pixels(first)
        assert 0.05 < mask.mean() < 0.9  # the head, not a blank or a full-screen colour
        assert first.std() > 20
        # the jaw slider opens the mouth: pixels change in the lower part of the head
        version = app._version
        thumb = _slider(driver, "Jaw opening (deg)")
        thumb.click()
        thumb.send_keys(Keys.END)
        _wait_for(lambda: True if app._version > version and abs(app.jaw.value - 30.0) < 1e-6 else None, 20)

        def changed_from(before: np.ndarray):
            def check():
                shot = _screenshot(driver)
                return shot if (np.abs(middle(shot) - middle(before)).sum(-1) > 30).sum() > 50 else None
            return check

        _wait_for(changed_from(first))
        opened = _wait_for(settled)
        diff = np.abs(middle(opened) - middle(first)).sum(-1) > 30
        ys, _ = np.nonzero(diff)
        head_ys, _ = np.nonzero(mask)
        Image.fromarray(opened.astype(np.uint8)).save(tmp_path / "jaw_open.png")
        assert diff.sum() > 50
        assert np.median(ys) > np.median(head_ys)  # the change is below the head's middle: the mouth
        # the timeline changes the frame
        thumb = _slider(driver, "Frame")
        thumb.click()
        thumb.send_keys(Keys.END)
        _wait_for(lambda: True if app.timeline.value == model.n_frames - 1 else None, 20)
        _wait_for(changed_from(opened))
        # save buttons write into the viewer folder
        client = next(iter(app.server.get_clients().values()))
        png = app._save_png(client)
        assert png is not None and png.is_file()
    finally:
        driver.quit()
        app.close()
