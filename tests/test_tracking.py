"""scene/data/tracking.py: metrical-tracker .frame files are read safely and validated."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from scene.data.tracking import TrackingFileError, load_frame_dict, load_tracked_frame, save_tracked_frame


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(R) < 0:
        R[:, 0] *= -1
    return dict(shape=rng.normal(size=300), expression=rng.normal(size=100), jaw=rng.normal(size=6),
                eyes=rng.normal(size=12), eyelids=rng.uniform(size=2), R=R, t=rng.normal(size=3),
                K=np.array([[300.0, 0, 40.5], [0, 310.0, 29.0], [0, 0, 1]]), img_size=(60, 80))


def test_round_trip_and_tracker_layout(tmp_path: Path) -> None:
    p = _params()
    path = save_tracked_frame(tmp_path / "00007.frame", **p)
    f = load_tracked_frame(path)
    assert f.frame_id == 7 and f.img_size == (60, 80) and f.height == 60 and f.width == 80
    for name, key in [("shape", "shape"), ("expression", "expression"), ("jaw", "jaw"), ("eyes", "eyes"),
                      ("eyelids", "eyelids"), ("R", "R"), ("t", "t"), ("K", "K")]:
        np.testing.assert_allclose(getattr(f, name).numpy(), np.asarray(p[key], np.float32).reshape(
            getattr(f, name).shape), rtol=0, atol=0)
        assert getattr(f, name).dtype == torch.float32
    raw = load_frame_dict(path)
    expect = {"exp": (1, 100), "shape": (1, 300), "jaw": (1, 6), "eyes": (1, 12), "eyelids": (1, 2),
              "tex": (1, 140), "sh": (1, 9, 3)}
    for k, s in expect.items():
        assert isinstance(raw["flame"][k], np.ndarray) and raw["flame"][k].shape == s
        assert raw["flame"][k].dtype == np.float32
    for k, s in {"R": (1, 3, 3), "t": (1, 3), "K": (1, 3, 3)}.items():
        assert raw["opencv"][k].shape == s
    for k, s in {"R": (1, 6), "t": (1, 3), "fl": (1, 1), "pp": (1, 2)}.items():
        assert raw["camera"][k].shape == s
    # 6D rotation = first two rows of R
    np.testing.assert_allclose(raw["camera"]["R"][0], p["R"][:2].reshape(6), atol=1e-6)
    assert list(raw["img_size"]) == [60, 80] and raw["frame_id"] == 7


def test_tensor_values_and_missing_optional_keys(tmp_path: Path) -> None:
    data = {"flame": {"exp": torch.ones(1, 100), "shape": torch.zeros(1, 300)},
            "opencv": {"R": torch.eye(3)[None], "t": torch.tensor([[0.0, 0.0, 1.0]]),
                       "K": torch.tensor([[[100.0, 0, 16], [0, 100.0, 16], [0, 0, 1]]])},
            "img_size": torch.tensor([32, 32]), "frame_id": 3}
    path = tmp_path / "00003.frame"
    torch.save(data, path)
    with pytest.warns(UserWarning, match=r"flame\.jaw, flame\.eyes, flame\.eyelids"):
        f = load_tracked_frame(path)
    assert f.jaw.tolist() == [1, 0, 0, 0, 1, 0] and f.eyes.tolist() == [1, 0, 0, 0, 1, 0] * 2
    assert f.eyelids.tolist() == [0, 0] and f.expression.sum().item() == 100


def _rewrite_pickle(path: Path, out: Path, old: bytes, new: bytes) -> None:
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            zout.writestr(item, data)


def test_numpy1_module_names_load(tmp_path: Path) -> None:
    """Files written under numpy 1 name numpy.core.multiarray; they must still load."""
    p = _params(1)
    src = save_tracked_frame(tmp_path / "src" / "00000.frame", **p)
    dst = tmp_path / "00000.frame"
    _rewrite_pickle(src, dst, b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    f = load_tracked_frame(dst)
    np.testing.assert_allclose(f.expression.numpy(), p["expression"].astype(np.float32))


def test_numpy_scalars_allowed(tmp_path: Path) -> None:
    p = _params(2)
    path = save_tracked_frame(tmp_path / "00001.frame", **p)
    raw = torch.load(path, weights_only=False)
    raw["global_step"] = np.int64(5)
    raw["img_size"] = np.array([[60, 80]], dtype=np.int32)
    torch.save(raw, path)
    assert load_tracked_frame(path).img_size == (60, 80)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.target),))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    _Evil.target = str(tmp_path / "pwned")
    path = tmp_path / "00000.frame"
    torch.save({"flame": _Evil()}, path)
    with pytest.raises(TrackingFileError, match="00000.frame"):
        load_tracked_frame(path)
    assert not (tmp_path / "pwned").exists()


def test_nan_names_file_and_key(tmp_path: Path) -> None:
    p = _params(3)
    p["expression"][17] = np.nan
    path = save_tracked_frame(tmp_path / "00004.frame", **p)
    with pytest.raises(TrackingFileError, match=r"00004\.frame.*flame\.exp.*NaN"):
        load_tracked_frame(path)


def test_bad_shapes_and_missing_keys(tmp_path: Path) -> None:
    path = save_tracked_frame(tmp_path / "00000.frame", **_params(4))
    raw = torch.load(path, weights_only=False)
    raw["flame"]["exp"] = np.zeros((1, 50), np.float32)
    torch.save(raw, path)
    with pytest.raises(TrackingFileError, match=r"flame\.exp.*\(1, 50\)"):
        load_tracked_frame(path)
    del raw["opencv"]["K"]
    raw["flame"]["exp"] = np.zeros((1, 100), np.float32)
    torch.save(raw, path)
    with pytest.raises(TrackingFileError, match=r"opencv\.K"):
        load_tracked_frame(path)
    del raw["opencv"]
    torch.save(raw, path)
    with pytest.raises(TrackingFileError, match=r"missing block 'opencv'"):
        load_tracked_frame(path)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    path = save_tracked_frame(tmp_path / "00002.frame", **_params(5))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrackingFileError, match=r"00002\.frame.*corrupt"):
        load_tracked_frame(path)
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(TrackingFileError, match=r"00002\.frame.*corrupt"):
        load_tracked_frame(path)
    plain = tmp_path / "00003.frame"
    plain.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(TrackingFileError, match=r"00003\.frame"):
        load_tracked_frame(plain)
    with pytest.raises(TrackingFileError, match=r"not found"):
        load_tracked_frame(tmp_path / "99999.frame")
    buf = io.BytesIO()
    torch.save([1, 2], buf)
    (tmp_path / "00005.frame").write_bytes(buf.getvalue())
    with pytest.raises(TrackingFileError, match=r"expected a dict"):
        load_tracked_frame(tmp_path / "00005.frame")
