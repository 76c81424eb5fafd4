"""HyperGaussian conditional mean / uncertainty against the dense Gaussian-conditioning formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scene.hypergaussians as hgmod
from scene.hypergaussians import HyperGaussian


def _randomize(hg: HyperGaussian, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hg.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


def _dense_reference(hg: HyperGaussian, z: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Build the full Cholesky factor L = [[L11, 0], [L21, L22]] (random L22), Lambda = L L^T,
    Sigma = Lambda^-1, then condition the joint Gaussian the textbook way."""
    rng = np.random.default_rng(seed)
    n, m = hg.out_dim, hg.in_dim
    mean = hg.mean.detach().numpy()
    log_diag = hg.l11_log_diag.detach().numpy()
    lower = hg.l11_lower.detach().numpy()
    l21 = hg.l21.detach().numpy()
    means, logdets = [], []
    for k in range(hg.n_gaussians):
        L11 = np.diag(np.exp(log_diag[k]))
        idx = 0
        for r in range(n):  # row-major strictly-lower order, written independently of the module
            for c in range(r):
                L11[r, c] = lower[k, idx]
                idx += 1
        L22 = np.tril(rng.normal(size=(m, m)), -1) + np.diag(np.exp(rng.normal(size=m) * 0.3))
        L = np.zeros((n + m, n + m))
        L[:n, :n] = L11
        L[n:, :n] = l21[k]
        L[n:, n:] = L22
        Sigma = np.linalg.inv(L @ L.T)
        Saa, Sab, Sbb = Sigma[:n, :n], Sigma[:n, n:], Sigma[n:, n:]
        mu_a, mu_b = mean[k, :n], mean[k, n:]
        means.append(mu_a + Sab @ np.linalg.solve(Sbb, z[k] - mu_b))
        logdets.append(np.linalg.slogdet(Saa - Sab @ np.linalg.solve(Sbb, Sab.T))[1])
    return np.stack(means), np.array(logdets)


@pytest.mark.parametrize("out_dim", [1, 2, 3, 4, 5])
def test_conditional_mean_and_uncertainty_match_dense_formulas(out_dim):
    N, m = 6, 5
    hg = HyperGaussian(N, m, out_dim).double()
    _randomize(hg, seed=out_dim)
    z = torch.randn(N, m, dtype=torch.float64, generator=torch.Generator().manual_seed(10 + out_dim))
    ref_mean, ref_logdet = _dense_reference(hg, z.numpy(), seed=out_dim)
    got = hg.conditional_mean(z).detach().numpy()
    np.testing.assert_allclose(got, ref_mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(hg.uncertainty().detach().numpy(), ref_logdet, rtol=0, atol=1e-6)


def test_zero_initialisation_gives_zero_mean_and_unit_factor():
    hg = HyperGaussian(9, 7, 4)
    z = torch.randn(9, 7) * 3
    assert torch.equal(hg.conditional_mean(z), torch.zeros(9, 4))
    assert torch.equal(hg.uncertainty(), torch.zeros(9))
    assert torch.equal(hg.l11(), torch.eye(4).expand(9, 4, 4))
    assert all(not torch.count_nonzero(p) for p in hg.parameters())


@pytest.mark.parametrize("out_dim", [3, 4])
def test_unrolled_solve_equals_triangular_solver_values_and_gradients(out_dim, monkeypatch):
    hg = HyperGaussian(11, 8, out_dim).double()
    _randomize(hg, seed=3)
    z = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, out_dim, dtype=torch.float64)

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
    L = hg.l11()
    assert torch.equal(torch.triu(L, 1), torch.zeros_like(L))
    torch.testing.assert_close(torch.diagonal(L, dim1=-2, dim2=-1), hg.l11_log_diag.exp())
    assert L[0, 3, 1].item() == hg.l11_lower[0, 4].item()  # (3,1) is the 5th strictly-lower entry


def test_bad_latent_shape_is_refused():
    hg = HyperGaussian(4, 3, 2)
    with pytest.raises(ValueError, match=r"latent must be \(4, 3\)"):
        hg.conditional_mean(torch.zeros(4, 5))
