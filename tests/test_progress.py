"""The stderr progress line: silent when disabled, throttled, cleared on close."""
from __future__ import annotations

import io

from voxnp.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_disabled_writes_nothing():
    out = io.StringIO()
    p = Progress(10.0, enabled=False, stream=out)
    for i in range(11):
        p.update(float(i))
    p.close()
    assert out.getvalue() == ""


def test_enabled_line_and_throttle():
    out, clock = io.StringIO(), FakeClock()
    p = Progress(60.0, enabled=True, stream=out, clock=clock)
    clock.now += 5.0
    p.update(15.0)                       # 15 s of audio in 5 s: 3x real time, 45 s left -> 15 s
    first = out.getvalue()
    assert first.startswith("\r") and "\n" not in first
    assert "15.0/60.0 s" in first and "25%" in first and "3.0x real time" in first and "ETA 0:15" in first
    clock.now += 0.05
    p.update(16.0)                       # too soon: skipped
    assert out.getvalue() == first
    clock.now += 0.2
    p.update(30.0)
    assert out.getvalue().count("\r") == 2 and "50%" in out.getvalue()
    clock.now += 0.01
    p.update(60.0)                       # the end is always shown
    assert "100%" in out.getvalue()
    p.close()
    tail = out.getvalue().rsplit("\r", 2)
    assert tail[-1] == "" and tail[-2].strip() == ""   # blanked, cursor back at column 0


def test_shorter_line_blanks_the_longer_one():
    out, clock = io.StringIO(), FakeClock()
    p = Progress(0, enabled=True, stream=out, clock=clock)  # unknown total: seconds and speed only
    clock.now += 1.0
    p.update(12345.0)
    clock.now += 1.0
    p.update(1.0)
    lines = out.getvalue().split("\r")[1:]
    assert len(lines[1]) >= len(lines[0]) and "%" not in lines[0] and "ETA" not in lines[0]
