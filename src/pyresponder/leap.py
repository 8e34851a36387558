"""When an announced leap second happens: pure rules, with the times passed in.

A leap indicator (LI 1: insert, LI 2: delete) announces a leap at the end of the current month
(RFC 5905; chronyd announces it on the last day only). Once the leap has happened the indicator
must read 0, but the backend is polled once a second and the workers refresh ten times a second,
so copying the backend's LI would keep it up to 1.1 s too long. The worker therefore clears it
itself at the leap, timed on the monotonic clock: at an inserted leap the kernel steps the wall
clock back one second, which would make a wall-clock deadline pass twice.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

from . import wire

_NS: Final = wire.NS_PER_S
# If the backend still announces a leap this long after it happened, it means the next one.
REARM_AFTER: Final = 10.0


def next_leap_ns(wall_ns: int) -> int:
    """The first month boundary (00:00:00 UTC on the 1st) after ``wall_ns``: when an announced
    leap takes effect."""
    day = datetime.fromtimestamp(wall_ns // _NS, UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * _NS


def without_leap(header: bytes) -> bytes:
    """The 24-byte reply header with its leap indicator cleared."""
    return bytes([header[0] & 0x3F]) + header[1:]


class LeapWatch:
    """Clears an announced leap indicator at the leap (see the module's docstring)."""

    def __init__(self) -> None:
        self.clears_at = math.inf  # monotonic time at which the header must change; inf: never
        self._leap_at = math.inf  # monotonic time of the announced leap

    def apply(self, header: bytes, wall_ns: int, monotonic: float) -> bytes:
        """The header to serve at ``monotonic`` (seconds) = ``wall_ns`` (Unix ns)."""
        if header[0] >> 6 not in (wire.LEAP_ADD_SECOND, wire.LEAP_DELETE_SECOND):
            self._leap_at = self.clears_at = math.inf
            return header
        if self._leap_at == math.inf or monotonic >= self._leap_at + REARM_AFTER:
            self._leap_at = monotonic + (next_leap_ns(wall_ns) - wall_ns) / _NS
        if monotonic >= self._leap_at:
            self.clears_at = math.inf
            return without_leap(header)
        self.clears_at = self._leap_at
        return header
