"""Frame listing, organising and validating a subject folder (no models needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocessing.frames_io import PreprocessError, check_same_size, list_images, natural_key, open_frames
from preprocessing.organize import MAP_FILE, organize, plan_organize
from preprocessing.validate import validate_subject
from preprocessing.video_to_subject import crop_box, crop_resize, extract_frames, parse_crop
from utils.image_io import read_image_uint8, read_mask_uint8, write_image

REPO = Path(__file__).resolve().parent.parent


def _img(value: int, hw: tuple[int, int] = (8, 6)) -> np.ndarray:
    a = np.zeros((*hw, 3), dtype=np.uint8)
    a[..., 0] = value
    return a


def _raw_subject(root: Path, names: list[str], hw: tuple[int, int] = (8, 6)) -> None:
    """imgs/alpha/parsing with arbitrary names; the red channel of each image encodes its index."""
    for i, n in enumerate(names):
        write_image(root / "imgs" / f"{n}.png", _img(10 * i + 5, hw))
        write_image(root / "alpha" / f"{n}.png", np.full(hw, (10 * i + 5) / 255.0))
        write_image(root / "parsing" / f"{n}_neckhead.png", np.ones(hw))
        mouth = np.zeros(hw)
        mouth[i % hw[0], 0] = 1.0
        write_image(root / "parsing" / f"{n}_mouth.png", mouth)


def test_natural_order() -> None:
    names = ["f10.png", "f2.png", "f1.png", "F3.png", "f21.png"]
    assert sorted(names, key=natural_key) == ["f1.png", "f2.png", "F3.png", "f10.png", "f21.png"]
    assert sorted(["00010.png", "00002.png"], key=natural_key) == ["00002.png", "00010.png"]


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(PreprocessError, match="not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreprocessError, match="holds no images"):
        list_images(tmp_path / "empty")
    d = tmp_path / "mixed"
    write_image(d / "a.png", _img(1))
    (d / "notes.txt").write_text("x")
    (d / ".DS_Store").write_text("x")  # hidden clutter is ignored
    with pytest.raises(PreprocessError, match=r"not images.*notes\.txt"):
        list_images(d)
    (d / "notes.txt").unlink()
    assert [p.name for p in list_images(d)] == ["a.png"]


def test_mixed_sizes_refused(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", _img(1, (8, 6)))
    write_image(tmp_path / "b.png", _img(1, (8, 6)))
    write_image(tmp_path / "c.png", _img(1, (6, 8)))
    files = list_images(tmp_path)
    with pytest.raises(PreprocessError, match=r"mixed sizes.*6x8.*c\.png"):
        check_same_size(files)
    with pytest.raises(PreprocessError, match="mixed sizes"):
        open_frames(tmp_path)


def test_undecodable_video(tmp_path: Path) -> None:
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00not a video" * 50)
    with pytest.raises(PreprocessError, match=r"clip\.mp4: cannot open the video.*re-encode"):
        open_frames(bad)
    with pytest.raises(PreprocessError, match="not found"):
        open_frames(tmp_path / "missing.mp4")


def test_video_damaged_in_the_middle_is_warned_about(tmp_path: Path) -> None:
    """Issue 12: ffmpeg conceals damage (the frame count stays whole), so its error lines are counted."""
    import warnings

    import imageio.v2 as imageio

    with imageio.get_writer(tmp_path / "v.mp4", fps=25, codec="libx264", quality=8, macro_block_size=1,
                            ffmpeg_log_level="error") as w:
        for k in range(60):
            img = np.zeros((64, 64, 3), np.uint8)
            img[..., 0] = 4 * k
            img[10:30, k % 50:k % 50 + 10] = 255
            w.append_data(img)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an intact clip: no warning
        assert len(open_frames(tmp_path / "v.mp4")) == 60
    data = bytearray((tmp_path / "v.mp4").read_bytes())
    rng = np.random.default_rng(0)
    mid = len(data) // 2
    data[mid:mid + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    (tmp_path / "bad.mp4").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"bad\.mp4: ffmpeg reported \d+ decoding error"):
        src = open_frames(tmp_path / "bad.mp4")
    assert len(src) == 60  # concealed, not dropped: without the warning nothing would tell


def test_video_frames_and_crop(tmp_path: Path) -> None:
    import imageio.v2 as imageio

    frames = [np.full((48, 64, 3), 40 * i + 20, dtype=np.uint8) for i in range(4)]
    for f in frames:
        f[:, :8] = 255  # a white left band that the centre crop removes
    with imageio.get_writer(
        tmp_path / "v.mp4", fps=5, codec="libx264", quality=10, macro_block_size=1, ffmpeg_log_level="error"
    ) as w:
        for f in frames:
            w.append_data(f)
    src = open_frames(tmp_path / "v.mp4")
    assert len(src) == 4 and src.size == (48, 64) and src.names[0] == "00000"
    assert parse_crop("center") == "center" and parse_crop("1,2,3,4") == (1, 2, 3, 4)
    with pytest.raises(PreprocessError, match="X,Y,W,H"):
        parse_crop("1,2")
    assert crop_box("center", (48, 64), frames[0]) == (8, 0, 48, 48)
    with pytest.raises(PreprocessError, match="outside"):
        crop_box((40, 0, 30, 10), (48, 64), frames[0])
    out = crop_resize(frames[0], (8, 0, 48, 48), 24)
    assert out.shape == (24, 24, 3)
    n = extract_frames(
        tmp_path / "v.mp4", tmp_path / "subj", crop="center", size=24, every=2, show_progress=False
    )
    assert n == 2
    names = sorted(p.name for p in (tmp_path / "subj" / "imgs").iterdir())
    assert names == ["00000.png", "00001.png"]
    got = read_image_uint8(tmp_path / "subj" / "imgs" / "00001.png")
    assert got.shape == (24, 24, 3)
    # frame 2 of the video (every=2): grey 100, the white band cropped away (H.264 is lossy: +-6)
    assert abs(float(got.mean()) - 100.0) < 6.0
    settings = json.loads((tmp_path / "subj" / "preprocess.json").read_text())
    assert settings["crop_box_xywh"] == [8, 0, 48, 48] and settings["source_frames"] == ["00000", "00002"]
    with pytest.raises(PreprocessError, match="other settings"):
        extract_frames(
            tmp_path / "v.mp4", tmp_path / "subj", crop="none", size=24, every=2, show_progress=False
        )


def test_organize_renames_in_natural_order(tmp_path: Path) -> None:
    names = ["frame_10", "frame_2", "frame_1", "frame_9"]
    _raw_subject(tmp_path, names)
    order = sorted(names, key=natural_key)  # frame_1, frame_2, frame_9, frame_10
    write_image(tmp_path / "comp" / "frame_1.png", _img(1))
    with pytest.raises(PreprocessError, match=r"comp: 1 file\(s\) for 4 frame\(s\).*missing 3"):
        plan_organize(tmp_path)
    for n in order[1:]:
        write_image(tmp_path / "comp" / f"{n}.png", _img(1))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    plan = organize(tmp_path, dry_run=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png")) == before  # dry run: untouched
    assert len(plan.renames) == 5 * 4
    organize(tmp_path)
    for k, old in enumerate(order):
        i = names.index(old)  # the value written for that original frame
        assert read_image_uint8(tmp_path / "imgs" / f"{k:05d}.png")[0, 0, 0] == 10 * i + 5
        assert read_mask_uint8(tmp_path / "alpha" / f"{k:05d}.png")[0, 0] == 10 * i + 5
        assert read_mask_uint8(tmp_path / "parsing" / f"{k:05d}_mouth.png")[i % 8, 0] == 255
        assert (tmp_path / "parsing" / f"{k:05d}_neckhead.png").is_file()
    assert json.loads((tmp_path / MAP_FILE).read_text())["frames"] == {
        o: f"{k:05d}" for k, o in enumerate(order)
    }
    assert not [p for p in tmp_path.rglob("*") if "organize-" in p.name]
    assert organize(tmp_path).renames == []  # idempotent


def test_organize_overlapping_numbers(tmp_path: Path) -> None:
    """ffmpeg numbers from 00001: shifting every frame down by one must not clobber anything."""
    _raw_subject(tmp_path, ["00001", "00002", "00003"])
    organize(tmp_path)
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert [read_image_uint8(tmp_path / "imgs" / f"{k:05d}.png")[0, 0, 0] for k in range(3)] == [5, 15, 25]


def test_organize_refuses_disagreeing_folders(tmp_path: Path) -> None:
    _raw_subject(tmp_path, ["a1", "a2", "a3"])
    (tmp_path / "alpha" / "a2.png").unlink()
    write_image(tmp_path / "parsing" / "zz_mouth.png", np.zeros((8, 6)))
    with pytest.raises(PreprocessError) as exc:
        organize(tmp_path)
    msg = str(exc.value)
    assert "alpha: 2 file(s) for 3 frame(s)" in msg and "missing 1: a2" in msg and "not in imgs/ 1: zz" in msg
    assert (tmp_path / "imgs" / "a1.png").is_file()  # nothing renamed
    (tmp_path / "parsing" / "weird.png").write_bytes(b"")
    with pytest.raises(PreprocessError, match="not named <frame>_neckhead"):
        organize(tmp_path)


def _tracked(path: Path, hw: tuple[int, int]) -> None:
    from scene.data.tracking import save_tracked_frame

    K = np.array([[500.0, 0, hw[1] / 2], [0, 500.0, hw[0] / 2], [0, 0, 1]])
    save_tracked_frame(
        path,
        shape=np.zeros(300),
        expression=np.zeros(100),
        R=np.eye(3),
        t=np.array([0, 0, 1.0]),
        K=K,
        img_size=hw,
    )


def test_validator_lists_every_problem(tmp_path: Path) -> None:
    subj, track = tmp_path / "s", tmp_path / "track"
    _raw_subject(subj, ["00000", "00001", "00002", "00003"])
    for k in range(4):
        _tracked(track / f"{k:05d}.frame", (8, 6))
    from flame.synthetic import write_synthetic_flame

    write_synthetic_flame(subj / "flame", resolution=16)  # train.py needs a FLAME folder; so does "OK"
    report = validate_subject(subj, track)
    assert report.ok, report.render()
    assert report.n_frames == 4
    # break it in several ways at once
    (subj / "alpha" / "00002.png").unlink()
    (subj / "imgs" / "notes.txt").write_text("x")
    write_image(subj / "parsing" / "00001_neckhead.png", np.zeros((8, 6)))
    write_image(subj / "parsing" / "00003_mouth.png", np.zeros((8, 6)))
    write_image(subj / "alpha" / "00003.png", np.zeros((6, 6)))
    (track / "00001.frame").unlink()
    (track / "00003.frame").write_bytes(b"garbage")
    report = validate_subject(subj, track)
    text = report.render()
    assert not report.ok
    expected = [
        "notes.txt",
        "alpha: missing for 1 frame(s) of imgs/: 00002",
        "empty neck-head mask for 1 frame(s): 00001",
        "alpha/00003.png (6, 6)",
        "no tracking for 1 image(s)",
        "00001->00001.frame",
        "00003.frame",
    ]
    for piece in expected:
        assert piece in text, (piece, text)
    assert any("empty mouth mask" in w for w in report.warnings)
    assert len(report.problems) >= 6


def test_validator_agrees_with_training(tmp_path: Path, capsys) -> None:
    """Issue 12.3: what train.py refuses, validate.py reports (it runs the same checks)."""
    from preprocessing import validate
    from preprocessing.synthetic_subject import make_synthetic_subject
    from scene.data.tracking import load_tracked_frame, save_tracked_frame

    make_synthetic_subject(tmp_path / "d", tmp_path / "t", "s", n_frames=6, image_size=32, resolution=16)
    args = ["--idname", "s", "--data_root", str(tmp_path / "d"), "--tracking_root", str(tmp_path / "t")]
    assert validate.main(args) == 0 and "OK: ready for training" in capsys.readouterr().out
    frame = tmp_path / "t" / "s" / "checkpoint" / "00002.frame"
    f = load_tracked_frame(frame)
    save_tracked_frame(frame, shape=f.shape.numpy(), expression=f.expression.numpy() + 1e30, R=f.R.numpy(),
                       t=f.t.numpy(), K=f.K.numpy(), img_size=f.img_size, frame_id=2)
    assert validate.main(args) == 1 and "00002.frame" in capsys.readouterr().out
    save_tracked_frame(frame, shape=f.shape.numpy(), expression=f.expression.numpy(), R=f.R.numpy(),
                       t=f.t.numpy(), K=f.K.numpy(), img_size=f.img_size, frame_id=2)
    (tmp_path / "d" / "s" / "imgs" / "00004.png").write_bytes((tmp_path / "d" / "s" / "imgs" / "00004.png"
                                                                ).read_bytes()[:120])  # truncated
    assert validate.main([*args, "--quick"]) == 1 and "00004.png" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "d" / "s" / "imgs")
    shutil.copytree(tmp_path / "d" / "s" / "alpha", tmp_path / "d" / "s" / "imgs")  # grey, but intact
    (tmp_path / "d" / "s" / "flame" / "generic_model.pkl").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    assert validate.main(args) == 1
    out = capsys.readouterr().out
    assert "generic_model.pkl" in out and "OK: ready" not in out


def test_validator_tracking_size_and_delta(tmp_path: Path) -> None:
    subj, track = tmp_path / "s", tmp_path / "track"
    _raw_subject(subj, ["00001", "00002"])
    _tracked(track / "00000.frame", (8, 6))
    _tracked(track / "00001.frame", (16, 12))
    from flame.synthetic import write_synthetic_flame

    write_synthetic_flame(subj / "flame", resolution=16)
    assert validate_subject(subj, track).problems  # delta 0: image 00002 has no frame 00002
    report = validate_subject(subj, track, frame_delta=1)
    assert len(report.problems) == 1 and "tracked at another image size" in report.problems[0]
    assert "00001.frame (16, 12)" in report.problems[0]
    missing = validate_subject(tmp_path / "nothing")
    assert not missing.ok and "subject folder not found" in missing.problems[0]


def test_scripts_from_repo_root(tmp_path: Path, capsys) -> None:
    """docs/maths.md section 1's commands run as scripts from the repo root; validate's CLI lists problems,
    exit code 1."""
    _raw_subject(tmp_path / "s", ["x1", "x2"])
    script = (
        f"{sys.executable} preprocessing/rvm.py --help >/dev/null && "
        f"{sys.executable} preprocessing/semantic.py --help >/dev/null && "
        f"{sys.executable} preprocessing/organize.py --data_path {tmp_path / 's'} --dry_run"
    )
    out = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "imgs/x1.png -> imgs/00000.png" in out.stdout
    from preprocessing import validate

    assert validate.main(["--data_path", str(tmp_path / "s")]) == 1
    assert "not named by a 5-digit frame number" in capsys.readouterr().out
    assert validate.main([]) == 2


def test_drop_frames_moves_a_frame_out_whole(tmp_path: Path) -> None:
    """Issue 12: --no_face drop moves the frame's image, matte, composite and masks to no_face/."""
    from preprocessing.video_to_subject import drop_frames

    subj = tmp_path / "s"
    for stem in ("00000", "00001", "00010"):
        for folder in ("imgs", "alpha", "comp"):
            write_image(subj / folder / f"{stem}.png", np.zeros((4, 4)))
        for kind in ("neckhead", "mouth"):
            write_image(subj / "parsing" / f"{stem}_{kind}.png", np.zeros((4, 4)))
    assert drop_frames(subj, ["00001"]) == 5
    left = sorted(str(p.relative_to(subj)) for p in subj.rglob("*.png") if "no_face" not in p.parts)
    assert left == sorted(f"{f}/{s}.png" for f in ("imgs", "alpha", "comp") for s in ("00000", "00010")) + \
        sorted(f"parsing/{s}_{k}.png" for s in ("00000", "00010") for k in ("mouth", "neckhead"))
    moved = sorted(str(p.relative_to(subj / "no_face")) for p in (subj / "no_face").rglob("*.png"))
    assert moved == ["alpha/00001.png", "comp/00001.png", "imgs/00001.png", "parsing/00001_mouth.png",
                     "parsing/00001_neckhead.png"]
