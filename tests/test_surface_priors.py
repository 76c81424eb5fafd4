"""The surface priors for side views (issue 11): the distance from the triangle's plane and the share of
each Gaussian's variance along the triangle's normal, against hand-computed values, finite differences, and
in training (the weighted term lowers what it measures)."""

from __future__ import annotations

import json
import math

import torch

from scene.model.embedding import Embedding
from tests.test_scripts_e2e import SMALL, _roots
from utils.losses import normal_offset_regulariser, normal_thickness_regulariser


def test_normal_offset_counts_only_the_distance_from_the_plane():
    base = torch.zeros(3, 3, dtype=torch.float64)
    normals = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]], dtype=torch.float64)
    means = torch.tensor([[0.01, 0.02, 0.0],   # 2 cm above its plane, 1 cm along it
                          [0.05, -0.03, 0.0],  # only along its plane: free
                          [0.03, 0.04, 0.1]],  # 0.6*0.03 + 0.8*0.04 = 0.05 from its plane
                         dtype=torch.float64, requires_grad=True)
    value = normal_offset_regulariser(means, base, normals)
    assert math.isclose(value.item(), (0.02**2 + 0.0 + 0.05**2) / 3, rel_tol=1e-12)
    value.backward()
    along = (means.detach() * normals).sum(-1, keepdim=True)
    torch.testing.assert_close(means.grad, 2 * along * normals / 3)  # pulls along the normal only
    assert means.grad[1].abs().max() == 0


def test_thickness_is_the_variance_share_along_the_normal():
    scales = torch.tensor([[1.0, 2.0, 3.0]] * 3, dtype=torch.float64)
    h = math.sqrt(0.5)
    rotations = torch.tensor([[1.0, 0, 0, 0],   # identity: the normal z meets the local z axis (s = 3)
                              [h, h, 0, 0],     # 90 deg about x: world z is the local y axis (s = 2)
                              [h, 0, h, 0]],    # 90 deg about y: world z is the local x axis (s = 1)
                             dtype=torch.float64)
    normals = torch.tensor([[0.0, 0.0, 1.0]] * 3, dtype=torch.float64)
    value = normal_thickness_regulariser(scales, rotations, normals)
    assert math.isclose(value.item(), (9 / 14 + 4 / 14 + 1 / 14) / 3, rel_tol=1e-12)
    ball = normal_thickness_regulariser(torch.ones(1, 3, dtype=torch.float64), rotations[:1], normals[:1])
    assert math.isclose(ball.item(), 1 / 3, rel_tol=1e-12)
    # does not depend on the overall size, nor on the sign of the normal
    twice = normal_thickness_regulariser(7 * scales, rotations, -normals)
    assert math.isclose(twice.item(), value.item(), rel_tol=1e-12)


def test_priors_gradients_match_finite_differences():
    torch.manual_seed(0)
    n = 5
    scales = (torch.rand(n, 3, dtype=torch.float64) + 0.2).requires_grad_()
    q = torch.nn.functional.normalize(torch.randn(n, 4, dtype=torch.float64), dim=-1).requires_grad_()
    normals = torch.nn.functional.normalize(torch.randn(n, 3, dtype=torch.float64), dim=-1)
    means = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    base = torch.randn(n, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s, r: normal_thickness_regulariser(s, r, normals), (scales, q))
    assert torch.autograd.gradcheck(lambda m: normal_offset_regulariser(m, base, normals), (means,))


def test_embedding_normals_are_the_triangles_unit_normals():
    verts = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 3, 0], [0, 0, 5]])
    emb = Embedding(face_ids=torch.tensor([0, 1]), vertex_ids=torch.tensor([[0, 1, 2], [0, 1, 3]]),
                    bary=torch.full((2, 3), 1 / 3), canonical=torch.zeros(2, 3), encoding=torch.zeros(2, 1),
                    texel_rc=torch.zeros(2, 2, dtype=torch.long), n_texels=2, uv_size=1)
    normals = emb.normals(verts)
    torch.testing.assert_close(normals, torch.tensor([[0.0, 0, 1], [0, -1, 0]]))
    batched = emb.normals(torch.stack([verts, 2 * verts]))  # (B, V, 3) -> (B, N, 3)
    assert batched.shape == (2, 2, 3) and torch.allclose(batched[1], normals)


def _surface_measures(trainer) -> tuple[float, float]:
    with torch.no_grad():
        cond = trainer.subject.condition(0)
        gaussians, extras = trainer.avatar.deform(cond)
        base, normals = trainer.avatar.surface_of(extras)
        return (normal_offset_regulariser(gaussians.means, base, normals).item(),
                normal_thickness_regulariser(gaussians.scales, gaussians.rotations, normals).item())


def test_training_with_the_priors_lowers_what_they_measure(synthetic_subject, tmp_path):
    """60 steps each from the same start: the weighted run ends flatter and closer to the surface than the
    plain one, and logs both terms."""
    from scene.trainer import Trainer
    from utils.options import parse_train_args

    common = [*_roots(synthetic_subject), *SMALL, "--lambda_lpips", "0", "--iterations", "60", "--skip_test",
              "--grid_every", "0", "--ckpt_every", "0", "--log_every", "20", "--original_init"]
    measures = {}
    priors = ["--lambda_normal_offset", "1e4", "--lambda_thickness", "1"]
    for name, extra in (("plain", ["--lambda_normal_offset", "0"]), ("priors", priors), ("default", [])):
        trainer = Trainer(parse_train_args([*common, "--log_root", str(tmp_path / name), *extra]))
        trainer.run()
        measures[name] = _surface_measures(trainer)
        trainer.close()
    plain, priors, default = measures["plain"], measures["priors"], measures["default"]
    assert priors[0] < 0.5 * plain[0], measures  # the random start's offsets pulled onto the surface
    assert priors[1] < plain[1] - 0.02, measures
    assert default[0] < 0.2 * plain[0], measures  # the baseline's default weight (1000) pulls too (19x)
    logged = json.loads(next((tmp_path / "priors").rglob("train_log.json")).read_text())["losses"][-1]
    assert logged["normal_offset_reg"] > 0 and logged["thickness_reg"] > 0
    run_log = json.loads(next((tmp_path / "default").rglob("train_log.json")).read_text())
    assert run_log["losses"][-1]["normal_offset_reg"] > 0 and "thickness_reg" not in run_log["losses"][-1]
