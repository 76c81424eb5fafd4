"""The parameter average (--ema_decay): its update against a hand-computed one, the in-place swap, and the
checkpoint round trip (rendering loads the average, resuming the raw weights)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scene.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from scene.model.ema import ParameterEMA, ema_weights
from tests.test_checkpoint import _avatar, _train_steps


def test_average_follows_the_warmed_up_decay():
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    frozen = nn.Parameter(torch.ones(4), requires_grad=False)
    net.register_parameter("frozen", frozen)
    ema = ParameterEMA(net, decay=0.9)
    assert ema.names == ["weight", "bias"]  # frozen parameters are not averaged
    expect = [p.detach().clone() for p in (net.weight, net.bias)]
    for n in range(1, 100):
        with torch.no_grad():
            for p in (net.weight, net.bias):
                p.add_(torch.randn_like(p))
        ema.update()
        d = min(0.9, (1 + n) / (10 + n))  # 0.18, 0.25, ..., capped at 0.9 from n = 80 on
        for e, p in zip(expect, (net.weight, net.bias)):
            e.mul_(d).add_((1 - d) * p.detach())
    assert ema.current_decay() == pytest.approx(0.9) and ema.updates == 99
    for e, s in zip(expect, ema.shadow):
        torch.testing.assert_close(s, e)
    with pytest.raises(ValueError, match="decay"):
        ParameterEMA(net, 1.0)


def test_applied_swaps_in_place_and_restores():
    net = nn.Linear(2, 2)
    ema = ParameterEMA(net, 0.5)
    weight = net.weight  # the same Parameter object throughout: captured CUDA graphs read it in place
    raw = weight.detach().clone()
    with torch.no_grad():
        ema.shadow[0].fill_(7.0)
    with ema.applied():
        assert net.weight is weight and bool((net.weight == 7.0).all())
    assert torch.equal(net.weight.detach(), raw)
    with pytest.raises(RuntimeError, match="inside"), ema.applied():  # restored on errors too
        raise RuntimeError("inside")
    assert torch.equal(net.weight.detach(), raw)


def test_checkpoint_renders_the_average_and_resumes_the_raw_weights(tmp_path):
    torch.manual_seed(0)
    avatar = _avatar()
    opts = avatar.make_optimizers()
    ema = ParameterEMA(avatar, 0.5)
    for k in range(4):
        _train_steps(avatar, opts, 1, seed=20 + k)
        ema.update()
    raw = {n: p.detach().clone() for n, p in avatar.named_parameters()}
    path = save_checkpoint(tmp_path / "ckpt4.pth", avatar, opts, 4, extra={"ema": ema.state_dict()})
    averaged = ema_weights(read_checkpoint(path))
    assert set(averaged) == set(ema.names)
    moved = [n for n in ema.names if not torch.equal(averaged[n], raw[n])]
    assert len(moved) >= len(ema.names) // 2  # the average lags the trained weights

    render_side = _avatar()
    load_checkpoint(path, render_side)  # no optimisers: rendering, so the average
    for n, p in render_side.named_parameters():
        assert torch.equal(p.detach(), averaged[n] if n in averaged else raw[n]), n
    resume_side = _avatar()
    load_checkpoint(path, resume_side, resume_side.make_optimizers())  # resuming: the raw weights
    for n, p in resume_side.named_parameters():
        assert torch.equal(p.detach(), raw[n]), n
    plain = _avatar()
    load_checkpoint(path, plain, average=False)
    assert all(torch.equal(p.detach(), raw[n]) for n, p in plain.named_parameters())
    # a resumed average continues exactly
    again = ParameterEMA(resume_side, 0.5)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 4 and all(torch.equal(a, b) for a, b in zip(again.shadow, ema.shadow))
