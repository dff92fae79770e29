"""Per-dtype tolerances (one table) and a comparison that explains its failures."""

from __future__ import annotations

import torch

# (atol, rtol) for maps in [0, 1] or raw CAM values, compared with an fp64 reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
    torch.uint8: (1.0, 0.0),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = ""):
    """Compare with the tolerance for ``dtype``; on failure, list the worst elements."""
    atol, rtol = TOLERANCES[dtype]
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        idx = bad.nonzero()[:8].tolist()
        rows = [f"  at {tuple(i)}: got {a[tuple(i)].item():.8g}, want {e[tuple(i)].item():.8g}"
                for i in idx]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ beyond "
            f"atol={atol}, rtol={rtol} (max abs err {(a - e).abs().nan_to_num().max():.3g}):\n"
            + "\n".join(rows)
        )
