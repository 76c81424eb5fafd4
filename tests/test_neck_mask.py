"""The offline neck-head mask follows the visible neck skin: on two real portraits in suits (scikit-image's
astronaut in a turtleneck, matplotlib's Grace Hopper in a uniform with collar and tie) the clothing below
the chin is left out and the bare neck is kept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from preprocessing.neck_mask import _chroma

pytest.importorskip("ai_edge_litert", reason="the offline face mesh needs ai-edge-litert")


def _portraits() -> dict[str, np.ndarray]:
    import matplotlib.cbook as cbook
    from skimage import data

    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    return {"astronaut": data.astronaut(), "hopper": np.asarray(hopper)}


@pytest.fixture(scope="module")
def masks():
    from preprocessing.semantic import LandmarkBackend

    backend = LandmarkBackend()
    out = {}
    for name, img in _portraits().items():
        face = backend.landmarker(img)
        assert face is not None, name
        # a matte that keeps everything: only the neck rule decides what is kept below the chin
        neckhead, _ = backend(img, np.ones(img.shape[:2]))
        out[name] = (img, neckhead, face.points[:, :2])
    return out


def _below_chin(points: np.ndarray, hw: tuple[int, int], lo: float, hi: float, half: float) -> np.ndarray:
    chin, top = points[152], points[10]
    fh = float(np.linalg.norm(top - chin))
    ys, xs = np.mgrid[0:hw[0], 0:hw[1]] + 0.5
    return (np.abs(xs - chin[0]) < half * fh) & (ys > chin[1] + lo * fh) & (ys < chin[1] + hi * fh)


@pytest.mark.parametrize("name", ["astronaut", "hopper"])
def test_no_clothing_below_the_chin(masks, name):
    img, neckhead, pts = masks[name]
    luma, chroma = _chroma(img / 255.0)
    cloth = (np.linalg.norm(chroma, axis=-1) < 0.04) | (luma < 0.15)  # black, white, grey fabric
    region = neckhead & _below_chin(pts, neckhead.shape, 0.05, 2.0, 1.5)
    assert (region & cloth).sum() <= 0.03 * max(region.sum(), 1)


def test_turtleneck_dropped_and_bare_neck_kept(masks):
    _, astro, pts = masks["astronaut"]
    turtleneck = _below_chin(pts, astro.shape, 0.15, 0.4, 0.15)  # dark fabric right under her chin
    assert astro[turtleneck].mean() < 0.05
    _, hopper, pts = masks["hopper"]
    neck = _below_chin(pts, hopper.shape, 0.1, 0.2, 0.08)  # bare skin between the collar points
    tie = _below_chin(pts, hopper.shape, 0.75, 0.85, 0.05)  # the tie knot
    assert hopper[neck].mean() > 0.9 and hopper[tie].mean() < 0.05


def test_no_face_gives_empty_masks_and_validate_lists_them(tmp_path):
    """Issue 12: a frame with no face gets empty neck-head and mouth masks (not the matte, which would pass
    whatever stands in front for a head), parse_folder names it, and validate.py reports it."""
    from preprocessing.semantic import LandmarkBackend, parse_folder
    from preprocessing.validate import validate_subject
    from utils.image_io import read_mask_uint8, write_image

    backend = LandmarkBackend()
    flag = np.zeros((128, 128, 3))
    flag[30:100, 20:110] = [0.8, 0.1, 0.1]  # a red board in front of the camera, fully matted
    neckhead, mouth = backend((flag * 255).astype(np.uint8), np.ones((128, 128)))
    assert not neckhead.any() and not mouth.any()
    subj = tmp_path / "s"
    for sub in ("imgs", "alpha", "comp"):
        (subj / sub).mkdir(parents=True)
    face = _portraits()["astronaut"][::4, ::4]
    for k, img in enumerate([face / 255.0, flag]):
        write_image(subj / "imgs" / f"{k:05d}.png", img)
        write_image(subj / "comp" / f"{k:05d}.png", img)
        write_image(subj / "alpha" / f"{k:05d}.png", np.ones(img.shape[:2]))
    with pytest.warns(UserWarning, match=r"1 frame\(s\) got an empty mouth mask .*: 00001"):
        result = parse_folder(subj / "comp", subj / "parsing", alpha_path=subj / "alpha", backend=backend,
                              show_progress=False)
    assert result.no_face == ["00001"]
    assert read_mask_uint8(subj / "parsing" / "00000_neckhead.png").any()
    assert not read_mask_uint8(subj / "parsing" / "00001_neckhead.png").any()
    report = validate_subject(subj)
    assert any("empty neck-head mask for 1 frame(s): 00001" in p for p in report.problems), report.render()
