"""Issue 12: property-based fuzzing of the loaders that read user files (``.frame``, FLAME pickle, OBJ,
images): damaged or random input raises the project's own error (an ``InputError`` naming the file),
never another exception, and a hostile pickle never runs code. Small example counts keep CI fast."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.assets import load_flame_pickle
from flame.obj import read_obj
from scene.data.tracking import load_tracked_frame, save_tracked_frame
from utils.errors import InputError
from utils.image_io import read_image_uint8, write_image

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def damaged(draw, valid: bytes):
    """``valid`` truncated, with bytes overwritten, or replaced by random bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "random"]))
    if kind == "truncate":
        return valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
    if kind == "flip":
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return draw(st.binary(min_size=0, max_size=512))


def _valid_frame(tmp: Path) -> bytes:
    path = tmp / "00000.frame"
    save_tracked_frame(path, shape=np.zeros(300), expression=np.zeros(100), R=np.eye(3),
                       t=np.array([0, 0, 1.0]), K=np.array([[500.0, 0, 4], [0, 500.0, 3], [0, 0, 1]]),
                       img_size=(6, 8))
    return path.read_bytes()


def _check(load, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        load(path)
    except InputError as exc:
        assert str(path) in str(exc) or path.name in str(exc), exc  # the message names the file
    # any other exception fails the test by propagating


@FUZZ
@given(data=st.data())
def test_frame_loader_fuzz(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("frame")
    blob = data.draw(damaged(_valid_frame(tmp)))
    _check(load_tracked_frame, tmp / "00001.frame", blob)


@FUZZ
@given(data=st.data())
def test_flame_pickle_fuzz(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("pkl")
    valid = pickle.dumps({"v_template": np.zeros((4, 3)), "f": np.zeros((2, 3), np.uint32), "name": "x"},
                         protocol=2)
    _check(load_flame_pickle, tmp / "generic_model.pkl", data.draw(damaged(valid)))


OBJ_ALPHABET = st.sampled_from(["v", "vt", "f", "vn", "#", " ", "\n", "/", "-", ".", "0", "1", "2", "3",
                                "9", "e", "nan", "1e400", "x"])


@FUZZ
@given(text=st.lists(OBJ_ALPHABET, max_size=80).map("".join))
def test_obj_reader_fuzz(tmp_path_factory, text):
    tmp = tmp_path_factory.mktemp("obj")
    valid = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"
    for candidate in (text, valid + text, text + valid):
        _check(read_obj, tmp / "mesh.obj", candidate.encode())


@FUZZ
@given(data=st.data())
def test_image_reader_fuzz(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("img")
    write_image(tmp / "ok.png", np.random.default_rng(0).random((8, 8, 3)))
    _check(read_image_uint8, tmp / "frame.png", data.draw(damaged((tmp / "ok.png").read_bytes())))


@pytest.mark.parametrize("payload", [
    b"cos\nsystem\n(S'touch {sentinel}'\ntR.",                      # os.system
    b"cbuiltins\nexec\n(S'open(\"{sentinel}\", \"w\")'\ntR.",       # builtins.exec
    b"csubprocess\ncall\n((S'touch'\nS'{sentinel}'\nltR.",          # subprocess.call
])
def test_hostile_pickles_never_run(tmp_path, payload):
    sentinel = tmp_path / "pwned"
    blob = payload.replace(b"{sentinel}", str(sentinel).encode())
    for name, load in (("generic_model.pkl", load_flame_pickle), ("00000.frame", load_tracked_frame)):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(InputError):
            load(tmp_path / name)
        assert not sentinel.exists()
