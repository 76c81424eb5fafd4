"""The synthetic FLAME-format model: topology, texture layout, rig behaviour, files."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch

from flame.assets import load_flame_assets
from flame.model import FLAME
from flame.synthetic import EYE_RADIUS, build_synthetic_flame, write_synthetic_flame

RES = 24


@pytest.fixture(scope="module")
def model():
    return build_synthetic_flame(resolution=RES, seed=0)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = write_synthetic_flame(tmp_path_factory.mktemp("flame"), resolution=RES, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete synthetic folder loads without any warning
        return load_flame_assets(out)


def edge_counts(faces: np.ndarray) -> dict[tuple[int, int], int]:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    return {(int(a), int(b)): int(c) for (a, b), c in zip(uniq, counts)}


def x_rot6d(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[1.0, 0.0, 0.0, 0.0, c, -s]], dtype=torch.float64)


def y_rot6d(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s, 0.0, 1.0, 0.0]], dtype=torch.float64)


def test_closed_except_neck_rim(model):
    all_faces = np.concatenate([model.faces, model.mouth_faces])
    counts = edge_counts(all_faces)
    rim = set(model.masks["boundary"].tolist())
    open_edges = {e for e, c in counts.items() if c == 1}
    assert all(c in (1, 2) for c in counts.values())
    assert all(a in rim and b in rim for a, b in open_edges)
    assert {v for e in open_edges for v in e} == rim  # the rim is exactly the one open loop
    assert len(open_edges) == len(rim)
    # Consistent orientation: every directed edge appears once.
    directed = np.concatenate([all_faces[:, [0, 1]], all_faces[:, [1, 2]], all_faces[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed)
    # Without the mouth faces, the mouth is an opening whose edges the mouth faces close.
    model_counts = edge_counts(model.faces)
    mouth_hole = {e for e, c in model_counts.items() if c == 1} - open_edges
    assert len(model.mouth_faces) >= 4 and len(mouth_hole) >= 4
    assert mouth_hole <= set(edge_counts(model.mouth_faces))
    # Mouth faces only use vertices of the lips.
    assert set(model.mouth_faces.ravel()) <= set(model.masks["lips"].tolist())


def test_eyeballs_are_closed_outward_spheres(model):
    v = model.v_template
    for side in ("left", "right"):
        ids = model.masks[f"{side}_eyeball"]
        faces = model.faces[np.all(np.isin(model.faces, ids), axis=1)]
        assert set(edge_counts(faces).values()) == {2}
        centre = v[ids].mean(axis=0)
        np.testing.assert_allclose(np.linalg.norm(v[ids] - centre, axis=1), EYE_RADIUS, rtol=1e-9)
        tri = v[faces] - centre
        volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
        assert 0.8 < volume / (4 / 3 * np.pi * EYE_RADIUS**3) <= 1.0
        iris = model.masks[f"{side}_iris"]
        assert 0 < len(iris) < len(ids) / 3 and set(model.masks[f"{side}_pupil"]) <= set(iris)
        assert v[iris, 2].min() > centre[2]  # the iris faces forward
    assert v[model.masks["left_eyeball"], 0].mean() > 0 > v[model.masks["right_eyeball"], 0].mean()


def test_uv_layout(model):
    uv, ft = model.uv, model.uv_faces
    assert ft.shape[0] == model.faces.shape[0] + model.mouth_faces.shape[0]
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    assert uv.shape[0] > model.v_template.shape[0]  # seams duplicate texture vertices
    t = uv[ft]
    area = 0.5 * ((t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1])
                  - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1]))
    assert np.all(area > 0)  # one orientation, no flipped or degenerate texture triangles
    # No overlaps: rasterize texel centres and count triangles covering each.
    S = 96
    centres = (np.stack(np.meshgrid(np.arange(S), np.arange(S), indexing="xy"), -1).reshape(-1, 2) + 0.5) / S
    cover = np.zeros(len(centres), dtype=int)
    for tri in t:
        lo, hi = tri.min(0), tri.max(0)
        sel = np.flatnonzero(np.all((centres >= lo) & (centres <= hi), axis=1))
        p = centres[sel]
        d = [(tri[(k + 1) % 3, 0] - tri[k, 0]) * (p[:, 1] - tri[k, 1])
             - (tri[(k + 1) % 3, 1] - tri[k, 1]) * (p[:, 0] - tri[k, 0]) for k in range(3)]
        inside = (d[0] > 1e-12) & (d[1] > 1e-12) & (d[2] > 1e-12)
        cover[sel[inside]] += 1
    assert cover.max() == 1
    assert cover.sum() > 0.4 * S * S
    # The mouth faces have texture area too (Gaussians can sit inside the mouth).
    assert area[-len(model.mouth_faces):].sum() > 1e-4


def test_rig_structure(model):
    W = model.weights
    np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-12)
    assert W.min() >= 0.0
    for side, j in (("left", 3), ("right", 4)):
        assert np.all(W[model.masks[f"{side}_eyeball"], j] == 1.0)
    Jr = model.J_regressor
    assert Jr.shape == (5, model.v_template.shape[0]) and Jr.nnz < 0.2 * Jr.shape[1] * 5
    np.testing.assert_allclose(np.asarray(Jr.sum(1)).ravel(), 1.0, atol=1e-12)
    J = Jr @ model.v_template
    v = model.v_template
    for side, j in (("left", 3), ("right", 4)):
        ids = model.masks[f"{side}_eyeball"]
        np.testing.assert_allclose(np.linalg.norm(v[ids] - J[j], axis=1), EYE_RADIUS, rtol=1e-9)
    lips_y = v[model.masks["lips"], 1].mean()
    lips_z = v[model.masks["lips"], 2].max()
    assert abs(J[2, 0]) < 1e-9 and J[2, 2] < lips_z - 0.06          # jaw hinge well behind the mouth
    assert lips_y < J[2, 1] < J[3, 1]                                # between mouth and eyes
    assert J[0, 1] < J[1, 1] < J[2, 1]                               # root below neck below jaw
    np.testing.assert_array_equal(model.kintree_table[1], np.arange(5))
    assert model.shapedirs.shape == (v.shape[0], 3, 400) and model.posedirs.shape == (v.shape[0], 3, 36)


def test_head_size_and_orientation(model):
    v = model.v_template
    assert 0.2 < np.ptp(v[:, 1]) < 0.3 and np.abs(v.mean(0)).max() < 0.05
    nose_tip = v[np.argmax(v[:, 2])]
    assert abs(nose_tip[0]) < 1e-9 and nose_tip[2] > 0.09  # the face looks along +z
    np.testing.assert_allclose(v[model.masks["boundary"], 1], v[model.masks["boundary"], 1].min())


def test_jaw_opens_mouth_and_expressions_are_local(assets):
    flame = FLAME(assets, dtype=torch.float64)
    shaped = flame.for_shape(torch.zeros(300))
    rest = shaped(torch.zeros(1, 100))[0].numpy()
    up, lo = assets.masks["upper_lip"], assets.masks["lower_lip"]
    opened = shaped(torch.zeros(1, 100), jaw=x_rot6d(0.3))[0].numpy()
    gap_rest = rest[up, 1].mean() - rest[lo, 1].mean()
    gap_open = opened[up, 1].mean() - opened[lo, 1].mean()
    assert 0 < gap_rest < 0.012 and gap_open > gap_rest + 0.01
    assert np.abs(opened[up] - rest[up]).max() < 1e-3

    expr = torch.from_numpy(np.random.default_rng(0).normal(size=(256, 100)))
    moved = shaped(expr).numpy() - rest
    rms = np.sqrt((moved**2).sum(-1).mean(0))
    assert 0.002 < rms.max() < 0.012  # visible but plausible: a few millimetres
    assert rms[assets.masks["lips"]].mean() > 5 * rms[assets.masks["scalp"]].mean()
    eyes = np.concatenate([assets.masks["left_eyeball"], assets.masks["right_eyeball"]])
    assert rms[eyes].max() < 1e-12 and rms[assets.masks["boundary"]].max() < 1e-6


def test_eyes_turn_and_eyelids_close(assets):
    flame = FLAME(assets, dtype=torch.float64)
    shaped = flame.for_shape(torch.zeros(300))
    rest = shaped(torch.zeros(1, 100))[0].numpy()
    eyes = torch.cat([y_rot6d(0.4), torch.tensor([[1.0, 0, 0, 0, 1, 0]], dtype=torch.float64)], dim=1)
    turned = shaped(torch.zeros(1, 100), eyes=eyes)[0].numpy()
    left, right = assets.masks["left_eyeball"], assets.masks["right_eyeball"]
    centre = assets.J_regressor[3] @ rest
    changed = np.flatnonzero(np.linalg.norm(turned - rest, axis=1) > 1e-12)
    assert set(changed) <= set(left) and len(changed) > 0.8 * len(left)
    np.testing.assert_allclose(np.linalg.norm(turned[left] - centre, axis=1), EYE_RADIUS, rtol=1e-9)
    iris = assets.masks["left_iris"]
    assert turned[iris, 0].mean() > rest[iris, 0].mean() + 0.003  # the gaze turned towards +x
    np.testing.assert_array_equal(turned[right], rest[right])

    # Closed lids: the skin that lay inside the left eyeball now lies in front of it.
    closed = shaped(torch.zeros(1, 100), eyelids=torch.tensor([[1.0, 0.0]]))[0].numpy()
    head = np.setdiff1d(np.arange(assets.n_vertices), np.concatenate([left, right]))
    inside = head[np.linalg.norm(rest[head] - centre, axis=1) < EYE_RADIUS]
    assert len(inside) >= 2
    assert np.linalg.norm(closed[inside] - centre, axis=1).min() > EYE_RADIUS
    lid = assets.masks["left_eyelid"]
    assert set(np.flatnonzero(np.abs(assets.l_eyelid).sum(1) > 0)) == set(lid)
    assert set(lid) <= set(assets.masks["left_eye_region"]) | set(inside)
    above = lid[rest[lid, 1] > centre[1] + 0.006]
    assert len(above) > 0 and np.all(assets.l_eyelid[above, 1] < 0)  # upper lid moves down
    assert np.abs(assets.r_eyelid[lid]).max() == 0.0


def test_files_round_trip(assets, model):
    np.testing.assert_array_equal(assets.v_template, model.v_template)
    np.testing.assert_array_equal(assets.faces, model.faces)
    np.testing.assert_array_equal(assets.shapedirs, model.shapedirs)
    np.testing.assert_array_equal(assets.posedirs, model.posedirs)
    np.testing.assert_array_equal(assets.weights, model.weights)
    np.testing.assert_array_equal(assets.J_regressor, model.J_regressor.toarray())
    np.testing.assert_array_equal(assets.l_eyelid, model.l_eyelid)
    np.testing.assert_array_equal(assets.r_eyelid, model.r_eyelid)
    assert assets.parents == [-1, 0, 1, 1, 1]
    assert sorted(assets.masks) == sorted(model.masks)
    for key in model.masks:
        np.testing.assert_array_equal(assets.masks[key], model.masks[key])
    uvm = assets.uv_mesh
    assert uvm is not None and uvm.path.name == "FlameMesh.obj"
    assert uvm.n_mouth_faces == len(model.mouth_faces) and uvm.n_model_faces == len(model.faces)
    np.testing.assert_array_equal(uvm.faces, np.concatenate([model.faces, model.mouth_faces]))
    np.testing.assert_array_equal(uvm.uv_faces, model.uv_faces)
    np.testing.assert_allclose(uvm.uv, model.uv, atol=1e-8)
    for key in ("lips", "left_eyeball", "right_eyeball", "left_iris", "right_iris", "face", "eye_region",
                "scalp", "neck", "nose"):
        assert len(assets.masks[key]) > 0, key


def test_deterministic_seeded_and_fast():
    t0 = time.perf_counter()
    a = build_synthetic_flame(resolution=16, seed=7)
    assert time.perf_counter() - t0 < 1.0
    b = build_synthetic_flame(resolution=16, seed=7)
    c = build_synthetic_flame(resolution=16, seed=8)
    np.testing.assert_array_equal(a.shapedirs, b.shapedirs)
    np.testing.assert_array_equal(a.v_template, b.v_template)
    assert np.abs(a.shapedirs - c.shapedirs).max() > 1e-4
    big = build_synthetic_flame(resolution=32, seed=7)
    assert big.v_template.shape[0] > 2.5 * a.v_template.shape[0]
    with pytest.raises(ValueError, match="resolution"):
        build_synthetic_flame(resolution=4)
