"""Thread settings shared by test modules that run many tiny models through Captum."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def single_intra_op_thread() -> Iterator[None]:
    """Run with one torch intra-op thread, then restore the previous count.

    The models are tiny: one thread is faster and steadier on shared CI cores. Use it as a
    module-scoped autouse fixture: ``pytest.fixture(autouse=True, scope="module")(...)``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
