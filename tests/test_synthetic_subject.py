"""preprocessing/synthetic_subject.py: the synthetic subject is a consistent, real-format subject."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flame.assets import load_flame_assets, resolve_flame_dir
from flame.model import FLAME
from preprocessing.synthetic_subject import (
    IRIS,
    MOUTH,
    PUPIL,
    SCLERA,
    Appearance,
    ensure_demo_subject,
    main,
    make_synthetic_subject,
)
from scene.data.subject import Subject
from scene.data.tracking import load_frame_dict
from utils.image_io import read_image, read_mask
from utils.triangle_raster import rasterize_triangles


@pytest.fixture(scope="module")
def subject(synthetic_subject) -> Subject:
    data_root, tracking_root, idname = synthetic_subject
    return Subject(data_root, tracking_root, idname, test_num=4, eval_num=2)


@pytest.fixture(scope="module")
def posed(subject):
    """FLAME (the subject's own synthetic assets) posed with every frame's parameters."""
    assets = load_flame_assets(resolve_flame_dir(None, subject.subject_dir))
    shaped = FLAME(assets).for_shape(subject.shape)
    c = subject.conditions
    with torch.no_grad():
        verts = shaped(c[:, :100], jaw=c[:, 100:106], eyes=c[:, 106:118], eyelids=c[:, 118:120])
    return assets, verts


def test_loads_like_a_real_subject(synthetic_subject, subject) -> None:
    from tests.conftest import SYNTHETIC_FRAMES, SYNTHETIC_SIZE
    assert len(subject) == SYNTHETIC_FRAMES and subject.frame_ids == list(range(SYNTHETIC_FRAMES))
    assert subject.img_size == (SYNTHETIC_SIZE, SYNTHETIC_SIZE)
    assert subject.train_indices == list(range(SYNTHETIC_FRAMES - 4)) and len(subject.eval_indices) == 2
    raw = load_frame_dict(subject.tracking_dir / "00000.frame")
    assert raw["flame"]["exp"].shape == (1, 100) and raw["opencv"]["K"].shape == (1, 3, 3)
    assert resolve_flame_dir(None, subject.subject_dir) == subject.subject_dir / "flame"
    K = subject.tracked(0).K
    assert K[0, 0] == K[1, 1] == pytest.approx(3.5 * SYNTHETIC_SIZE)
    fd = subject.frame(3)
    assert fd.image.shape == (3, SYNTHETIC_SIZE, SYNTHETIC_SIZE)
    # the raw background is neither white nor flat, so the alpha compositing matters
    img = read_image(subject.image_path(3))
    alpha = read_mask(subject.subject_dir / "alpha" / "00003.png")
    outside = alpha == 0
    assert outside.mean() > 0.3
    assert img[outside].mean() < 0.8 and img[outside].std() > 0.03
    gt = fd.image.permute(1, 2, 0).numpy()
    np.testing.assert_allclose(gt[outside], 1.0)
    inside = alpha == 1
    np.testing.assert_allclose(gt[inside], img[inside], atol=1e-6)


def test_posed_mesh_covers_alpha(subject, posed) -> None:
    """FLAME posed with each frame's parameters and projected with its camera matches alpha."""
    assets, verts = posed
    faces = assets.uv_mesh.faces
    h, w = subject.img_size
    ious = []
    for i in range(len(subject)):
        uvz = subject.camera(i).project(verts[i]).double().numpy()
        r = rasterize_triangles(uvz[faces][..., :2], w, h, depth=uvz[faces][..., 2])
        alpha = read_mask(subject.subject_dir / "alpha" / f"{subject.frame_ids[i]:05d}.png") >= 0.5
        ious.append((r.mask & alpha).sum() / (r.mask | alpha).sum())
    assert min(ious) > 0.95, ious
    # the head fills a good part of the frame (about 60% of its height)
    rows = np.nonzero(alpha.any(axis=1))[0]
    assert 0.45 * h < rows.max() - rows.min() < 0.8 * h


def test_motion_varies_smoothly_and_mouth_opens(subject) -> None:
    c = subject.conditions.double()
    expr = c[:, :100]
    assert expr[:, :10].std(0).min() > 0.1
    step = (expr[1:] - expr[:-1]).abs().max()
    assert step < 0.5 * (expr.max() - expr.min())
    # jaw: rotation about x read back from the 6D rows (row 2 = (0, cos, -sin) for a pure x turn)
    jaw_angle = torch.atan2(-c[:, 105], c[:, 104])
    assert (jaw_angle > 0.15).sum() >= 3 and (jaw_angle < 0.02).sum() >= 3
    lids = c[:, 118:120]
    assert lids.max() > 0.5 and lids.min() < 0.2
    # the head pose is baked into the camera: R differs from frame to frame, smoothly
    Rs = torch.stack([subject.tracked(i).R for i in range(len(subject))]).double()
    ang = torch.arccos(((torch.einsum("nij,nij->n", Rs[1:], Rs[:-1]) - 1) / 2).clamp(-1, 1))
    assert ang.max() < 0.3 and ang.sum() > 0.3
    # mouth mask: lips + interior, inside the head, larger when the jaw is open
    areas = []
    for i in range(len(subject)):
        n = subject.frame_ids[i]
        mouth = read_mask(subject.subject_dir / "parsing" / f"{n:05d}_mouth.png")
        head = read_mask(subject.subject_dir / "parsing" / f"{n:05d}_neckhead.png")
        assert set(np.unique(mouth)) <= {0.0, 1.0} and mouth.sum() > 0
        assert (head[mouth > 0] > 0).all()
        areas.append(mouth.sum())
    areas = np.array(areas)
    opened = jaw_angle.numpy() > 0.15
    assert areas[opened].mean() > 1.3 * areas[~opened].mean()
    # an open mouth shows its dark interior
    i = int(np.argmax(jaw_angle.numpy()))
    img = read_image(subject.image_path(i))
    mouth = read_mask(subject.subject_dir / "parsing" / f"{subject.frame_ids[i]:05d}_mouth.png") > 0
    assert img[mouth].min(axis=0).max() < 0.3 and img[mouth].mean() < img[~mouth & (img.sum(-1) > 0)].mean()


def test_eye_materials_follow_the_eyeball(posed) -> None:
    assets, _ = posed
    canonical = assets.v_template
    look = Appearance(canonical, assets.uv_mesh.faces, len(assets.faces), assets.masks, seed=0)
    left = np.asarray(assets.masks["left_eyeball"])
    centre = 0.5 * (canonical[left].min(0) + canonical[left].max(0))
    radius = 0.5 * (canonical[left].max(0) - canonical[left].min(0))[0]
    eye_face = int(np.flatnonzero(look.eye_of_face == 0)[0])
    dirs = np.array([[0, 0, 1.0], [np.sin(0.4), 0, np.cos(0.4)], [1.0, 0, 0], [0, 1.0, 0]])
    col = look.colour(np.full(4, eye_face), centre + radius * dirs)
    np.testing.assert_allclose(col[0], PUPIL)
    assert np.abs(col[1] - IRIS).max() < 0.25 and np.allclose(col[2], SCLERA) and np.allclose(col[3], SCLERA)
    mouth_face = len(assets.faces)  # the first mouth-closing face
    np.testing.assert_allclose(look.colour(np.array([mouth_face]), canonical[:1]), MOUTH[None])


def test_ensure_demo_and_cli(tmp_path: Path, capsys) -> None:
    kw = dict(n_frames=4, image_size=24, resolution=24, supersample=1)
    data, track = tmp_path / "d", tmp_path / "t"
    subj = ensure_demo_subject(data, track, "demo", **kw)
    first = (subj / "imgs" / "00000.png").stat().st_mtime_ns
    assert ensure_demo_subject(data, track, "demo", **kw) == subj
    assert (subj / "imgs" / "00000.png").stat().st_mtime_ns == first  # not regenerated
    # other parameters regenerate, without stale frames
    ensure_demo_subject(data, track, "demo", **{**kw, "n_frames": 3})
    assert sorted(p.name for p in (track / "demo" / "checkpoint").iterdir()) == [
        "00000.frame", "00001.frame", "00002.frame"]
    assert len(Subject(data, track, "demo", test_num=1)) == 3
    # same seed, same subject; another seed, another subject
    make_synthetic_subject(tmp_path / "e", tmp_path / "u", "demo", **{**kw, "n_frames": 3})
    a = (data / "demo" / "imgs" / "00002.png").read_bytes()
    assert (tmp_path / "e" / "demo" / "imgs" / "00002.png").read_bytes() == a
    make_synthetic_subject(tmp_path / "e", tmp_path / "u", "demo", seed=5, **{**kw, "n_frames": 3})
    assert (tmp_path / "e" / "demo" / "imgs" / "00002.png").read_bytes() != a
    # a folder the generator did not make is never touched
    (data / "real").mkdir()
    (data / "real" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not generated by the synthetic subject generator"):
        ensure_demo_subject(data, track, "real", **kw)
    assert main(["--idname", "cli", "--data_root", str(data), "--tracking_root", str(track), "--frames", "2",
                 "--size", "16", "--resolution", "24", "--supersample", "1"]) == 0
    assert str(data / "cli") in capsys.readouterr().out
    assert len(list((track / "cli" / "checkpoint").glob("*.frame"))) == 2
