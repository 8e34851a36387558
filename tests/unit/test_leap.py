"""Leap seconds: the indicator clears at the leap, timed on the monotonic clock (pure logic)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from pyresponder import wire
from pyresponder.leap import REARM_AFTER, LeapWatch, next_leap_ns

NS = 1_000_000_000
HEADER_INSERT = wire.server_header(wire.LEAP_ADD_SECOND, 2, -20, 0.0, 0.0, b"GPS\0", 0)
HEADER_DELETE = wire.server_header(wire.LEAP_DELETE_SECOND, 2, -20, 0.0, 0.0, b"GPS\0", 0)
HEADER_NONE = wire.server_header(wire.LEAP_NONE, 2, -20, 0.0, 0.0, b"GPS\0", 0)


def unix_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
            second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()) * NS


LEAP = unix_ns(2017, 1, 1)  # the last leap second so far was inserted before this


def test_next_leap_is_the_next_month_boundary() -> None:
    assert next_leap_ns(unix_ns(2016, 12, 31, 12)) == LEAP
    assert next_leap_ns(LEAP - 1) == LEAP
    assert next_leap_ns(unix_ns(2015, 6, 30, 23, 59, 59)) == unix_ns(2015, 7, 1)
    assert next_leap_ns(unix_ns(2024, 2, 29)) == unix_ns(2024, 3, 1)


def test_inserted_leap_clears_at_the_leap_although_the_wall_clock_steps_back() -> None:
    watch = LeapWatch()
    # Monotonic time 500 s is 10 s before the leap; refreshes every 0.1 s read the backend's
    # LI=1 (it answers once a second, so it still says 1 for a while after the leap).
    start_ns, mono = LEAP - 10 * NS, 500.0
    assert watch.apply(HEADER_INSERT, start_ns, mono) == HEADER_INSERT
    assert watch.clears_at == 510.0
    assert watch.apply(HEADER_INSERT, LEAP - NS // 10, 509.9)[0] >> 6 == 1
    # At the leap the kernel repeats 23:59:59: the wall clock reads before midnight again.
    served = watch.apply(HEADER_INSERT, LEAP - NS + 1, 510.0)
    assert served[0] >> 6 == wire.LEAP_NONE
    assert served[1:] == HEADER_INSERT[1:]
    assert watch.clears_at == math.inf  # nothing more to do: no refresh per wake-up
    assert watch.apply(HEADER_INSERT, LEAP - NS // 2, 510.5)[0] >> 6 == wire.LEAP_NONE
    assert watch.apply(HEADER_NONE, LEAP, 511.0) == HEADER_NONE  # the backend caught up


def test_deleted_leap_clears_at_the_leap() -> None:
    watch = LeapWatch()
    assert watch.apply(HEADER_DELETE, LEAP - 3 * NS, 100.0) == HEADER_DELETE
    assert watch.apply(HEADER_DELETE, LEAP - NS // 1000, 102.999)[0] >> 6 == 2
    assert watch.apply(HEADER_DELETE, LEAP + NS, 103.0)[0] >> 6 == 0


def test_no_announcement_means_nothing_to_watch() -> None:
    watch = LeapWatch()
    assert watch.apply(HEADER_NONE, LEAP - NS, 1.0) == HEADER_NONE
    assert watch.clears_at == math.inf


def test_an_announcement_that_outlives_its_leap_means_the_next_one() -> None:
    watch = LeapWatch()
    watch.apply(HEADER_INSERT, LEAP - NS, 100.0)
    assert watch.apply(HEADER_INSERT, LEAP, 101.0)[0] >> 6 == 0
    later = 101.0 + REARM_AFTER
    assert watch.apply(HEADER_INSERT, LEAP + int(REARM_AFTER) * NS, later)[0] >> 6 == 1
    assert watch.clears_at == later + (unix_ns(2017, 2, 1) - LEAP) / NS - REARM_AFTER
