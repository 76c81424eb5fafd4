"""HyperGaussian conditional mean / uncertainty against the dense Gaussian-conditioning formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scene.model.hypergaussians as hgmod
from scene.model.hypergaussians import HyperGaussian
from utils import fast_paths


def _randomize(hg: HyperGaussian, seed: int) -> None:
    """Random parameters; padding entries of smaller blocks stay zero (as the module keeps them)."""
    g = torch.Generator().manual_seed(seed)
    n = hg.block_dim
    with torch.no_grad():
        for p in hg.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for gi, size in enumerate(hg.blocks):
            hg.mean[:, gi, size:n] = 0
            hg.l11_log_diag[:, gi, size:] = 0
            hg.l21[:, gi, :, size:] = 0
            for r in range(size, n):
                hg.l11_lower[:, gi, r * (r - 1) // 2:r * (r + 1) // 2] = 0


def _dense_reference(hg: HyperGaussian, z: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per Gaussian and block: build the full Cholesky factor L = [[L11, 0], [L21, L22]] (random L22),
    Lambda = L L^T, Sigma = Lambda^-1, then condition the joint Gaussian the textbook way:
    mu_a + Sigma_ab Sigma_bb^-1 (z - mu_b) and log det(Sigma_aa - Sigma_ab Sigma_bb^-1 Sigma_ba)."""
    rng = np.random.default_rng(seed)
    nmax, m = hg.block_dim, hg.in_dim
    mean = hg.mean.detach().numpy()
    log_diag = hg.l11_log_diag.detach().numpy()
    lower = hg.l11_lower.detach().numpy()
    l21 = hg.l21.detach().numpy()
    means, logdets = [], []
    for k in range(hg.n_gaussians):
        row_mean, row_logdet = [], 0.0
        for g, n in enumerate(hg.blocks):
            L11 = np.diag(np.exp(log_diag[k, g, :n]))
            idx = 0
            for r in range(nmax):  # row-major strictly-lower order, written independently of the module
                for c in range(r):
                    if r < n:
                        L11[r, c] = lower[k, g, idx]
                    idx += 1
            L22 = np.tril(rng.normal(size=(m, m)), -1) + np.diag(np.exp(rng.normal(size=m) * 0.3))
            L = np.zeros((n + m, n + m))
            L[:n, :n] = L11
            L[n:, :n] = l21[k, g, :, :n]
            L[n:, n:] = L22
            Sigma = np.linalg.inv(L @ L.T)
            Saa, Sab, Sbb = Sigma[:n, :n], Sigma[:n, n:], Sigma[n:, n:]
            mu_a, mu_b = mean[k, g, :n], mean[k, g, nmax:]
            row_mean.append(mu_a + Sab @ np.linalg.solve(Sbb, z[k] - mu_b))
            row_logdet += np.linalg.slogdet(Saa - Sab @ np.linalg.solve(Sbb, Sab.T))[1]
        means.append(np.concatenate(row_mean))
        logdets.append(row_logdet)
    return np.stack(means), np.array(logdets)


@pytest.mark.parametrize("out_dim", [1, 2, 3, 4, 5, (3, 4, 3), (3, 1), (2, 6)])
def test_conditional_mean_and_uncertainty_match_dense_formulas(out_dim):
    N, m = 6, 5
    hg = HyperGaussian(N, m, out_dim).double()
    seed = 7 * len(str(out_dim)) + hg.out_dim  # deterministic per case
    _randomize(hg, seed=seed)
    z = torch.randn(N, m, dtype=torch.float64, generator=torch.Generator().manual_seed(10 + seed))
    ref_mean, ref_logdet = _dense_reference(hg, z.numpy(), seed=seed)
    got = hg.conditional_mean(z).detach().numpy()
    assert got.shape == (N, hg.out_dim)
    np.testing.assert_allclose(got, ref_mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(hg.uncertainty().detach().numpy(), ref_logdet, rtol=0, atol=1e-6)


def test_blocks_equal_separate_modules_and_padding_stays_inert():
    N, m = 8, 6
    group = HyperGaussian(N, m, (3, 4, 3)).double()
    _randomize(group, seed=2)
    singles = [HyperGaussian(N, m, n).double() for n in (3, 4, 3)]
    with torch.no_grad():
        for g, (single, n) in enumerate(zip(singles, (3, 4, 3))):
            single.mean[:, 0, :n] = group.mean[:, g, :n]
            single.mean[:, 0, n:] = group.mean[:, g, 4:]
            single.l11_log_diag[:, 0] = group.l11_log_diag[:, g, :n]
            single.l11_lower[:, 0] = group.l11_lower[:, g, :n * (n - 1) // 2]
            single.l21[:, 0] = group.l21[:, g, :, :n]
    z = torch.randn(N, m, dtype=torch.float64)
    expected = torch.cat([s.conditional_mean(z) for s in singles], dim=-1)
    torch.testing.assert_close(group.conditional_mean(z), expected, rtol=1e-12, atol=1e-12)
    per_block = torch.stack([s.uncertainty() for s in singles], dim=-1)
    torch.testing.assert_close(group.uncertainty(per_block=True), per_block)
    torch.testing.assert_close(group.uncertainty(), per_block.sum(-1))
    # padding (rows 3 of the 3-blocks) gets exactly zero gradient, even from the uncertainty
    (group.conditional_mean(z).sin().sum() + group.uncertainty().sum()).backward()
    for g in (0, 2):
        assert not group.l11_log_diag.grad[:, g, 3].any()
        assert not group.l21.grad[:, g, :, 3].any()
        assert not group.mean.grad[:, g, 3].any()
        assert not group.l11_lower.grad[:, g, 3:6].any()
    assert group.l11_log_diag.grad[:, 1, 3].abs().sum() > 0


def test_zero_initialisation_gives_zero_mean_and_unit_factor():
    hg = HyperGaussian(9, 7, (3, 4, 3))
    z = torch.randn(9, 7) * 3
    assert torch.equal(hg.conditional_mean(z), torch.zeros(9, 10))
    assert torch.equal(hg.uncertainty(), torch.zeros(9))
    assert torch.equal(hg.l11(), torch.eye(4).expand(9, 3, 4, 4))
    assert all(not torch.count_nonzero(p) for p in hg.parameters())
    assert hg.mean.shape == (9, 3, 4 + 7) and hg.l21.shape == (9, 3, 7, 4)


@pytest.mark.parametrize("out_dim", [3, 4, (3, 4, 3)])
def test_unrolled_solve_equals_triangular_solver_values_and_gradients(out_dim, monkeypatch):
    hg = HyperGaussian(11, 8, out_dim).double()
    _randomize(hg, seed=3)
    z = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, hg.out_dim, dtype=torch.float64)

    def run():
        hg.zero_grad()
        z.grad = None
        (hg.conditional_mean(z) * w).sum().backward()
        grads = [p.grad.clone() for p in hg.parameters()]
        return [hg.conditional_mean(z).detach(), *grads, z.grad.clone()]

    unrolled = run()
    monkeypatch.setattr(hgmod, "UNROLL_MAX_OUT", 0)
    lapack = run()
    for a, b in zip(unrolled, lapack):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_l11_is_lower_triangular_with_positive_diagonal():
    hg = HyperGaussian(5, 3, 4).double()
    _randomize(hg, seed=1)
    L = hg.l11()[:, 0]
    assert torch.equal(torch.triu(L, 1), torch.zeros_like(L))
    torch.testing.assert_close(torch.diagonal(L, dim1=-2, dim2=-1), hg.l11_log_diag[:, 0].exp())
    assert L[0, 3, 1].item() == hg.l11_lower[0, 0, 4].item()  # (3,1) is the 5th strictly-lower entry


def test_bad_sizes_are_refused():
    hg = HyperGaussian(4, 3, 2)
    with pytest.raises(ValueError, match=r"latent must be \(4, 3\)"):
        hg.conditional_mean(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="positive sizes"):
        HyperGaussian(4, 3, (3, 0))


@pytest.mark.parametrize("out_dim", [3, (3, 4, 3), (3, 1)])
def test_frozen_inference_matches_the_dense_formula_and_notices_changes(out_dim, monkeypatch):
    """freeze() (render.py, the viewer): the precomputed A = L11^-T L21^T gives the dense formula's
    conditional mean without gradients and without solving; with gradients, after an in-place update of
    L11/L21, after a cast and after unfreeze() the module solves again (and stays exact)."""
    N, m = 6, 5
    hg = HyperGaussian(N, m, out_dim).double()
    seed = 3 + hg.out_dim
    _randomize(hg, seed=seed)
    z = torch.randn(N, m, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ref_mean, _ = _dense_reference(hg, z.numpy(), seed=seed)
    hg.freeze()
    solves = []
    original = torch.linalg.solve_triangular
    monkeypatch.setattr(torch.linalg, "solve_triangular",
                        lambda *a, **k: solves.append(1) or original(*a, **k))
    monkeypatch.setattr(hgmod, "UNROLL_MAX_OUT", 0)  # the solver path on the CPU too, so solves are counted
    with torch.no_grad():
        np.testing.assert_allclose(hg.conditional_mean(z).numpy(), ref_mean, rtol=0, atol=1e-9)
    assert not solves  # the frozen contraction
    hg.conditional_mean(z).sum().backward()  # with gradients: solved, and the parameters get gradients
    assert len(solves) == 1 and hg.l21.grad.abs().sum() > 0 and hg.l11_lower.grad.abs().sum() > 0
    with torch.no_grad():
        hg.l21.mul_(2.0)  # an in-place update (a checkpoint load, a training step): A is stale
        ref_new, _ = _dense_reference(hg, z.numpy(), seed=seed)
        np.testing.assert_allclose(hg.conditional_mean(z).numpy(), ref_new, rtol=0, atol=1e-9)
    assert len(solves) == 2
    hg.freeze()
    hg.float()  # a cast drops A
    assert hg._frozen is None
    hg.freeze()
    hg.unfreeze()
    assert hg._frozen is None


def test_frozen_avatar_renders_what_the_unfrozen_one_does():
    from scene.model.avatar import Avatar
    from tests.test_avatar import SMALL, make_tiny_assets, tiny_condition
    from utils.options import ModelOptions

    avatar = Avatar(make_tiny_assets(0), torch.zeros(300), ModelOptions(**SMALL, ours=True))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in avatar.deformation.head.parameters():
            p.normal_(0.0, 0.3)
        cond = tiny_condition(3, torch.float32)
        before, _ = avatar.deform(cond)
        avatar.freeze_for_inference()
        after, _ = avatar.deform(cond)
    for name in ("means", "scales", "rotations", "opacities"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name), rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_conditional_mean_and_gradients_match_the_cpu(monkeypatch):
    """On CUDA the per-Gaussian L21^T (z - mu_i) and the frozen A (z - mu_i) are broadcast products and
    sums (not an einsum): the conditional mean and every gradient agree with the CPU's einsum path (the
    fused kernels off: they are compared with this path below)."""
    monkeypatch.setitem(fast_paths.ON, "hypergaussians", False)
    torch.backends.cuda.matmul.allow_tf32 = False  # compare the float32 arithmetic itself
    cpu = HyperGaussian(64, 32, (3, 4, 3)).double()
    _randomize(cpu, 5)
    gpu = HyperGaussian(64, 32, (3, 4, 3)).cuda()
    gpu.load_state_dict({k: v.float() for k, v in cpu.state_dict().items()})
    z = torch.randn(64, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    w = torch.randn(64, 10, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    outs = {}
    for name, module, zz, ww in (("cpu", cpu, z, w), ("gpu", gpu, z.float().cuda(), w.float().cuda())):
        zz = zz.clone().requires_grad_(True)
        out = module.conditional_mean(zz)
        (out * ww).sum().backward()
        outs[name] = [out.detach().cpu().double(), zz.grad.cpu().double()] + \
            [p.grad.cpu().double() for p in module.parameters()]
    for k, (a, b) in enumerate(zip(outs["gpu"], outs["cpu"])):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item()), k
    cpu.freeze()
    gpu.freeze()
    with torch.no_grad():
        frozen = gpu.conditional_mean(z.float().cuda()).cpu().double()
    assert torch.allclose(frozen, outs["cpu"][0], rtol=1e-4, atol=1e-4 * outs["cpu"][0].abs().max().item())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("blocks, m", [((3, 4, 3), 32), ((5,), 7), ((1, 2), 3)])
def test_cuda_fused_kernels_match_the_torch_path(monkeypatch, blocks, m):
    """fused_ops' fused forward and backward (the hypergaussians fast path) give the unfused CUDA path's
    conditional mean and gradients, and exactly zero gradient on the padding entries of smaller blocks; a
    frozen module (inference) takes the fused forward too. 97 Gaussians: system counts that leave the last
    warp's four 8-lane groups partly empty."""
    ops = pytest.importorskip("fused_ops")
    if not ops.available():
        pytest.skip("fused_ops._C is not built")
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = HyperGaussian(97, m, blocks)
    _randomize(ref, 11)
    z = torch.randn(97, m, generator=torch.Generator().manual_seed(12)).cuda()
    w = torch.randn(97, sum(blocks), generator=torch.Generator().manual_seed(13)).cuda()
    results = {}
    for fused in (False, True):
        monkeypatch.setitem(fast_paths.ON, "hypergaussians", fused)
        hg = HyperGaussian(97, m, blocks).cuda()
        hg.load_state_dict(ref.state_dict())
        zz = z.clone().requires_grad_(True)
        out = hg.conditional_mean(zz)
        (out * w).sum().backward()
        results[fused] = (out.detach(), zz.grad, {k: p.grad for k, p in hg.named_parameters()})
    (out_t, gz_t, g_t), (out_f, gz_f, g_f) = results[False], results[True]
    scale = out_t.abs().max()
    assert (out_f - out_t).abs().max() <= 1e-5 * scale
    assert (gz_f - gz_t).abs().max() <= 1e-4 * gz_t.abs().max()
    for k in g_t:
        assert (g_f[k] - g_t[k]).abs().max() <= 1e-4 * g_t[k].abs().max().clamp_min(1e-12), k
    hg.freeze()
    with torch.no_grad():
        assert torch.equal(hg.conditional_mean(z), out_f)  # the fused kernel, not the frozen contraction
    n = max(blocks)
    for gi, size in enumerate(blocks):  # padding entries get exactly zero gradient, as in the torch path
        assert not g_f["l21"][:, gi, :, size:].any() and not g_f["l11_log_diag"][:, gi, size:].any()
        assert not g_f["mean"][:, gi, size:n].any()
        for r in range(size, n):
            assert not g_f["l11_lower"][:, gi, r * (r - 1) // 2:r * (r + 1) // 2].any()
