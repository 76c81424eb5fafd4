"""Huber and the photometric loss of docs/maths.md section 9 against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from utils.losses import huber, opacity_regulariser, photometric_loss


def test_huber_hand_values():
    x = torch.tensor([0.05, -0.2, 0.1, 0.0, 0.3], dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.float64)
    # 0.5*0.05^2, 0.1*(0.2-0.05), 0.1*(0.1-0.05) (|d| = a is the linear branch), 0, 0.1*(0.3-0.05)
    expected = (0.00125 + 0.015 + 0.005 + 0.0 + 0.025) / 5
    assert huber(x, y, 0.1).item() == pytest.approx(expected, rel=1e-12)


def test_huber_other_delta_and_symmetry():
    x = torch.tensor([[1.0, 2.0], [3.0, -4.0]], dtype=torch.float64)
    y = torch.tensor([[0.5, 2.0], [1.0, 0.0]], dtype=torch.float64)
    # d = 0.5, 0, 2, -4 with a = 1: 0.125, 0, 1*(2-0.5)=1.5, 1*(4-0.5)=3.5
    assert huber(x, y, 1.0).item() == pytest.approx((0.125 + 0 + 1.5 + 3.5) / 4, rel=1e-12)
    assert huber(y, x, 1.0).item() == pytest.approx(huber(x, y, 1.0).item(), rel=1e-12)


def test_huber_gradient_is_clipped_residual():
    x = torch.tensor([0.05, -0.2, 0.3, -0.01], dtype=torch.float64, requires_grad=True)
    huber(x, torch.zeros(4, dtype=torch.float64), 0.1).backward()
    # d/dx of the mean: d / n inside, a * sign(d) / n outside
    assert torch.allclose(x.grad, torch.tensor([0.05, -0.1, 0.1, -0.01], dtype=torch.float64) / 4)


def test_huber_rejects_bad_delta():
    with pytest.raises(ValueError, match="delta"):
        huber(torch.zeros(2), torch.zeros(2), 0.0)


def test_photometric_loss_weights_the_mouth_by_40():
    render = torch.zeros(3, 2, 2, dtype=torch.float64)
    gt = torch.full((3, 2, 2), 0.05, dtype=torch.float64)
    gt[:, 0, 0] = 0.5  # a large error inside the mouth pixel
    mouth = torch.zeros(1, 2, 2, dtype=torch.float64)
    mouth[0, 0, 0] = 1.0
    terms = photometric_loss(render, gt, mouth)
    # image: 3 pixels of 0.5*0.05^2 and 1 of 0.1*(0.5-0.05), per channel, mean over 12 values
    image = (9 * 0.00125 + 3 * 0.045) / 12
    mouth_term = (3 * 0.045) / 12  # masked: only the mouth pixel differs
    assert terms.image.item() == pytest.approx(image, rel=1e-12)
    assert terms.mouth.item() == pytest.approx(mouth_term, rel=1e-12)
    assert terms.total.item() == pytest.approx(image + 40 * mouth_term, rel=1e-12)
    # a (H, W) mouth mask gives the same
    assert photometric_loss(render, gt, mouth[0]).total.item() == pytest.approx(terms.total.item(), rel=1e-12)


def test_photometric_loss_shape_mismatch():
    with pytest.raises(ValueError, match="differ"):
        photometric_loss(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5), torch.zeros(1, 4, 4))


def test_opacity_regulariser():
    op = torch.tensor([[1.0], [0.5], [0.0], [0.9]], dtype=torch.float64)
    assert opacity_regulariser(op).item() == pytest.approx((0 + 0.25 + 1 + 0.01) / 4, rel=1e-12)


def test_offset_regulariser_value_and_pull():
    """Issue 11: mean squared distance of the Gaussians from their mesh points; its gradient pulls back."""
    from utils.losses import offset_regulariser

    base = torch.zeros(3, 3)
    means = torch.tensor([[0.01, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.02, 0.02]], requires_grad=True)
    value = offset_regulariser(means, base)
    assert torch.isclose(value, torch.tensor((1e-4 + 0.0 + 8e-4) / 3))
    value.backward()
    assert torch.allclose(means.grad, 2 * means.detach() / 3)
