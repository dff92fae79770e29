"""The progress bar: rate, ETA, when it draws."""

from __future__ import annotations

import io

from camplug.audit.progress import Progress, format_duration, should_draw


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(59.6) == "1:00"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(float("inf")) == "?"
    assert format_duration(float("nan")) == "?"


def test_rate_and_eta_count_only_this_session():
    clock = FakeClock()
    bar = Progress(100, done=40, clock=clock, enabled=False)
    assert bar.rate == 0.0 and bar.eta == float("inf")
    clock.now += 2.0
    bar.update(10)  # 10 items in 2 s; the 40 resumed ones do not count
    assert bar.rate == 5.0
    assert bar.eta == 50 / 5.0
    assert "50/100" in bar.line() and "5.0 img/s" in bar.line() and "ETA 0:10" in bar.line()
    assert " 50%" in bar.line()


def test_draws_on_a_terminal_and_throttles():
    clock = FakeClock()
    stream = Terminal()
    bar = Progress(10, clock=clock, stream=stream, enabled=True, min_interval=1.0)
    clock.now += 0.5
    bar.update(1)  # first draw
    bar.update(1)  # too soon: no draw
    clock.now += 1.0
    bar.update(1)
    assert stream.getvalue().count("\r") == 2
    bar.update(7)  # reaching the total always draws
    bar.close()  # the final state is already shown: only the newline is added
    lines = stream.getvalue().split("\r")
    assert len(lines) == 4 and lines[-1].startswith("audit 10/10")
    assert lines[-1].endswith("\n") and stream.getvalue().count("\n") == 1
    unfinished = Terminal()
    bar = Progress(10, clock=clock, stream=unfinished, enabled=True, min_interval=100.0)
    bar.update(1)
    bar.update(2)  # throttled
    bar.close()  # an interrupted run shows where it stopped
    assert unfinished.getvalue().split("\r")[-1].startswith("audit  3/10")


def test_quiet_when_not_a_terminal_or_under_pytest(monkeypatch):
    stream = io.StringIO()
    bar = Progress(3, stream=stream)
    bar.update(3)
    bar.close()
    assert stream.getvalue() == ""
    # pytest sets PYTEST_CURRENT_TEST: even a terminal stays quiet in tests
    assert not should_draw(Terminal())
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert should_draw(Terminal())
    monkeypatch.setenv("CAMPLUG_NO_PROGRESS", "1")
    assert not should_draw(Terminal())
