"""A one-line progress bar with rate and ETA, drawn on stderr only when it is a terminal."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` or ``M:SS``; ``?`` for a non-finite or negative duration."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def should_draw(stream: TextIO) -> bool:
    """Draw only on a terminal, never under pytest or with ``CAMPLUG_NO_PROGRESS`` set."""
    if "PYTEST_CURRENT_TEST" in os.environ or os.environ.get("CAMPLUG_NO_PROGRESS"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Counts processed items out of ``total`` and redraws at most every ``min_interval`` s.

    ``done`` items already finished before this session (a resumed run) count towards the bar
    but not towards the rate, so the ETA reflects the current speed.
    """

    def __init__(
        self,
        total: int,
        *,
        done: int = 0,
        label: str = "audit",
        unit: str = "img",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.1,
    ) -> None:
        self.total = total
        self.count = done
        self.label = label
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = should_draw(self.stream) if enabled is None else enabled
        self._clock = clock
        self._start = clock()
        self._start_count = done
        self._last_draw = -float("inf")
        self._drawn: int | None = None  # the count shown by the last draw
        self._min_interval = min_interval

    @property
    def rate(self) -> float:
        """Items per second in this session (0 before any time has passed)."""
        elapsed = self._clock() - self._start
        return (self.count - self._start_count) / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the current rate (inf while the rate is unknown)."""
        rate = self.rate
        return (self.total - self.count) / rate if rate > 0 else float("inf")

    def line(self) -> str:
        """The text of the bar, e.g. ``audit  128/512 [######..]  25%  40.0 img/s  ETA 0:09``."""
        fraction = self.count / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        width = len(str(self.total))
        return (
            f"{self.label} {self.count:>{width}}/{self.total} [{bar}] {100 * fraction:3.0f}% "
            f"{self.rate:6.1f} {self.unit}/s  ETA {format_duration(self.eta)}"
        )

    def update(self, n: int = 1) -> None:
        """Record ``n`` more items and redraw if enough time has passed."""
        self.count += n
        now = self._clock()
        if self.enabled and (now - self._last_draw >= self._min_interval
                             or self.count >= self.total):
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        self._drawn = self.count
        self.stream.write("\r" + self.line())
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state if it is not shown yet, and end the line."""
        if not self.enabled:
            return
        if self._drawn != self.count:
            self._draw()
        if self._drawn is not None:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
