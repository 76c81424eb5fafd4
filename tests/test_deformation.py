"""Deformation model: split first layer, both heads, conditional appearance, optimiser settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scene.model.deformation import DeformationModel, unit_view_directions

N = 13


def _inputs(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(N, 51, generator=g, dtype=dtype)
    cond = torch.randn(120, generator=g, dtype=dtype)
    view = torch.nn.functional.normalize(torch.randn(N, 3, generator=g, dtype=dtype), dim=-1)
    return enc, cond, view


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


@pytest.mark.parametrize("ours,appearance,camera", [(False, False, False), (False, True, True),
                                                     (True, True, True)])
def test_split_first_layer_equals_concatenated_input(ours, appearance, camera):
    model = DeformationModel(N, ours=ours, hidden_dim=16, hidden_layers=3, latent_dim=4,
                             conditional_appearance=appearance, camera_conditioning=camera).double()
    enc, cond, view = _inputs()
    split = model.trunk(enc, cond, view if camera else None)
    assert model.trunk.layers[0].in_features == 51 + 120 + (3 if camera and not ours else 0)
    # against plain numpy matrix products over the concatenated input
    x = np.concatenate([enc.numpy(), np.tile(cond.numpy(), (N, 1))]
                       + ([view.numpy()] if camera and not ours else []), axis=1)
    for layer in model.trunk.layers:
        x = np.maximum(x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy(), 0.0)
    x = x @ model.trunk.out.weight.detach().numpy().T + model.trunk.out.bias.detach().numpy()
    np.testing.assert_allclose(split.detach().numpy(), x, rtol=0, atol=1e-10)


def test_trunk_shape_matches_spec_defaults():
    model = DeformationModel(N)
    linears = [m for m in model.trunk.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(171, 256)] + [(256, 256)] * 5 + [(256, 10)]
    ours = DeformationModel(N, ours=True)
    assert ours.trunk.out.out_features == 32
    assert DeformationModel(N, ours=True, conditional_appearance=True).trunk.out.out_features == 64


def test_baseline_head_is_tanh_of_trunk_outputs():
    model = DeformationModel(N, hidden_dim=16, hidden_layers=2, conditional_appearance=True).double()
    _randomize(model, 1, std=1.0)
    enc, cond, _ = _inputs(2)
    raw = model.trunk(enc, cond).detach()
    out = model(enc, cond)
    torch.testing.assert_close(out.d_xyz, torch.tanh(raw[:, 0:3]))
    torch.testing.assert_close(out.d_rot, torch.tanh(raw[:, 3:7]))
    torch.testing.assert_close(out.d_scale, torch.tanh(raw[:, 7:10]))
    torch.testing.assert_close(out.colors, 1.0 / (1.0 + torch.exp(-raw[:, 10:13])))
    torch.testing.assert_close(out.opacity_logits, raw[:, 13:14])
    assert out.uncertainty is None


def test_hyper_head_at_init_predicts_zero_offsets_and_grey():
    model = DeformationModel(N, ours=True, hidden_dim=16, hidden_layers=2, latent_dim=4,
                             conditional_appearance=True, camera_conditioning=True)
    enc, cond, view = _inputs(3, torch.float32)
    out = model(enc, cond, view)
    for t in (out.d_xyz, out.d_rot, out.d_scale, out.opacity_logits, out.uncertainty):
        assert torch.count_nonzero(t) == 0
    assert torch.equal(out.colors, torch.full((N, 3), 0.5))


def test_hyper_head_uses_conditional_means_of_geometry_and_appearance_halves():
    model = DeformationModel(N, ours=True, hidden_dim=16, hidden_layers=2, latent_dim=4,
                             conditional_appearance=True, camera_conditioning=True).double()
    _randomize(model, 4)
    enc, cond, view = _inputs(5)
    out = model(enc, cond, view)
    z = model.trunk(enc, cond)
    geo, app = model.head.geometry, model.head.appearance
    assert geo.blocks == (3, 4, 3) and app.blocks == (3, 1) and app.in_dim == 4 + 3
    g = geo.conditional_mean(z[:, :4])
    a = app.conditional_mean(torch.cat([z[:, 4:], view], dim=-1))
    torch.testing.assert_close(out.d_xyz, torch.tanh(g[:, 0:3]))
    torch.testing.assert_close(out.d_rot, torch.tanh(g[:, 3:7]))
    torch.testing.assert_close(out.d_scale, torch.tanh(g[:, 7:10]))
    torch.testing.assert_close(out.colors, torch.sigmoid(a[:, :3]))
    torch.testing.assert_close(out.opacity_logits, a[:, 3:4])
    ld = geo.l11_log_diag  # (N, 3 blocks, 4): the 3-blocks' 4th entry is padding, not counted
    expected_unc = -2 * (ld[:, 0, :3].sum(1) + ld[:, 1].sum(1) + ld[:, 2, :3].sum(1))
    torch.testing.assert_close(out.uncertainty, expected_unc)
    # the view direction matters, and only through the appearance outputs
    out2 = model(enc, cond, -view)
    assert not torch.allclose(out2.colors, out.colors)
    torch.testing.assert_close(out2.d_xyz, out.d_xyz)


def test_unit_view_directions_are_normalised_per_gaussian():
    pos = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 10.0], [3.0, 4.0, 0.0]])
    centre = torch.tensor([0.0, 0.0, 0.0])
    expected = np.array([[1 / 3, 2 / 3, 2 / 3], [0, 0, 1], [0.6, 0.8, 0.0]])
    np.testing.assert_allclose(unit_view_directions(pos, centre).numpy(), expected, atol=1e-7)


def test_camera_conditioned_model_requires_view_dirs_and_appearance():
    model = DeformationModel(N, hidden_dim=8, hidden_layers=1, conditional_appearance=True,
                             camera_conditioning=True)
    enc, cond, _ = _inputs(0, torch.float32)
    with pytest.raises(ValueError, match="view_dirs"):
        model(enc, cond)
    with pytest.raises(ValueError, match="conditional_appearance"):
        DeformationModel(N, camera_conditioning=True)
    with pytest.raises(ValueError, match="built for 13 Gaussians"):
        model(enc[:5], cond)


def test_deformation_optimizer_settings():
    model = DeformationModel(N, ours=True, hidden_dim=8, hidden_layers=1, latent_dim=4)
    opt = model.make_optimizer()
    (group,) = opt.param_groups
    assert group["lr"] == 1e-4 and group["eps"] == 1e-8 and group["betas"] == (0.9, 0.999)
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}
    assert any(p is model.head.geometry.l21 for p in group["params"])


def test_baseline_start_at_rest_zeroes_offsets_only():
    """Issue 11: the baseline starts at zero offset, identity rotation, unit scale; appearance rows and
    the hidden layers keep their init, and the zeroed rows still learn (non-zero gradient)."""
    torch.manual_seed(0)
    model = DeformationModel(50, hidden_dim=32, hidden_layers=2, conditional_appearance=True)
    enc, cond = torch.randn(50, 51), torch.randn(120)
    before = model(enc, cond)
    assert before.d_xyz.abs().max() > 1e-3  # PyTorch's default init: a random shift
    colours_before = before.colors.clone()
    model.start_at_rest()
    out = model(enc, cond)
    for part in (out.d_xyz, out.d_rot, out.d_scale):
        assert torch.equal(part, torch.zeros_like(part))
    assert torch.equal(out.colors, colours_before)  # appearance rows untouched
    out.d_xyz.sum().backward()
    assert model.trunk.out.weight.grad[:3].abs().sum() > 0
    hyper = DeformationModel(50, ours=True, hidden_dim=32, hidden_layers=2)
    state = {k: v.clone() for k, v in hyper.state_dict().items()}
    hyper.start_at_rest()  # HyperGaussians start at rest by construction: nothing to change
    assert all(torch.equal(state[k], v) for k, v in hyper.state_dict().items())


def test_linear_relu_fast_path_matches_linear_then_relu(monkeypatch):
    """The fused GEMM + bias + ReLU (fast path ``linear_relu``): its gradients against finite differences
    (kinks avoided: no pre-activation near 0), and the whole trunk's outputs and parameter gradients equal
    to the plain F.linear + F.relu path's."""
    from scene.model.deformation import linear_relu
    from utils import fast_paths

    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(4, 5, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, generator=g).requires_grad_()
    monkeypatch.setitem(fast_paths.ON, "linear_relu", True)
    pre = x @ w.t() + b
    assert pre.abs().min() > 1e-3  # finite differences of step 1e-6 stay on one side of every kink
    assert torch.autograd.gradcheck(linear_relu, (x, w, b))
    assert torch.equal(linear_relu(x, w, b), torch.relu(pre))

    torch.manual_seed(0)
    model = DeformationModel(40, hidden_dim=16, hidden_layers=3).double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    enc = torch.randn(40, 51, dtype=torch.float64)
    cond = torch.randn(120, dtype=torch.float64)
    results = []
    for on in (True, False):
        monkeypatch.setitem(fast_paths.ON, "linear_relu", on)
        model.zero_grad()
        out = model(enc, cond)
        ((out.d_xyz ** 2).sum() + out.d_rot.sum() + 3 * out.d_scale.sum()).backward()
        results.append((torch.cat([out.d_xyz, out.d_rot, out.d_scale], 1).detach(),
                        [p.grad.clone() for p in model.parameters()]))
    (fast, fast_grads), (plain, plain_grads) = results
    assert torch.allclose(fast, plain, rtol=0, atol=1e-12)
    assert fast.abs().max() > 0.1  # the outputs are not all zero (a vacuous comparison)
    for a, b_ in zip(fast_grads, plain_grads):
        assert torch.allclose(a, b_, rtol=1e-10, atol=1e-12)
