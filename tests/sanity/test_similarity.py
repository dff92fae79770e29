"""The sanity check's similarity measures against independent fp64 references: SSIM with a
Gaussian window (explicit window sums per position), Spearman (scipy), min-max normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from camplug.kernels.semantics import EPS
from scipy import stats
from tolerances import assert_close

from camplug.sanity import (
    constant_maps,
    gaussian_window,
    normalize_maps,
    rank_correlation,
    ssim,
)


def reference_ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Wang et al.'s mean SSIM, one window position at a time (L = 1, valid positions)."""
    size = min(window, *a.shape)
    size -= 1 - size % 2
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-offsets**2 / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            pa, pb = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2)
                          / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("shape", [(15, 17), (11, 11), (8, 6), (3, 30)])
def test_ssim_matches_the_window_by_window_reference(shape):
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(3, *shape, generator=generator)
    b = (0.6 * a + 0.4 * torch.rand(3, *shape, generator=generator)).clamp(0, 1)
    expected = torch.tensor([reference_ssim(x.double().numpy(), y.double().numpy())
                             for x, y in zip(a, b, strict=True)], dtype=torch.float64)
    got = ssim(a, b)
    assert got.dtype == torch.float64
    assert_close(got, expected, torch.float64, "ssim")


def test_ssim_of_identical_maps_is_one_and_falls_with_noise():
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(2, 24, 24, generator=generator)
    assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64), torch.float64, "identical")
    noisy = (a + 0.5 * torch.rand(2, 24, 24, generator=generator)).clamp(0, 1)
    assert (ssim(a, noisy) < 0.9).all()


def test_ssim_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        ssim(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9))


def test_gaussian_window_is_normalized_and_symmetric():
    g = gaussian_window(11, 1.5)
    assert abs(float(g.sum()) - 1.0) < 1e-12
    assert torch.equal(g, g.flip(0))
    assert int(g.argmax()) == 5


def test_normalize_maps_min_max_and_constant_maps():
    maps = torch.tensor([[[1.0, 3.0], [5.0, 2.0]], [[4.0, 4.0], [4.0, 4.0]],
                         [[0.0, float("nan")], [1.0, 2.0]]])
    out = normalize_maps(maps)
    expected = (torch.tensor([[1.0, 3.0], [5.0, 2.0]], dtype=torch.float64) - 1) / (4 + EPS)
    assert_close(out[0], expected, torch.float64, "min-max (the kernel's rule)")
    assert torch.equal(out[1:], torch.zeros(2, 2, 2, dtype=torch.float64))
    assert constant_maps(maps).tolist() == [False, True, True]


def test_rank_correlation_matches_scipy_and_is_zero_for_constant_maps():
    generator = torch.Generator().manual_seed(2)
    a = torch.rand(4, 9, 7, generator=generator)
    b = a + 0.3 * torch.rand(4, 9, 7, generator=generator)
    b[1] = 0.25  # constant: no ranking
    b[2] = b[2].round(decimals=1)  # ties
    got = rank_correlation(a, b)
    expected = [stats.spearmanr(x.flatten(), y.flatten()).statistic if k != 1 else 0.0
                for k, (x, y) in enumerate(zip(a.numpy(), b.numpy(), strict=True))]
    assert_close(got, torch.tensor(expected, dtype=torch.float64), torch.float64, "spearman")
