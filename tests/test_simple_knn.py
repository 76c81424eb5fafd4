"""simple_knn.distCUDA2: exact mean squared distance to the 3 nearest other points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from simple_knn import distCUDA2, mean_knn_sq_dist


def brute_force(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Per point: all squared distances to the others (self removed by index), k smallest, mean."""
    n = points.shape[0]
    out = np.empty(n)
    for i in range(n):
        d2 = ((points - points[i]) ** 2).sum(axis=1)
        d2 = np.delete(d2, i)
        out[i] = np.sort(d2)[: min(k, n - 1)].mean()
    return out


def test_matches_brute_force_float64():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(300, 3))
    got = distCUDA2(torch.from_numpy(pts))
    assert got.shape == (300,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), brute_force(pts), rtol=1e-12, atol=0)


def test_float32_and_chunking():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1, 1, size=(257, 3)).astype(np.float32)
    full = distCUDA2(torch.from_numpy(pts))
    chunked = mean_knn_sq_dist(torch.from_numpy(pts), chunk_elements=257 * 7)  # 7 rows per chunk
    assert torch.equal(full, chunked)
    np.testing.assert_allclose(full.numpy(), brute_force(pts.astype(np.float64)), rtol=2e-5)


def test_hand_values_on_a_line():
    # points at x = 0, 1, 3, 6, 10: neighbours of 0 -> 1, 3, 6: (1 + 9 + 36) / 3
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [6, 0, 0], [10, 0, 0]], dtype=torch.float64)
    expected = [(1 + 9 + 36) / 3, (1 + 4 + 25) / 3, (4 + 9 + 9) / 3, (9 + 16 + 25) / 3, (16 + 49 + 81) / 3]
    np.testing.assert_allclose(distCUDA2(pts).numpy(), expected, rtol=1e-15)


def test_duplicates_give_zero_and_self_is_excluded():
    pts = torch.tensor([[0.0, 0, 0]] * 4 + [[5.0, 0, 0]], dtype=torch.float64)
    got = distCUDA2(pts)
    assert torch.equal(got[:4], torch.zeros(4, dtype=torch.float64))  # three duplicates each
    assert got[4].item() == pytest.approx(25.0)
    two = distCUDA2(torch.tensor([[0.0, 0, 0], [0.0, 0, 0], [0.0, 2, 0]]))
    # a point with one duplicate: (0 + 4) / 2 (only two others exist)
    assert two.tolist() == pytest.approx([2.0, 2.0, 4.0])


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(P, 3\)"):
        distCUDA2(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        distCUDA2(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        distCUDA2(torch.tensor([[0.0, 0, 0], [float("nan"), 0, 0]]))
    assert distCUDA2(torch.zeros(0, 3)).shape == (0,)


@pytest.mark.cuda
def test_on_cuda_matches_cpu():
    pts = torch.randn(1000, 3)
    assert torch.allclose(distCUDA2(pts.cuda()).cpu(), distCUDA2(pts), rtol=1e-5)
