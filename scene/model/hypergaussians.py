"""The HyperGaussian module (docs/maths.md section 5): a per-Gaussian joint Gaussian over (attribute, latent)
whose conditional mean given the latent is the attribute offset.

Every one of the N Gaussians holds, per attribute, a mean ``mu = (mu_o, mu_i)`` (n + m numbers) and two
blocks of the Cholesky factor ``L`` of its precision matrix ``Lambda = L L^T``: ``L11`` (n x n, lower
triangular, diagonal stored as a log so it stays positive) and ``L21`` (m x n). Since
``Lambda11 = L11 L11^T`` and ``Lambda12 = L11 L21^T``, the conditional mean is
``mu_o - L11^{-T} L21^T (z - mu_i)``: one small upper triangular solve per Gaussian, never an m x m
inverse. The conditional covariance is ``Lambda11^{-1}``, so its log-determinant is
``-2 * sum(log diag L11)``: the per-Gaussian uncertainty.

Several attributes conditioned on the same latent (position 3, rotation 4, scale 3) can live in one
module as *blocks*: ``HyperGaussian(N, m, (3, 4, 3))`` holds three independent HyperGaussians per
Gaussian, stored padded to the largest block in a few big (N, G, ...) tensors so that all of them are
evaluated by the same handful of kernels (the per-frame cost is launch-bound; one module per attribute
triples the launches). Padding entries are zero (unit diagonal), never reach an output and get exactly
zero gradient. The maths per block is that of a separate module (checked by the tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from utils import fast_paths
from utils.device import fused_kernels

# How the small triangular solve is done, picked by measurement (H100 and its 16-core CPU, N = 14.5k,
# m = 32, blocks (3, 4, 3); forward / forward+backward):
#   CUDA: batched torch.linalg.solve_triangular 0.36 / 2.36 ms, unrolled back substitution 0.52 / 3.40 ms
#         (launch-bound: the unrolled form's many elementwise kernels lose, above all in backward);
#   CPU:  unrolled 4.8 / 31 ms, solve_triangular 15 / 49 ms.
# So: unrolled closed-form back substitution on CPU for blocks up to UNROLL_MAX_OUT, the batched
# solver on CUDA (and for larger blocks).
UNROLL_MAX_OUT = 4
UNROLL_ON_CUDA = False


def _per_gaussian_matvec(M: Tensor, v: Tensor, transpose: bool) -> Tensor:
    """Per Gaussian and block, ``M v`` (M (N, G, n, m), v (N, G, m)) or with ``transpose`` ``M^T v``
    (M (N, G, m, n)) -> (N, G, n). On CUDA as a broadcast product and a sum (two elementwise kernels each
    way, ~0.03 ms forward + backward at N = 10.9k, m = 32): as an einsum it becomes tens of thousands of
    1 x m matrix products, which cuBLAS runs as FP32 GEMV/FFMA kernels (~0.25 ms, H200, session 16);
    on the CPU the einsum is the faster."""
    if not M.is_cuda:
        return torch.einsum("kgmn,kgm->kgn" if transpose else "kgnm,kgm->kgn", M, v)
    if transpose:
        return (M * v.unsqueeze(-1)).sum(dim=-2)
    return (M * v.unsqueeze(-2)).sum(dim=-1)


class HyperGaussian(nn.Module):
    """N Gaussians x G blocks of HyperGaussians with latent (input) size ``in_dim`` = m and output sizes
    ``out_dim`` (an int n for one block, or a sequence of block sizes).

    Parameters (all zero at init, so ``L11 = I``, ``L21 = 0`` and the conditional mean starts at 0), with
    n the largest block size: ``mean`` (N, G, n + m) = (mu_o, mu_i); ``l11_log_diag`` (N, G, n);
    ``l11_lower`` (N, G, n(n-1)/2), the strictly lower entries of L11 in row-major order ((1,0), (2,0),
    (2,1), ...); ``l21`` (N, G, m, n). Outputs are the blocks' conditional means concatenated.
    """

    def __init__(self, n_gaussians: int, in_dim: int, out_dim: int | Sequence[int]) -> None:
        super().__init__()
        blocks = (int(out_dim),) if isinstance(out_dim, int) else tuple(int(b) for b in out_dim)
        if n_gaussians <= 0 or in_dim <= 0 or not blocks or min(blocks) <= 0:
            raise ValueError(f"HyperGaussian needs positive sizes, got n_gaussians={n_gaussians}, "
                             f"in_dim={in_dim}, out_dim={out_dim}")
        self.n_gaussians, self.in_dim, self.blocks = n_gaussians, in_dim, blocks
        self.out_dim = sum(blocks)
        G, n, m = len(blocks), max(blocks), in_dim
        self.block_dim = n
        self.mean = nn.Parameter(torch.zeros(n_gaussians, G, n + m))
        self.l11_log_diag = nn.Parameter(torch.zeros(n_gaussians, G, n))
        self.l11_lower = nn.Parameter(torch.zeros(n_gaussians, G, n * (n - 1) // 2))
        self.l21 = nn.Parameter(torch.zeros(n_gaussians, G, m, n))
        rows, cols = torch.tril_indices(n, n, offset=-1)
        self.register_buffer("_lower_flat", rows * n + cols, persistent=False)
        valid = torch.arange(n)[None, :] < torch.tensor(blocks)[:, None]  # (G, n)
        self.padded = not bool(valid.all())
        self.register_buffer("_valid", valid, persistent=False)
        self.register_buffer("_out_index", torch.nonzero(valid.reshape(-1)).reshape(-1), persistent=False)
        self._frozen: tuple[Tensor, tuple[int, ...]] | None = None  # (A, the parameters' versions): freeze()

    def extra_repr(self) -> str:
        return f"n_gaussians={self.n_gaussians}, in_dim={self.in_dim}, blocks={self.blocks}"

    def l11(self) -> Tensor:
        """The dense lower-triangular factor blocks L11 (N, G, n, n), diagonal exponentiated (padding rows
        of smaller blocks are identity)."""
        N, G, n = self.n_gaussians, len(self.blocks), self.block_dim
        lower = self.l11_lower.new_zeros(N, G, n * n).index_copy(2, self._lower_flat, self.l11_lower)
        return lower.view(N, G, n, n) + torch.diag_embed(self.l11_log_diag.exp())

    def uncertainty(self, per_block: bool = False) -> Tensor:
        """log det of the conditional covariance Lambda11^{-1} = -2 * sum(log diag L11): (N,) summed over
        the blocks, or (N, G) with ``per_block``."""
        log_diag = self.l11_log_diag * self._valid if self.padded else self.l11_log_diag
        per = -2.0 * log_diag.sum(dim=-1)
        return per if per_block else per.sum(dim=-1)

    def _versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in (self.l11_log_diag, self.l11_lower, self.l21))

    @torch.no_grad()
    def freeze(self) -> None:
        """For inference with fixed weights (render.py, the viewer): precompute the per-Gaussian regression
        matrices A = L11^{-T} L21^T (N, G, n, m) once, so that each frame's conditional mean is one
        contraction, mu_o - A (z - mu_i), with no triangular solve -- where fused_ops' kernel does not run:
        it solves in registers as fast as reading A, so there freeze() keeps nothing. Used only without
        gradients and while L11 and L21 are unchanged since (an in-place update is noticed in eager calls,
        which then solve again); a CUDA graph captured while frozen replays A as it was, so freeze only
        where the weights stay fixed. ``unfreeze()`` drops A."""
        if self._fused_ops(self.l21) is not None:  # frames take the fused kernel: A would go unread
            self._frozen = None
            return
        upper = self.l11().transpose(-1, -2)
        A = torch.linalg.solve_triangular(upper, self.l21.transpose(-1, -2), upper=True)  # (N, G, n, m)
        self._frozen = (A, self._versions())

    def _fused_ops(self, like: Tensor):
        """fused_ops where the conditional mean of tensors like ``like`` runs there (fast path
        ``hypergaussians``, float32 on CUDA, blocks up to its MAX_BLOCK), else None."""
        if not (fast_paths.enabled("hypergaussians") and like.is_cuda and like.dtype == torch.float32):
            return None
        ops = fused_kernels()
        return ops if ops is not None and self.block_dim <= ops.MAX_BLOCK else None

    def unfreeze(self) -> None:
        self._frozen = None

    def _apply(self, fn, *args, **kwargs):  # a move or cast makes A stale: solve again after it
        self._frozen = None
        return super()._apply(fn, *args, **kwargs)

    def conditional_mean(self, z: Tensor) -> Tensor:
        """mu_o - L11^{-T} L21^T (z - mu_i) per block, for latents ``z`` (N, m) -> (N, sum(blocks))."""
        n, m = self.block_dim, self.in_dim
        if z.shape != (self.n_gaussians, m):
            raise ValueError(f"HyperGaussian: latent must be ({self.n_gaussians}, {m}), got {tuple(z.shape)}")
        mu_o, mu_i = self.mean[..., :n], self.mean[..., n:]
        ops = self._fused_ops(z)
        if ops is not None:
            # also when frozen: the kernel reads L21 as the frozen path reads A (the same bytes) and solves in
            # registers, one launch where the frozen contraction takes five (session 21)
            out = ops.conditional_mean(self.mean, self.l11_log_diag, self.l11_lower, self.l21, z)
            out = out.reshape(self.n_gaussians, -1)
            return out.index_select(1, self._out_index) if self.padded else out
        frozen = self._frozen
        if frozen is not None and not torch.is_grad_enabled() and frozen[1] == self._versions():
            x = _per_gaussian_matvec(frozen[0], z.unsqueeze(1) - mu_i, transpose=False)
            out = (mu_o - x).reshape(self.n_gaussians, -1)
            return out.index_select(1, self._out_index) if self.padded else out
        # b = L21^T (z - mu_i): (N, G, n)
        b = _per_gaussian_matvec(self.l21, z.unsqueeze(1) - mu_i, transpose=True)
        if n <= UNROLL_MAX_OUT and (UNROLL_ON_CUDA or not b.is_cuda):
            x = self._back_substitute(b)
        else:
            upper = self.l11().transpose(-1, -2)
            x = torch.linalg.solve_triangular(upper, b.unsqueeze(-1), upper=True).squeeze(-1)
        out = (mu_o - x).reshape(self.n_gaussians, -1)
        return out.index_select(1, self._out_index) if self.padded else out

    def _back_substitute(self, b: Tensor) -> Tensor:
        """Solve L11^T x = b row by row from the last (L11^T is upper triangular), all at once.

        Row i of L11^T holds L11[j, i] for j >= i, so x_i = (b_i - sum_{j>i} L11[j, i] x_j) / L11[i, i].
        """
        n = self.block_dim
        inv_diag = torch.exp(-self.l11_log_diag)
        lower = self.l11_lower
        xs: list[Tensor] = [b[..., 0]] * n
        for i in range(n - 1, -1, -1):
            acc = b[..., i]
            for j in range(i + 1, n):
                acc = torch.addcmul(acc, lower[..., j * (j - 1) // 2 + i], xs[j], value=-1.0)
            xs[i] = acc * inv_diag[..., i]
        return torch.stack(xs, dim=-1)
