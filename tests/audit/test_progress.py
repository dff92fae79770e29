"""The progress bar (tqdm's): rate and ETA of this session only, when it draws."""

from __future__ import annotations

import io

import pytest
import tqdm.std

from camplug.audit.progress import Progress, should_draw


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    """A fake clock for tqdm (it reads ``time`` from its own module), 100 s at the start."""
    now = [100.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    return now


def frames(stream: io.StringIO) -> list[str]:
    return [frame for frame in stream.getvalue().split("\r") if frame]


def test_rate_and_eta_count_only_this_session(clock):
    stream = Terminal()
    bar = Progress(100, done=40, stream=stream, enabled=True, min_interval=0)
    assert frames(stream) == ["audit:  40%|####      | 40/100 [00:00<?, ?img/s]"]
    clock[0] += 2.0
    bar.update(10)  # 10 items in 2 s; the 40 resumed ones do not count
    last = frames(stream)[-1]
    assert last == "audit:  50%|#####     | 50/100 [00:02<00:10,  5.00img/s]"
    assert bar.format_dict["rate"] == pytest.approx(5.0)
    bar.close()
    assert stream.getvalue().endswith(last + "\n")  # the bar stays, its line ended


def test_redraws_are_throttled_and_close_shows_where_a_run_stopped(clock):
    stream = Terminal()
    bar = Progress(10, stream=stream, enabled=True, min_interval=1.0)
    drawn = len(frames(stream))  # the empty bar
    clock[0] += 0.5
    bar.update(1)
    bar.update(2)  # both within min_interval of the first draw: not drawn
    assert len(frames(stream)) == drawn
    bar.close()  # an interrupted run shows where it stopped
    assert frames(stream)[-1].startswith("audit:  30%|###       | 3/10 ")
    assert stream.getvalue().count("\n") == 1


def test_quiet_when_not_a_terminal_or_under_pytest(monkeypatch):
    stream = io.StringIO()
    with Progress(3, stream=stream) as bar:
        bar.update(3)
    assert stream.getvalue() == ""
    quiet_terminal = Terminal()
    with Progress(3, stream=quiet_terminal) as bar:  # pytest sets PYTEST_CURRENT_TEST
        bar.update(3)
    assert quiet_terminal.getvalue() == ""
    assert not should_draw(Terminal())
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert should_draw(Terminal())
    monkeypatch.setenv("CAMPLUG_NO_PROGRESS", "1")
    assert not should_draw(Terminal())
    assert not should_draw(io.StringIO())
