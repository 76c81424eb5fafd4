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


def test_factory_picks_one_launch_adam_unless_switched_off_or_not_float32(monkeypatch):
    monkeypatch.setitem(fast_paths.ON, "adam", True)
    opt = make_adam(_groups("cpu"), eps=1e-15)
    assert type(opt) is OneLaunchAdam and opt.defaults["eps"] == 1e-15
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 5e-2, 0.0] and opt.param_groups[0]["eps"] == 1e-15
    assert type(make_adam([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))])) is torch.optim.Adam
    monkeypatch.setitem(fast_paths.ON, "adam", False)
    assert type(make_adam(_groups("cpu"), eps=1e-15)) is torch.optim.Adam


def test_one_launch_adam_off_cuda_is_torch_adam():
    """Where its kernel cannot run (CPU), OneLaunchAdam's step is torch's, bit for bit."""
    a, b = _groups("cpu"), _groups("cpu")
    opt_a, opt_b = OneLaunchAdam(a, eps=1e-8), torch.optim.Adam(b, eps=1e-8)
    _steps(opt_a, a, 3, seed=1)
    _steps(opt_b, b, 3, seed=1)
    for ga, gb in zip(a, b):
        for p, q in zip(ga["params"], gb["params"]):
            assert torch.equal(p, q)


def _copy_params(dst: list[dict], src: list[dict]) -> None:
    with torch.no_grad():
        for gd, gs in zip(dst, src):
            for p, q in zip(gd["params"], gs["params"]):
                p.copy_(q)


def test_state_dicts_move_between_one_launch_adam_and_torch_adam():
    """A checkpoint's optimiser state written by either optimiser continues in the other, bit for bit on the
    CPU (so runs resume across machines and the --no_fused_kernels switch); the saved groups keep their
    hyperparameters; a state dict of another model is refused."""
    for first, second in ((OneLaunchAdam, torch.optim.Adam), (torch.optim.Adam, OneLaunchAdam)):
        a = _groups("cpu")
        opt_a = first(a, eps=1e-8)
        _steps(opt_a, a, 2, seed=4)
        saved = copy.deepcopy(opt_a.state_dict())
        assert sorted(saved["state"]) == [0, 1, 2, 4]  # the unused parameter (index 3) has no state
        assert [g["params"] for g in saved["param_groups"]] == [[0, 1], [2, 3], [4]]
        b = _groups("cpu", seed=9)  # other values, overwritten below
        _copy_params(b, a)
        for g in b:
            g["lr"] = 123.0  # the loaded groups' hyperparameters win, as in torch
        opt_b = second(b, eps=1e-8)
        opt_b.load_state_dict(saved)
        assert [g["lr"] for g in opt_b.param_groups] == [1e-3, 5e-2, 0.0]
        _steps(opt_a, a, 2, seed=5)
        _steps(opt_b, b, 2, seed=5)
        for ga, gb in zip(a, b):
            for p, q in zip(ga["params"], gb["params"]):
                assert torch.equal(p, q)
    other = OneLaunchAdam([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="parameter groups"):
        other.load_state_dict(saved)


def test_one_launch_adam_refuses_what_it_does_not_do_and_zeroes_gradients():
    p = torch.nn.Parameter(torch.ones(3))
    for bad in ({"weight_decay": 0.1}, {"amsgrad": True}, {"maximize": True}, {"lr": torch.tensor(0.1)}):
        with pytest.raises(ValueError, match="torch.optim.Adam"):
            OneLaunchAdam([p], **bad)
    with pytest.raises(TypeError, match="unknown"):
        OneLaunchAdam([p], momentum=0.9)
    with pytest.raises(ValueError, match="more than one group"):
        OneLaunchAdam([{"params": [p]}, {"params": [p]}])
    opt = OneLaunchAdam([p])
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None


def test_training_imports_no_torch_compiler(tmp_path):
    """The avatar's optimisers are built, stepped, zeroed, saved and loaded without importing torch._dynamo
    (torch's own optimisers import it: seconds of start-up and exit for every train.py run)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, torch\n"
        "from utils.optim import make_adam\n"
        "p = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]\n"
        "opt = make_adam([{'params': p[:1], 'lr': 1e-3}, {'params': p[1:], 'lr': 1e-2}], eps=1e-15)\n"
        "(p[0].sum() + p[1].square().sum()).backward()\n"
        "opt.step(); state = opt.state_dict(); opt.zero_grad(); opt.load_state_dict(state)\n"
        "print(type(opt).__name__, 'torch._dynamo' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["OneLaunchAdam", "False"]


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



@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adam_kernel_float4_units_tails_and_misaligned_views():
    """The kernel moves 4-element units as float4 where a tensor's four arrays are 16-byte aligned and
    element by element otherwise: sizes with every tail (1..3 left over), a tensor past a 4-unit boundary,
    and views starting one float into their storage (misaligned) all get float64 Adam's update."""
    ops = fused_kernels()
    if ops is None:
        pytest.skip("fused_ops._C is not built")
    gen = torch.Generator().manual_seed(5)
    sizes = [1, 2, 3, 4, 5, 7, 8, 4099, 70001]
    beta1, beta2, eps, lrs = 0.9, 0.999, 1e-8, [1e-3 * (k + 1) for k in range(2 * len(sizes))]
    # the kernel takes the betas as float32 (1 - 0.999f is 1.3e-5 off 0.001): the reference uses the same
    b1, b2 = (torch.tensor(b, dtype=torch.float32).item() for b in (beta1, beta2))

    def arrays(n: int, misaligned: bool) -> list[torch.Tensor]:
        # param, grad, exp_avg, exp_avg_sq; a misaligned one is a view one float into a larger buffer
        out = []
        for scale in (1.0, 1.0, 0.1, 0.01):
            base = torch.randn(n + 1, generator=gen).abs() * scale if scale == 0.01 else \
                torch.randn(n + 1, generator=gen) * scale
            out.append(base.cuda()[1:] if misaligned else base[:n].clone().cuda())
        return out

    sets = [arrays(n, mis) for mis in (False, True) for n in sizes]
    assert any(t.data_ptr() % 16 for t in sets[-1])  # the views really are misaligned
    steps = [torch.full((1,), float(3 + k % 4), device="cuda") for k in range(len(sets))]
    want = []
    for (p, g, m, v), step, lr in zip(sets, steps, lrs):
        p64, g64, m64, v64, t = (x.double() for x in (p, g, m, v, step))
        m64 = b1 * m64 + (1 - b1) * g64
        v64 = b2 * v64 + (1 - b2) * g64 * g64
        denom = v64.sqrt() / (1 - b2 ** t).sqrt() + eps
        want.append((p64 - lr / (1 - b1 ** t) * m64 / denom, m64, v64))
    ops.adam_step([s[0] for s in sets], [s[1] for s in sets], [s[2] for s in sets], [s[3] for s in sets],
                  steps, lrs, beta1, beta2, eps)
    for (p, _, m, v), (wp, wm, wv) in zip(sets, want):
        torch.testing.assert_close(m.double(), wm, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(v.double(), wv, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(p.double(), wp, rtol=1e-6, atol=1e-6)


def test_no_fused_kernels_turns_every_fast_path_off(monkeypatch):
    """--no_fused_kernels (RunOptions.fused_kernels False) switches off every fused path; the default
    leaves them as the library sets them (all on)."""
    from utils.fast_paths import set_fast_paths
    from utils.options import parse_train_args
    from utils.precision import configure_arithmetic

    monkeypatch.setattr(fast_paths, "ON", dict(fast_paths.ON))  # restored after the test
    defaults = {"hypergaussians": True, "adam": True, "lpips_distance": True, "conv_relu": True,
                "lpips_pool": True, "lpips_fused": True, "linear_relu": True, "frame_kernel": True}
    assert set_fast_paths() == defaults
    configure_arithmetic(parse_train_args(["--idname", "x"]).run, "cpu")
    assert set_fast_paths() == defaults
    configure_arithmetic(parse_train_args(["--idname", "x", "--no_fused_kernels"]).run, "cpu")
    assert set_fast_paths() == dict.fromkeys(defaults, False)
    assert type(make_adam([torch.nn.Parameter(torch.zeros(3))])) is torch.optim.Adam  # the switch is off
