"""Map statistics without ground truth (camplug.audit.map_stats) against loops in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camplug.audit import map_stats


def maps(seed: int = 0, shape=(5, 13, 17)) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    values = rng.random(shape) ** 3
    values[1] = 0.0
    values[1, 6, 8] = 1.0  # one hot pixel
    values[2] = 0.25  # uniform
    values[3] = 0.0  # no mass
    return torch.from_numpy(values).float()


def test_border_mass_matches_a_loop():
    m = maps().double().numpy()
    got = map_stats.border_mass(maps(), 0.1).numpy()
    n, h, w = m.shape
    bh, bw = round(0.1 * h + 1e-9), int(np.floor(0.1 * w + 0.5))  # 1.3 -> 1, 1.7 -> 2
    for i in range(n):
        inside = total = 0.0
        for y in range(h):
            for x in range(w):
                total += m[i, y, x]
                if y < bh or y >= h - bh or x < bw or x >= w - bw:
                    inside += m[i, y, x]
        if total == 0:
            assert np.isnan(got[i])
        else:
            assert got[i] == pytest.approx(inside / total, rel=1e-6)
    assert got[1] == 0.0
    assert got[2] == pytest.approx(1 - (h - 2 * bh) * (w - 2 * bw) / (h * w), rel=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
        map_stats.border_mass(maps(), 0.6)


def test_effective_area_matches_the_entropy_written_out():
    m = maps().double().numpy()
    got = map_stats.effective_area(maps()).numpy()
    pixels = 13 * 17
    for i in range(m.shape[0]):
        total = m[i].sum()
        if total == 0:
            assert np.isnan(got[i])
            continue
        p = m[i].ravel() / total
        entropy = -sum(float(q * np.log(q)) for q in p if q > 0)
        assert got[i] == pytest.approx(np.exp(entropy) / pixels, rel=1e-6)
    assert got[1] == pytest.approx(1 / pixels)  # one pixel
    assert got[2] == pytest.approx(1.0)  # uniform
    even = torch.zeros(1, 13, 17)
    even[0, 2:5, 3:7] = 0.5  # 12 pixels of equal mass
    assert float(map_stats.effective_area(even)[0]) == pytest.approx(12 / pixels)


def test_centroid_matches_a_weighted_mean():
    m = maps().double().numpy()
    got = map_stats.centroid(maps()).numpy()
    ys, xs = np.mgrid[0:13, 0:17]
    for i in range(m.shape[0]):
        total = m[i].sum()
        if total == 0:
            assert np.isnan(got[i]).all()
            continue
        assert got[i, 0] == pytest.approx(((xs + 0.5) / 17 * m[i]).sum() / total, rel=1e-9)
        assert got[i, 1] == pytest.approx(((ys + 0.5) / 13 * m[i]).sum() / total, rel=1e-9)
    assert got[2] == pytest.approx([0.5, 0.5])
    assert got[1] == pytest.approx([8.5 / 17, 6.5 / 13])
