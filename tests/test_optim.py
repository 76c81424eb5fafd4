"""utils.optim: the avatar's Adam factory and OneLaunchAdam (one fused_ops launch a step on CUDA) against
torch's Adam: the same updates, interchangeable state dicts, capturable in a CUDA graph."""

from __future__ import annotations

import copy

import pytest
import torch

from utils import fast_paths
from utils.device import fused_kernels
from utils.optim import OneLaunchAdam, make_adam


def _groups(device: str, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(700, 3), (700, 15, 3), (5,), (300, 4)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes]
    unused = torch.nn.Parameter(torch.zeros(4, device=device))  # never gets a gradient
    return [{"params": params[:2], "lr": 1e-3}, {"params": [params[2], unused], "lr": 5e-2},
            {"params": params[3:], "lr": 0.0}]


def _steps(opt, groups, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for g in groups:
            for p in g["params"]:
                if p.abs().sum() > 0:  # the unused parameter keeps grad None
                    p.grad = torch.randn(p.shape, generator=gen).to(p.device)
        opt.step()


def test_factory_keeps_torch_adam_where_one_launch_cannot_run(monkeypatch):
    monkeypatch.setitem(fast_paths.ON, "adam", True)
    opt = make_adam(_groups("cpu"), eps=1e-15)
    assert type(opt) is torch.optim.Adam and opt.defaults["eps"] == 1e-15


def test_one_launch_adam_off_cuda_is_torch_adam():
    """Where its kernel cannot run (CPU), OneLaunchAdam's step is torch's, bit for bit."""
    a, b = _groups("cpu"), _groups("cpu")
    opt_a, opt_b = OneLaunchAdam(a, eps=1e-8), torch.optim.Adam(b, eps=1e-8)
    _steps(opt_a, a, 3, seed=1)
    _steps(opt_b, b, 3, seed=1)
    for ga, gb in zip(a, b):
        for p, q in zip(ga["params"], gb["params"]):
            assert torch.equal(p, q)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_launch_adam_matches_torch_fused_adam_and_is_capturable():
    if fused_kernels() is None:
        pytest.skip("fused_ops._C is not built")
    a, b = _groups("cuda"), _groups("cuda")
    opt_a, opt_b = OneLaunchAdam(a, eps=1e-15), torch.optim.Adam(b, eps=1e-15, fused=True)
    _steps(opt_a, a, 5, seed=2)
    _steps(opt_b, b, 5, seed=2)
    # float32 updates in another order (fast-math division and sqrt): the parameters (of scale 1) agree to a
    # few ulps; torch's own Adam and a float32 transcription of its formula differ by 1.5e-7 on these groups
    for ga, gb in zip(a, b):
        for p, q in zip(ga["params"], gb["params"]):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not opt_a.state[a[1]["params"][1]]  # no gradient, no state, as torch
    # state dicts are interchangeable: torch's Adam continues from OneLaunchAdam's state
    c = _groups("cuda")
    opt_c = torch.optim.Adam(c, eps=1e-15, fused=True)
    with torch.no_grad():
        for gc, ga in zip(c, a):
            for p, q in zip(gc["params"], ga["params"]):
                p.copy_(q)
    opt_c.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # torch's load keeps the tensors it is given
    _steps(opt_a, a, 1, seed=3)
    _steps(opt_c, c, 1, seed=3)
    for ga, gc in zip(a, c):
        for p, q in zip(ga["params"], gc["params"]):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # captured: a replay makes the same update as an eager step from the same state
    params = [p for g in a for p in g["params"] if p.grad is not None]
    before = {p: [p.detach().clone()] + [opt_a.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq", "step")]
              for p in params}

    def restore() -> None:
        with torch.no_grad():
            for p, (value, m, v, step) in before.items():
                p.copy_(value)
                for k, saved in zip(("exp_avg", "exp_avg_sq", "step"), (m, v, step)):
                    opt_a.state[p][k].copy_(saved)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt_a.step()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    eager = [p.detach().clone() for p in params]
    restore()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt_a.step()
    restore()
    graph.replay()
    torch.cuda.synchronize()
    for p, want in zip(params, eager):
        assert torch.equal(p, want)
    assert not torch.equal(eager[0], before[params[0]][0])  # the step moved the parameters


def test_no_fused_kernels_turns_every_fast_path_off(monkeypatch):
    """--no_fused_kernels (RunOptions.fused_kernels False) switches off all four fused paths; the default
    leaves them as the library sets them (on)."""
    from utils.fast_paths import set_fast_paths
    from utils.options import parse_train_args
    from utils.precision import configure_arithmetic

    monkeypatch.setattr(fast_paths, "ON", dict(fast_paths.ON))  # restored after the test
    assert set_fast_paths() == {"hypergaussians": True, "adam": True, "lpips_distance": True,
                                "conv_relu": True}
    configure_arithmetic(parse_train_args(["--idname", "x"]).run, "cpu")
    assert all(set_fast_paths().values())
    configure_arithmetic(parse_train_args(["--idname", "x", "--no_fused_kernels"]).run, "cpu")
    assert set_fast_paths() == {"hypergaussians": False, "adam": False, "lpips_distance": False,
                                "conv_relu": False}
    assert type(make_adam([torch.nn.Parameter(torch.zeros(3))])) is torch.optim.Adam
