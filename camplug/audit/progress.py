"""The audit's progress bar: tqdm's, with rate and ETA, drawn on stderr only when it is a
terminal (never under pytest or with ``CAMPLUG_NO_PROGRESS`` set)."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from tqdm import tqdm


def should_draw(stream: TextIO) -> bool:
    """Draw only on a terminal, never under pytest or with ``CAMPLUG_NO_PROGRESS`` set."""
    if "PYTEST_CURRENT_TEST" in os.environ or os.environ.get("CAMPLUG_NO_PROGRESS"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress(tqdm):
    """A tqdm bar over ``total`` items, ``done`` of them finished before this session (a
    resumed run): they count towards the bar but not towards the rate, so the ETA reflects the
    current speed. ``enabled``: None draws only where ``should_draw(stream)``; updates are
    redrawn at most every ``min_interval`` seconds. Use ``update(n)`` and ``close()`` (or a
    ``with`` block)."""

    def __init__(
        self,
        total: int,
        *,
        done: int = 0,
        label: str = "audit",
        unit: str = "img",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        min_interval: float = 0.1,
    ) -> None:
        stream = sys.stderr if stream is None else stream
        super().__init__(
            total=total, initial=done, desc=label, unit=unit, file=stream,
            disable=not (should_draw(stream) if enabled is None else enabled),
            mininterval=min_interval, dynamic_ncols=True,
        )
