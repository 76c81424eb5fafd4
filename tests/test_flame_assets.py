"""FLAME asset loading: chumpy-free restricted unpickler, checks with clear errors, OBJ reader."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from flame.assets import (
    REPO_FLAME_DIR,
    FlameAssetError,
    FlameAssetWarning,
    load_flame_assets,
    load_flame_pickle,
    read_obj,
    resolve_flame_dir,
)
from flame.obj import ObjFormatError
from flame.synthetic import build_synthetic_flame, write_synthetic_flame


@pytest.fixture(scope="module")
def model():
    return build_synthetic_flame(resolution=16, seed=1)


@pytest.fixture(scope="module")
def flame_dir(tmp_path_factory):
    return write_synthetic_flame(tmp_path_factory.mktemp("flame"), resolution=16, seed=1)


def generic_dict(model) -> dict:
    return {"v_template": model.v_template, "f": model.faces.astype(np.uint32), "shapedirs": model.shapedirs,
            "posedirs": model.posedirs, "J_regressor": model.J_regressor,
            "kintree_table": model.kintree_table, "weights": model.weights}


def dump(path: Path, obj, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [0, 2])
def test_chumpy_pickle_loads_without_chumpy(tmp_path, model, protocol):
    # A fake chumpy, present only while dumping, like FLAME 2020's pickle made with real chumpy.
    ch_mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()

    class Select:  # a chumpy expression that stores no array of its own
        def __init__(self):
            self.idxs = [1, 2]

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    Select.__module__, Select.__qualname__ = "chumpy.reordering", "Select"
    ch_mod.Ch = Ch
    re_mod = types.ModuleType("chumpy.reordering")
    re_mod.Select = Select
    root = types.ModuleType("chumpy")
    root.ch, root.reordering = ch_mod, re_mod
    names = ("chumpy", "chumpy.ch", "chumpy.reordering")
    sys.modules.update(zip(names, (root, ch_mod, re_mod)))
    try:
        data = generic_dict(model)
        data["shapedirs"] = Ch(model.shapedirs)
        data["v_template"] = Ch(model.v_template)
        data["J_prior"] = Select()  # not needed: must not block loading
        path = dump(tmp_path / "generic_model.pkl", data, protocol)
        bad = dump(tmp_path / "bad" / "generic_model.pkl", {**data, "weights": Select()}, protocol)
    finally:
        for name in names:
            del sys.modules[name]
    assert "chumpy" not in sys.modules
    with open(path, "rb") as fh:
        assert b"chumpy" in fh.read()

    loaded = load_flame_pickle(path)
    assert isinstance(loaded["shapedirs"], np.ndarray)
    np.testing.assert_array_equal(loaded["shapedirs"], model.shapedirs)
    np.testing.assert_array_equal(loaded["v_template"], model.v_template)
    assert scipy.sparse.issparse(loaded["J_regressor"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlameAssetWarning)
        assets = load_flame_assets(tmp_path)
    np.testing.assert_array_equal(assets.shapedirs, model.shapedirs)
    np.testing.assert_allclose(assets.J_regressor, model.J_regressor.toarray())
    assert assets.parents == [-1, 0, 1, 1, 1]  # FLAME's unsigned -1 for the root parent
    with pytest.raises(FlameAssetError, match="'weights' is not a numeric array") as err:
        load_flame_assets(bad.parent)
    assert str(bad) in str(err.value)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_pickle_that_runs_code_is_refused(tmp_path, model):
    marker = tmp_path / "pwned"
    path = dump(tmp_path / "generic_model.pkl", {**generic_dict(model), "evil": _RunsCode(marker)})
    with pytest.raises(FlameAssetError, match="refusing to load") as err:
        load_flame_pickle(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    path2 = dump(tmp_path / "other.pkl", {"x": _Evals()})
    with pytest.raises(FlameAssetError, match=r"refusing to load (__builtin__|builtins)\.eval"):
        load_flame_pickle(path2)


def test_corrupt_pickle_is_a_clear_error(tmp_path, model):
    good = pickle.dumps(generic_dict(model), protocol=2)
    truncated = tmp_path / "flame" / "generic_model.pkl"
    truncated.parent.mkdir()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(FlameAssetError, match="corrupt") as err:
        load_flame_assets(truncated.parent)
    assert str(truncated) in str(err.value)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle at all")
    with pytest.raises(FlameAssetError, match="garbage.pkl"):
        load_flame_pickle(garbage)
    not_dict = dump(tmp_path / "list.pkl", [1, 2, 3])
    with pytest.raises(FlameAssetError, match="expected a dict"):
        load_flame_pickle(not_dict)


def test_wrong_keys_and_shapes_are_clear_errors(tmp_path, model):
    data = generic_dict(model)
    del data["posedirs"]
    path = dump(tmp_path / "a" / "generic_model.pkl", data)
    with pytest.raises(FlameAssetError, match="missing keys.*posedirs") as err:
        load_flame_assets(path.parent)
    assert str(path) in str(err.value)
    data = generic_dict(model)
    data["shapedirs"] = model.shapedirs[..., :300]
    path = dump(tmp_path / "b" / "generic_model.pkl", data)
    with pytest.raises(FlameAssetError, match=r"'shapedirs' has shape .*expected"):
        load_flame_assets(path.parent)
    data = generic_dict(model)
    data["f"] = data["f"] + 10_000
    path = dump(tmp_path / "c" / "generic_model.pkl", data)
    with pytest.raises(FlameAssetError, match="'f' indexes vertices"):
        load_flame_assets(path.parent)


def test_missing_model_names_path_and_source(tmp_path):
    with pytest.raises(FlameAssetError) as err:
        load_flame_assets(tmp_path / "nowhere")
    msg = str(err.value)
    assert str((tmp_path / "nowhere" / "generic_model.pkl").resolve()) in msg
    assert "https://flame.is.tue.mpg.de" in msg and "FLAME 2020" in msg and "--flame_dir" in msg


def test_optional_files_warn_once_each(tmp_path, flame_dir):
    only_model = tmp_path / "only"
    only_model.mkdir()
    shutil.copy(flame_dir / "generic_model.pkl", only_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assets = load_flame_assets(only_model)
    msgs = [str(w.message) for w in caught if issubclass(w.category, FlameAssetWarning)]
    assert len(msgs) == 4, msgs
    assert any("FLAME_masks.pkl" in m for m in msgs) and any("no UV mesh" in m for m in msgs)
    assert sum("eyelid" in m for m in msgs) == 2
    assert assets.uv_mesh is None and assets.l_eyelid is None and assets.r_eyelid is None
    assert assets.masks["boundary"].size == 0

    # head_template_mesh.obj as the fallback UV mesh: no mouth faces, a warning about the mouth.
    fallback = tmp_path / "fallback"
    shutil.copytree(flame_dir, fallback)
    obj = read_obj(fallback / "FlameMesh.obj")
    n_model = assets.faces.shape[0]
    (fallback / "FlameMesh.obj").unlink()
    lines = [f"v {x} {y} {z}" for x, y, z in obj.vertices] + [f"vt {u} {v}" for u, v in obj.uv]
    lines += [f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}"
              for (a, b, c), (ta, tb, tc) in zip(obj.faces[:n_model], obj.uv_faces[:n_model])]
    (fallback / "head_template_mesh.obj").write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assets = load_flame_assets(fallback)
    msgs = [str(w.message) for w in caught if issubclass(w.category, FlameAssetWarning)]
    assert len(msgs) == 1 and "teeth and the mouth interior will be poor" in msgs[0]
    assert assets.uv_mesh is not None and assets.uv_mesh.n_mouth_faces == 0


def test_bad_masks_and_eyelids_are_refused(tmp_path, flame_dir):
    bad = tmp_path / "bad"
    shutil.copytree(flame_dir, bad)
    dump(bad / "FLAME_masks" / "FLAME_masks.pkl", {"boundary": np.array([0, 10**7])})
    with pytest.raises(FlameAssetError, match="FLAME_masks.pkl: mask 'boundary' indexes vertices"):
        load_flame_assets(bad)
    dump(bad / "FLAME_masks" / "FLAME_masks.pkl", {"lips": np.array([0, 1])})
    with pytest.raises(FlameAssetError, match="no 'boundary' key"):
        load_flame_assets(bad)
    shutil.copy(flame_dir / "FLAME_masks" / "FLAME_masks.pkl", bad / "FLAME_masks" / "FLAME_masks.pkl")
    np.save(bad / "blendshapes" / "l_eyelid.npy", np.zeros((5, 3)))
    with pytest.raises(FlameAssetError, match=r"l_eyelid.npy: shape \(5, 3\)"):
        load_flame_assets(bad)


def test_read_obj_small_handwritten(tmp_path):
    path = tmp_path / "m.obj"
    path.write_text(
        "# a unit square split in two, plus a quad\n"
        "o square\n"
        "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0 0 1\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
        "vn 0 0 1\n"
        "s off\n"
        "f 1/1 2/2 3/3\n"
        "f 1/1/1 3/3/1 4/4/1\n"
        "f -5/-4 -4/-3 -1/-1 -2/-2\n")
    mesh = read_obj(path)
    np.testing.assert_array_equal(mesh.vertices, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(mesh.uv, [[0, 0], [1, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [0, 1, 4], [0, 4, 3]])
    np.testing.assert_array_equal(mesh.uv_faces, [[0, 1, 2], [0, 2, 3], [0, 1, 3], [0, 3, 2]])
    assert mesh.faces.dtype == np.int64 and mesh.vertices.dtype == np.float64

    plain = tmp_path / "plain.obj"
    plain.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvn 0 0 1\nf 1//1 2//1 3//1\nf 3 2 1\n")
    mesh = read_obj(plain)
    assert mesh.uv_faces is None and mesh.uv.shape == (0, 2)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [2, 1, 0]])

    broken = tmp_path / "broken.obj"
    broken.write_text("v 0 0 0\nv 1 0 0\nf 1 2 7\n")
    with pytest.raises(ObjFormatError, match="broken.obj: face vertex index out of range"):
        read_obj(broken)
    broken.write_text("v 0 0 0\nv 1 x 0\n")
    with pytest.raises(ObjFormatError, match="broken.obj:2"):
        read_obj(broken)


def test_resolve_flame_dir(tmp_path):
    assert resolve_flame_dir(str(tmp_path / "x"), tmp_path) == tmp_path / "x"
    subject = tmp_path / "subject"
    (subject / "flame").mkdir(parents=True)
    assert resolve_flame_dir(None, subject) == REPO_FLAME_DIR
    (subject / "flame" / "generic_model.pkl").write_bytes(b"")
    assert resolve_flame_dir(None, subject) == subject / "flame"
    assert resolve_flame_dir(None, None) == REPO_FLAME_DIR
    assert REPO_FLAME_DIR == Path(__file__).resolve().parents[1] / "flame"


def _py2_array(arr: np.ndarray) -> bytes:
    """The opcodes Python 2's cPickle (protocol 2) writes for a numpy array: byte strings as 'T'
    (BINSTRING) and the numpy.core module names of that time."""
    import struct

    def binstring(b: bytes) -> bytes:
        return b"T" + struct.pack("<i", len(b)) + b

    dt = arr.dtype
    shape = b"(" + b"".join(b"J" + struct.pack("<i", n) for n in arr.shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + binstring(b"b") + b"\x87R"
            + b"(K\x01" + shape
            + b"cnumpy\ndtype\n" + binstring(dt.str[1:].encode()) + b"K\x00K\x01\x87R"
            + b"(K\x03" + binstring(dt.str[:1].encode()) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            + b"\x89" + binstring(arr.tobytes()) + b"tb")


def test_python2_pickle_with_latin1_bytes(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 3))
    v[0, 0] = np.frombuffer(b"\x80\xff\x00\x01\x02\x03\x04\xe9", dtype="<f8")[0]  # non-ASCII bytes
    f = np.array([[0, 1, 2], [1, 2, 3]], dtype="<u4")
    data = (b"\x80\x02}(" + b"U\x0av_template" + _py2_array(v) + b"U\x01f" + _py2_array(f)
            + b"U\x08bs_styleU\x03lbsu.")
    path = tmp_path / "py2.pkl"
    path.write_bytes(data)
    loaded = load_flame_pickle(path)
    np.testing.assert_array_equal(loaded["v_template"], v)
    np.testing.assert_array_equal(loaded["f"], f)
    assert loaded["f"].dtype == np.uint32 and loaded["bs_style"] == "lbs"


class _Rot13:
    def __reduce__(self):
        import codecs

        return (codecs.encode, ("abc", "rot13"))


def test_codecs_encode_only_for_latin1_bytes(tmp_path):
    path = dump(tmp_path / "codec.pkl", {"x": _Rot13()})
    with pytest.raises(FlameAssetError, match="only latin1 byte strings"):
        load_flame_pickle(path)
    ok = dump(tmp_path / "bytes.pkl", {"x": b"\x00\xff raw"})  # Python 3, protocol 2: _codecs.encode
    assert load_flame_pickle(ok)["x"] == b"\x00\xff raw"
