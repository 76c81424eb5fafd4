"""The HyperGaussian module (SPEC section 5): a per-Gaussian joint Gaussian over (attribute, latent)
whose conditional mean given the latent is the attribute offset.

Every one of the N Gaussians holds a mean ``mu = (mu_o, mu_i)`` (n + m numbers) and two blocks of the
Cholesky factor ``L`` of its precision matrix ``Lambda = L L^T``: ``L11`` (n x n, lower triangular,
diagonal stored as a log so it stays positive) and ``L21`` (m x n). Since ``Lambda11 = L11 L11^T`` and
``Lambda12 = L11 L21^T``, the conditional mean is ``mu_o - L11^{-T} L21^T (z - mu_i)``: one small upper
triangular solve per Gaussian, never an m x m inverse. The conditional covariance is ``Lambda11^{-1}``,
so its log-determinant is ``-2 * sum(log diag L11)``: the per-Gaussian uncertainty.

Parameters are kept as four big tensors with N first (few optimiser tensors, fully vectorised maths).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Up to this output size the triangular solve is unrolled into closed-form back substitution over the
# rows (elementwise ops over all Gaussians at once); measured faster than batched
# ``torch.linalg.solve_triangular`` for n <= 4 on CPU and GPU (see bench notes in the module report).
UNROLL_MAX_OUT = 4


class HyperGaussian(nn.Module):
    """N independent HyperGaussians with latent (input) size ``in_dim`` = m and output size ``out_dim`` = n.

    Parameters (all zero at init, so ``L11 = I``, ``L21 = 0`` and the conditional mean starts at 0):
    ``mean`` (N, n + m) = (mu_o, mu_i); ``l11_log_diag`` (N, n); ``l11_lower`` (N, n(n-1)/2), the strictly
    lower entries of L11 in row-major order ((1,0), (2,0), (2,1), ...); ``l21`` (N, m, n).
    """

    def __init__(self, n_gaussians: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if n_gaussians <= 0 or in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"HyperGaussian needs positive sizes, got n_gaussians={n_gaussians}, "
                             f"in_dim={in_dim}, out_dim={out_dim}")
        self.n_gaussians, self.in_dim, self.out_dim = n_gaussians, in_dim, out_dim
        n, m = out_dim, in_dim
        self.mean = nn.Parameter(torch.zeros(n_gaussians, n + m))
        self.l11_log_diag = nn.Parameter(torch.zeros(n_gaussians, n))
        self.l11_lower = nn.Parameter(torch.zeros(n_gaussians, n * (n - 1) // 2))
        self.l21 = nn.Parameter(torch.zeros(n_gaussians, m, n))
        rows, cols = torch.tril_indices(n, n, offset=-1)
        self.register_buffer("_lower_flat", rows * n + cols, persistent=False)

    def extra_repr(self) -> str:
        return f"n_gaussians={self.n_gaussians}, in_dim={self.in_dim}, out_dim={self.out_dim}"

    def l11(self) -> Tensor:
        """The dense lower-triangular factor block L11 (N, n, n), diagonal exponentiated."""
        n = self.out_dim
        lower = self.l11_lower.new_zeros(self.n_gaussians, n * n)
        lower = lower.index_copy(1, self._lower_flat, self.l11_lower)
        return lower.view(-1, n, n) + torch.diag_embed(self.l11_log_diag.exp())

    def uncertainty(self) -> Tensor:
        """log det of the conditional covariance Lambda11^{-1}: -2 * sum(log diag L11), shape (N,)."""
        return -2.0 * self.l11_log_diag.sum(dim=-1)

    def conditional_mean(self, z: Tensor) -> Tensor:
        """mu_o - L11^{-T} L21^T (z - mu_i) for latents ``z`` (N, m) -> (N, n)."""
        n, m = self.out_dim, self.in_dim
        if z.shape != (self.n_gaussians, m):
            raise ValueError(f"HyperGaussian: latent must be ({self.n_gaussians}, {m}), got {tuple(z.shape)}")
        mu_o, mu_i = self.mean[:, :n], self.mean[:, n:]
        # b = L21^T (z - mu_i): (N, n)
        b = torch.einsum("kmn,km->kn", self.l21, z - mu_i)
        if n <= UNROLL_MAX_OUT:
            x = self._back_substitute(b)
        else:
            upper = self.l11().transpose(-1, -2)
            x = torch.linalg.solve_triangular(upper, b.unsqueeze(-1), upper=True).squeeze(-1)
        return mu_o - x

    def _back_substitute(self, b: Tensor) -> Tensor:
        """Solve L11^T x = b row by row from the last (L11^T is upper triangular), all Gaussians at once.

        Row i of L11^T holds L11[j, i] for j >= i, so x_i = (b_i - sum_{j>i} L11[j, i] x_j) / L11[i, i].
        """
        n = self.out_dim
        inv_diag = torch.exp(-self.l11_log_diag)
        lower = self.l11_lower
        xs: list[Tensor] = [b[:, 0]] * n
        for i in range(n - 1, -1, -1):
            acc = b[:, i]
            for j in range(i + 1, n):
                acc = acc - lower[:, j * (j - 1) // 2 + i] * xs[j]
            xs[i] = acc * inv_diag[:, i]
        return torch.stack(xs, dim=-1)
