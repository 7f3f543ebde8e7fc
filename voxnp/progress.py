"""A one-line progress bar on stderr for transcribing files.

    [#########...........]  12.3/45.6 s  27%  3.1x real time  ETA 0:11

Updated in place with `\\r`, at most `max_rate` times a second; `close()` clears the
line. Whether to show it is the caller's decision (typically
`sys.stderr.isatty() and not silent`); a disabled Progress writes nothing.
"""
from __future__ import annotations

import sys
import time

BAR_WIDTH = 20


def _clock(seconds: float) -> str:
    """H:MM:SS or M:SS."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Audio seconds done out of `total_seconds`, speed as a multiple of real time, ETA."""

    def __init__(self, total_seconds: float, enabled: bool, stream=None, max_rate: float = 5.0,
                 clock=time.monotonic):
        self.total = max(0.0, float(total_seconds or 0.0))
        self.enabled = bool(enabled)
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = 1.0 / max_rate
        self.clock = clock
        self.t0 = clock()
        self._last = None          # clock() of the last line written
        self._width = 0            # length of the last line (to blank it out)

    def line(self, done: float) -> str:
        """The text of the bar for `done` seconds of audio."""
        elapsed = self.clock() - self.t0
        speed = done / elapsed if elapsed > 0 else 0.0
        parts = []
        if self.total > 0:
            frac = min(max(done / self.total, 0.0), 1.0)
            filled = int(frac * BAR_WIDTH)
            parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
            parts.append(f"{done:.1f}/{self.total:.1f} s")
            parts.append(f"{100 * frac:3.0f}%")
        else:
            parts.append(f"{done:.1f} s")
        if speed > 0:
            parts.append(f"{speed:.1f}x real time")
            if self.total > 0:
                parts.append(f"ETA {_clock(max(self.total - done, 0.0) / speed)}")
        return "  ".join(parts)

    def update(self, done_seconds: float) -> None:
        """Show progress; skipped if the last line is younger than 1/max_rate s (except at the end)."""
        if not self.enabled:
            return
        now = self.clock()
        finished = self.total > 0 and done_seconds >= self.total
        if self._last is not None and now - self._last < self.min_interval and not finished:
            return
        self._last = now
        text = self.line(done_seconds)
        pad = " " * max(0, self._width - len(text))
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        """Blank the line and return the cursor to its start."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0
        self._last = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
