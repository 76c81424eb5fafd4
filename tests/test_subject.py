"""scene/data/subject.py on hand-written subjects: pairing by number, compositing, split, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flame.condition import build_condition
from scene.data.subject import Subject, SubjectDataError
from scene.data.tracking import TrackingFileError, save_tracked_frame
from utils.image_io import ImageReadError

H, W = 6, 8  # non-square on purpose: img_size is [h, w]


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_subject(root: Path, image_numbers, frame_numbers, *, idname: str = "s", size=(H, W),
                 img_size=(H, W), ext: str = "png") -> tuple[Path, Path]:
    """Images with pixel values derived from the image number; .frame files whose expression[0]
    holds the frame number and whose K has an off-centre principal point."""
    data, track = root / "data", root / "track"
    rng = np.random.default_rng(0)
    for n in image_numbers:
        d = data / idname
        img = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        img[0, 0] = (n, 0, 0)
        _write(d / "imgs" / f"{n:05d}.{ext}", img)
        _write(d / "alpha" / f"{n:05d}.png", rng.integers(0, 256, size=size, dtype=np.uint8))
        head = np.full(size, 255, np.uint8)
        head[:, : size[1] // 2] = 128
        _write(d / "parsing" / f"{n:05d}_neckhead.png", head)
        mouth = np.zeros(size, np.uint8)
        mouth[2:4, 3:5] = 255
        _write(d / "parsing" / f"{n:05d}_mouth.png", mouth)
    for m in frame_numbers:
        expr = np.zeros(100)
        expr[0] = m
        K = np.array([[50.0, 0, 3.25], [0, 52.0, 2.5], [0, 0, 1]])
        save_tracked_frame(track / idname / "checkpoint" / f"{m:05d}.frame", shape=np.full(300, 0.5 + m),
                           expression=expr, jaw=np.arange(6) + m, eyes=np.arange(12) * 0.1,
                           eyelids=[0.25, m / 10], R=np.eye(3), t=[0.0, 0.0, 1.0 + m], K=K, img_size=img_size)
    return data, track


def test_frame_delta_pairs_by_number(tmp_path: Path) -> None:
    data, track = make_subject(tmp_path, range(1, 8), range(0, 7))
    s = Subject(data, track, "s", frame_delta=1, test_num=2, eval_num=1)
    assert s.frame_ids == list(range(1, 8)) and len(s) == 7
    for i, n in enumerate(s.frame_ids):
        assert s.tracked(i).frame_id == n - 1
        assert s.condition(i)[0].item() == n - 1
        fd = s.frame(i)
        assert fd.frame_id == n and fd.index == i
    assert s.shape.shape == (300,) and torch.all(s.shape == 0.5)  # from the first paired frame (00000)
    # without the delta nothing lines up: both sides are named exactly
    with pytest.raises(SubjectDataError) as err:
        Subject(data, track, "s", test_num=2)
    msg = str(err.value)
    assert "images 00007" in msg and "frames 00000" in msg and "frame_delta" in msg


def test_missing_frames_are_named_and_pairing_survives_gaps(tmp_path: Path) -> None:
    data, track = make_subject(tmp_path, [0, 1, 2, 4, 5, 6, 10], [0, 1, 2, 3, 4, 5, 6, 11])
    with pytest.raises(SubjectDataError) as err:
        Subject(data, track, "s", test_num=1)
    msg = str(err.value)
    assert "image(s)" in msg and "images 00010" in msg
    assert "frames 00003, 00011" in msg
    with pytest.warns(UserWarning, match="paired frames"):
        s = Subject(data, track, "s", test_num=1, allow_missing=True)
    assert s.frame_ids == [0, 1, 2, 4, 5, 6]
    assert [s.tracked(i).frame_id for i in range(len(s))] == [0, 1, 2, 4, 5, 6]
    assert [int(s.condition(i)[0]) for i in range(len(s))] == [0, 1, 2, 4, 5, 6]


def test_ground_truth_compositing_and_masks(tmp_path: Path) -> None:
    data, track = make_subject(tmp_path, range(3), range(3), ext="jpg")
    for bg_name, bg in (("white", (1.0, 1.0, 1.0)), ("green", (0.0, 1.0, 0.0))):
        s = Subject(data, track, "s", test_num=1, background=bg_name)
        fd = s.frame(2)
        d = data / "s"
        img = np.asarray(Image.open(d / "imgs" / "00002.jpg").convert("RGB"), np.float64) / 255
        a = np.asarray(Image.open(d / "alpha" / "00002.png"), np.float64)[..., None] / 255
        h = np.asarray(Image.open(d / "parsing" / "00002_neckhead.png"), np.float64)[..., None] / 255
        bgv = np.array(bg)
        ref = img * a + bgv * (1 - a)
        ref = ref * h + bgv * (1 - h)
        assert fd.image.shape == (3, H, W) and fd.head_mask.shape == (1, H, W)
        np.testing.assert_allclose(fd.image.permute(1, 2, 0).numpy(), ref, atol=1e-6)
        np.testing.assert_allclose(fd.head_mask[0].numpy(), h[..., 0], atol=1e-7)
        assert fd.mouth_mask.sum().item() == 4.0
    # preloading gives the very same tensors, and so does picking the frame by a device index (what a
    # whole-step CUDA graph replays), which keeps the template's host fields
    s2 = Subject(data, track, "s", test_num=1, background="green", preload="cpu")
    assert not s2.frames_on_device() and not s.frames_on_device()  # (a CUDA device's cache only)
    for i in range(3):
        a, b = s.frame(i), s2.frame(i)
        assert torch.equal(a.image, b.image) and torch.equal(a.mouth_mask, b.mouth_mask)
        template = s2.frame((i + 1) % 3)
        g = s2.gather_frame(torch.tensor([i]), template)
        assert g.index == template.index and g.camera is template.camera
        for name in ("image", "head_mask", "mouth_mask", "coverage", "condition"):
            assert torch.equal(getattr(g, name), getattr(a, name)), name
    # read ahead in two halves (render.py: decoding on reader threads, the device part on the caller's):
    # the stored uint8 image and its three masks, then the same frame as frame() gives
    img_u8, masks_u8 = s.frame_images(1)
    assert img_u8.dtype == masks_u8.dtype == torch.uint8 and img_u8.device.type == "cpu"
    assert img_u8.shape == (3, H, W) and masks_u8.shape == (3, H, W)
    whole, halves = s.frame(1), s.frame_from(1, (img_u8, masks_u8))
    for name in ("image", "head_mask", "mouth_mask", "coverage", "condition"):
        assert torch.equal(getattr(halves, name), getattr(whole, name)), name
    with pytest.raises(IndexError, match="out of range"):
        s.frame_images(3)


def test_split_cameras_and_conditions(tmp_path: Path) -> None:
    data, track = make_subject(tmp_path, range(6), range(6))
    s = Subject(data, track, "s", test_num=2, eval_num=50)
    assert s.train_indices == [0, 1, 2, 3] and s.test_indices == [4, 5] and s.eval_indices == [4, 5]
    s = Subject(data, track, "s", test_num=3, eval_num=1, max_train=2)
    assert s.train_indices == [0, 1] and s.test_indices == [3, 4, 5] and s.eval_indices == [5]
    s = Subject(data, track, "s", test_num=0)
    assert s.train_indices == list(range(6)) and s.test_indices == [] and s.eval_indices == []
    with pytest.raises(SubjectDataError, match=r"6 paired frame\(s\), too few for test_num=6.*--test_num"):
        Subject(data, track, "s", test_num=6)
    # conditions: one (N, 120) matrix; rows = concat(expr, jaw, eyes, eyelids) of each frame
    assert s.conditions.shape == (6, 120)
    for i in range(6):
        t = s.tracked(i)
        ref = torch.cat([t.expression, t.jaw, t.eyes, t.eyelids])
        assert torch.equal(s.condition(i), ref)
        assert s.condition(i)[100:106].tolist() == [i, i + 1, i + 2, i + 3, i + 4, i + 5]
        assert s.condition(i)[119].item() == pytest.approx(i / 10)
    cond = build_condition(torch.zeros(4, 100), torch.zeros(4, 6), torch.zeros(4, 12), torch.zeros(4, 2))
    assert cond.shape == (4, 120)
    # the camera keeps the off-centre principal point: a point on the axis lands on (cx, cy)
    cam = s.camera(3)
    assert (cam.image_width, cam.image_height) == (W, H)
    uvz = cam.project(torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(uvz[0], torch.tensor([3.25, 2.5, 5.0]))
    uvz = cam.project(torch.tensor([[0.1, -0.2, 0.0]]))
    torch.testing.assert_close(uvz[0], torch.tensor([50 * 0.1 / 4 + 3.25, 52 * -0.2 / 4 + 2.5, 4.0]))


def test_bad_inputs_have_clear_messages(tmp_path: Path) -> None:
    data, track = make_subject(tmp_path, range(4), range(4))
    with pytest.raises(SubjectDataError, match=r"nobody: subject folder not found.*synthetic_subject"):
        Subject(data, track, "nobody", test_num=1)  # tracking missing too -> named first
    (track / "nobody" / "checkpoint").mkdir(parents=True)
    save_tracked_frame(track / "nobody" / "checkpoint" / "00000.frame", shape=np.zeros(300),
                       expression=np.zeros(100), R=np.eye(3), t=[0, 0, 1], K=np.eye(3), img_size=(H, W))
    with pytest.raises(SubjectDataError, match=r"nobody: subject folder not found"):
        Subject(data, track, "nobody", test_num=0)
    with pytest.raises(SubjectDataError, match=r"tracking folder not found.*--tracking_root"):
        Subject(data, tmp_path / "elsewhere", "s", test_num=1)
    # missing alpha for one frame
    (data / "s" / "alpha" / "00002.png").unlink()
    with pytest.raises(SubjectDataError, match=r"1 frame\(s\) lack their alpha matte.*00002"):
        Subject(data, track, "s", test_num=1)


def test_size_mismatch_unreadable_png_and_nan(tmp_path: Path) -> None:
    data, track = make_subject(tmp_path / "a", range(3), range(3), img_size=(H, W + 2))
    with pytest.raises(SubjectDataError, match=r"00000\.png: image is 6x8.*img_size \[6, 10\].*resize"):
        Subject(data, track, "s", test_num=1)
    data, track = make_subject(tmp_path / "b", range(3), range(3))
    _write(data / "s" / "parsing" / "00001_mouth.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(SubjectDataError, match=r"00001_mouth\.png: size 7x8"):
        Subject(data, track, "s", test_num=1)  # found at load even without preloading (issue 12)
    _write(data / "s" / "parsing" / "00001_mouth.png", np.zeros((H, W), np.uint8))
    s = Subject(data, track, "s", test_num=1)
    _write(data / "s" / "parsing" / "00001_mouth.png", np.zeros((H + 1, W), np.uint8))  # changed later
    with pytest.raises(SubjectDataError, match=r"00001_mouth\.png: size 7x8"):
        s.frame(1)
    bad = data / "s" / "imgs" / "00002.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(ImageReadError, match=r"00002\.png.*corrupt"):
        s.frame(2)
    _write(data / "s" / "parsing" / "00001_mouth.png", np.zeros((H, W), np.uint8))
    for preload in ("none", "cpu"):
        with pytest.raises(ImageReadError, match=r"00002\.png"):
            Subject(data, track, "s", test_num=1, preload=preload)
    # NaN in a .frame: the file and key are named
    data, track = make_subject(tmp_path / "c", range(3), range(3))
    p = track / "s" / "checkpoint" / "00001.frame"
    raw = torch.load(p, weights_only=False)
    raw["opencv"]["t"][0, 1] = np.nan
    torch.save(raw, p)
    with pytest.raises(TrackingFileError, match=r"00001\.frame.*opencv\.t.*NaN"):
        Subject(data, track, "s", test_num=1)
    (track / "s" / "checkpoint" / "00001.frame").write_bytes(b"garbage")
    with pytest.raises(TrackingFileError, match=r"00001\.frame.*corrupt"):
        Subject(data, track, "s", test_num=1)


def test_tracking_without_images(tmp_path: Path) -> None:
    _, track = make_subject(tmp_path, [], range(4))
    s = Subject(tmp_path / "none", track, "s", test_num=2, require_images=False)
    assert s.frame_ids == [0, 1, 2, 3]
    fd = s.frame(3)
    assert fd.image is None and fd.condition[0].item() == 3.0 and fd.camera.name == "00003"
    assert s.frame_images(3) is None and s.frame_from(3, None).image is None


@pytest.mark.cuda
def test_device_preload_matches_cpu(tmp_path: Path) -> None:
    data, track = make_subject(tmp_path, range(4), range(4))
    cpu = Subject(data, track, "s", test_num=1)
    gpu = Subject(data, track, "s", test_num=1, preload="device", device="cuda")
    assert gpu.conditions.is_cuda and gpu.camera(0).R.is_cuda and gpu.shape.is_cuda
    assert gpu.frames_on_device() and not cpu.frames_on_device()
    for i in range(4):
        a, b = cpu.frame(i), gpu.frame(i)
        assert b.image.is_cuda and b.head_mask.is_cuda
        torch.testing.assert_close(b.image.cpu(), a.image, rtol=0, atol=1e-6)  # ulp-level division
        torch.testing.assert_close(b.condition.cpu(), a.condition)
        torch.testing.assert_close(b.camera.full_proj_transform.cpu(), a.camera.full_proj_transform)


def test_preload_auto_follows_the_device_budget(tmp_path: Path) -> None:
    """--preload auto: on the device while the uint8 frames fit its budget, then the CPU up to 8 GiB, then
    none; a GPU's budget is a quarter of its memory, capped (a 2000-frame 512x512 subject, 3.1 GB, is kept
    on a 141 GB H200, not on an 8 GB card)."""
    from types import SimpleNamespace

    import scene.assemble as assemble

    imgs = tmp_path / "s" / "imgs"
    imgs.mkdir(parents=True)
    from PIL import Image

    for k in range(3):
        Image.new("RGB", (40, 30)).save(imgs / f"{k:05d}.png")
    need = 3 * 40 * 30 * 6
    assert assemble.resolve_preload("auto", tmp_path / "s", device_budget=need) == "device"
    assert assemble.resolve_preload("auto", tmp_path / "s", device_budget=need - 1) == "cpu"
    assert assemble.resolve_preload("none", tmp_path / "s", device_budget=need) == "none"
    assert assemble.device_cache_budget(torch.device("cpu")) == 2 << 30
    subject_2000 = 2000 * 512 * 512 * 6
    for total, on_device in ((141 << 30, True), (8 << 30, False)):
        props = SimpleNamespace(total_memory=total)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.cuda, "get_device_properties", lambda device, props=props: props)
            budget = assemble.device_cache_budget(torch.device("cuda"))
        assert (subject_2000 <= budget) == on_device


def test_parsed_tracking_is_cached_and_follows_the_files(tmp_path: Path, monkeypatch) -> None:
    """The subject's parsed tracking is cached beside its .frame files: a second Subject reads the cache
    (no .frame file parsed) and gets the same values; a rewritten frame (same size), a new frame, an
    unreadable cache or a read-only folder fall back to parsing; a bad file still raises."""
    import scene.data.tracking_cache as cache_mod

    data, track = make_subject(tmp_path, range(4), range(4))
    parsed: list[Path] = []
    real = cache_mod.load_tracked_frame
    monkeypatch.setattr(cache_mod, "load_tracked_frame", lambda p: parsed.append(p) or real(p))
    cache = track / "s" / cache_mod.CACHE_NAME
    first = Subject(data, track, "s", test_num=1)
    assert len(parsed) == 4 and cache.is_file()
    second = Subject(data, track, "s", test_num=1)
    assert len(parsed) == 4  # all four from the cache
    for a, b in zip(first._tracked, second._tracked):
        assert a.frame_id == b.frame_id and a.img_size == b.img_size and a.path == b.path
        for name in cache_mod.FIELDS:
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(first.conditions, second.conditions)
    # frame 2 re-tracked: same file size, other values -> parsed again (all files), and seen
    expr = np.zeros(100)
    expr[0] = 42.0
    frame2 = track / "s" / "checkpoint" / "00002.frame"
    size = frame2.stat().st_size
    save_tracked_frame(frame2, shape=np.full(300, 2.5), expression=expr, jaw=np.arange(6) + 2.0,
                       eyes=np.arange(12) * 0.1, eyelids=[0.25, 0.2], R=np.eye(3), t=[0.0, 0.0, 3.0],
                       K=np.array([[50.0, 0, 3.25], [0, 52.0, 2.5], [0, 0, 1]]), img_size=(H, W))
    assert frame2.stat().st_size == size
    third = Subject(data, track, "s", test_num=1)
    assert len(parsed) == 8 and float(third._tracked[2].expression[0]) == 42.0
    # an unreadable cache is ignored and replaced
    cache.write_bytes(b"not a cache")
    Subject(data, track, "s", test_num=1)
    assert len(parsed) == 12
    Subject(data, track, "s", test_num=1)
    assert len(parsed) == 12  # rewritten by the previous load
    # a read-only folder: no cache, still loads
    def read_only(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache_mod, "atomic_path", read_only)
    cache.unlink()
    assert len(Subject(data, track, "s", test_num=1)._tracked) == 4 and not cache.is_file()
    # a damaged frame still raises its own error (nothing cached for it)
    monkeypatch.undo()
    frame2.write_bytes(b"garbage")
    with pytest.raises(TrackingFileError, match="00002.frame"):
        Subject(data, track, "s", test_num=1)


def test_cached_tracking_repeats_the_parsing_warnings(tmp_path: Path) -> None:
    """Frames from an older tracker (no jaw/eyes/eyelids) warn when parsed and again when cached."""
    data, track = make_subject(tmp_path, range(3), range(3))
    old = {"flame": {"exp": torch.ones(1, 100), "shape": torch.zeros(1, 300)},
           "opencv": {"R": torch.eye(3)[None], "t": torch.tensor([[0.0, 0.0, 1.0]]),
                      "K": torch.tensor([[[50.0, 0, 3.25], [0, 52.0, 2.5], [0, 0, 1]]])},
           "img_size": torch.tensor([H, W]), "frame_id": 1}
    torch.save(old, track / "s" / "checkpoint" / "00001.frame")
    for _ in range(2):  # parsed, then from the cache
        with pytest.warns(UserWarning, match=r"00001.frame: no flame\.jaw"):
            s = Subject(data, track, "s", test_num=1)
        assert s._tracked[1].eyelids.tolist() == [0, 0]
